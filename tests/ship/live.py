"""Live experiments on the local control plane, for the shipping e2e tests: small manifests for
the fake GPU pool, fake pod outcomes (kwok stage annotations), and an admin view of the results.
(The CRD is applied with testsupport.experiments.apply_crd, as in the operator's e2e suite.)"""

from __future__ import annotations

import copy
from typing import Any

from datamix import GROUP, PLURAL, VERSION
from datamix.experiment import run_id
from datamix.runspec import RunResult
from testsupport import clusterlib


def experiment(name: str, weights: tuple[int, int] = (2, 1)) -> dict[str, Any]:
    """A small experiment on the fake H100 pool (1 node x 8 GPUs), without volumes (the fake pods
    mount nothing)."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "DataMixtureExperiment", "metadata": {"name": name},
        "spec": {
            "datasets": {
                "baseDir": "/data",
                "mixture": [
                    {"name": "web", "path": "web/part_0_text_document", "weight": weights[0],
                     "validationPath": "web/valid_text_document"},
                    {"name": "code", "path": "code/part_0_text_document", "weight": weights[1]},
                ],
            },
            "model": {"preset": "tiny"},
            "training": {"seqLength": 128, "globalBatchSize": 16, "microBatchSize": 1, "trainSamples": 1600,
                         "learningRate": {"peak": 0.001}, "tokenizer": {"type": "byte", "vocabSize": 256}},
            "resources": {"nodes": 1, "gpusPerNode": 8, "gpu": {"products": [clusterlib.H100]}},
        },
    }


def with_fake_pods(manifest: dict[str, Any], duration: str) -> dict[str, Any]:
    """Pod annotations read by the cluster's kwok stages: how long the pods run and the master's
    termination message (the run result the real trainer would write)."""
    out = copy.deepcopy(manifest)
    result = RunResult(run=run_id(manifest), train_loss=2.5, validation_loss=(2.6, None), tokens=(1000, 500),
                       steps=100, consumed_samples=1600, wall_seconds=12.3).encode()
    out["spec"]["podTemplate"] = {"metadata": {"annotations": {
        clusterlib.FAKE_DURATION: duration, clusterlib.FAKE_MESSAGE: result}}}
    return out


class Admin:
    """The test's own (admin) view of the cluster."""

    def __init__(self, api: Any) -> None:
        from kubernetes import client

        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)

    def experiment(self, ns: str, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)

    def status(self, ns: str, name: str) -> dict[str, Any]:
        return self.experiment(ns, name).get("status") or {}

    def apply(self, ns: str, body: dict[str, Any]) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            current = self.experiment(ns, body["metadata"]["name"])
        except ApiException as e:
            if e.status != 404:
                raise
            self.custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body)
            return
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body["metadata"]["name"],
                                                   {"spec": body["spec"]})
        assert current

    def jobs(self, ns: str) -> list[str]:
        items = self.custom.list_namespaced_custom_object("kubeflow.org", "v1", ns, "pytorchjobs")["items"]
        return sorted(j["metadata"]["name"] for j in items if not j["metadata"].get("deletionTimestamp"))

    def job(self, ns: str, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object("kubeflow.org", "v1", ns, "pytorchjobs", name)

    def configmaps(self, ns: str) -> list[str]:
        items = self.core.list_namespaced_config_map(ns, label_selector="app.kubernetes.io/managed-by=datamix-operator")
        return sorted(c.metadata.name for c in items.items if not c.metadata.deletion_timestamp)
