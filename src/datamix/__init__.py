"""DataMix: data mixture experiments for LLM pre-training on Kubernetes."""

GROUP = "datamix.io"
VERSION = "v1alpha1"
KIND = "DataMixtureExperiment"
PLURAL = "datamixtureexperiments"
API_VERSION = f"{GROUP}/{VERSION}"
