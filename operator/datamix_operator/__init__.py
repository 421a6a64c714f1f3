"""The DataMix operator: reconciles DataMixtureExperiments into run-spec ConfigMaps and PyTorchJobs."""
