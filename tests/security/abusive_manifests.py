"""Manifests the DataMix policy must refuse, in the shape of tests/api/invalid_manifests.py.

Each entry: (id, manifest, field path, message substring). Both enforcers must name the field and
say the substring: the API server (the chart's ValidatingAdmissionPolicy, for a user who may only
create, get and list experiments) and the operator (Stalled/PolicyViolation, where no admission
policy is installed). The policy's parameters for these cases are TEST_POLICY; a user of the
table adds rows with `abusive(...)` and may pass other parameters to `datamix.policy.violations`.

SECRET_THE_USER_CANNOT_READ and SECRET_THE_USER_MAY_READ name Secrets the e2e test creates; its
Role grants `get` on the second only.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from datamix.policy import PolicyParams

Manifest = dict[str, Any]

SECRET_THE_USER_CANNOT_READ = "db-admin"
SECRET_THE_USER_MAY_READ = "hf-token"
TRAINER_REPOSITORY = "datamix-trainer"

# The chart's defaults, with hostPath allowed under one directory, a registry prefix and one
# reserved prefix of the platform's own, so that every kind of rule has an allowed and a refused side.
TEST_POLICY = PolicyParams(
    volumeSources=("persistentVolumeClaim", "hostPath"),
    hostPathPrefixes=("/mnt/datasets",),
    imagePrefixes=(TRAINER_REPOSITORY, "registry.example.com/team-a/"),
    tolerationKeys=("nvidia.com/gpu", "dedicated"),
    priorityClassNames=("training-low",),
    reservedPrefixes=("vault.hashicorp.com/",),
    secretReferences="Refused",
)

# Accepted by the policy: a PVC for output, data from an allowed host directory, the trainer
# image, an allowed toleration and PriorityClass, labels and annotations of the team's own domain.
_BENIGN: Manifest = {
    "apiVersion": "datamix.io/v1alpha1",
    "kind": "DataMixtureExperiment",
    "metadata": {"name": "benign"},
    "spec": {
        "datasets": {
            "baseDir": "/data",
            "volume": {"hostPath": {"path": "/mnt/datasets/corpus"}},
            "mixture": [
                {"name": "web", "path": "web/part_0_text_document", "weight": 0.7},
                {"name": "code", "path": "code/part_0_text_document", "weight": 0.3},
            ],
        },
        "model": {"preset": "tiny"},
        "training": {
            "seqLength": 64,
            "globalBatchSize": 4,
            "microBatchSize": 2,
            "trainSteps": 5,
            "learningRate": {"peak": 1.0e-3},
            "tokenizer": {"type": "byte", "vocabSize": 257},
        },
        "resources": {
            "nodes": 1,
            "gpusPerNode": 0,
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
            "priorityClassName": "training-low",
        },
        "image": f"{TRAINER_REPOSITORY}:0.1.0",
        "env": [{"name": "LOG_LEVEL", "value": "info"}],
        "output": {"volume": {"persistentVolumeClaim": {"claimName": "runs"}}},
        "podTemplate": {
            "metadata": {"labels": {"team": "nlp"}, "annotations": {"example.com/owner": "nlp-team"}}
        },
    },
}


def benign_manifest() -> Manifest:
    return copy.deepcopy(_BENIGN)


def abusive(mutate: Callable[[Manifest], None]) -> Manifest:
    manifest = benign_manifest()
    mutate(manifest)
    return manifest


def _spec(path: str, value: Any) -> Callable[[Manifest], None]:
    def mutate(m: Manifest) -> None:
        node: Any = m["spec"]
        *head, last = path.split(".")
        for part in head:
            node = node.setdefault(part, {})
        node[last] = value

    return mutate


def _labels(key: str) -> Callable[[Manifest], None]:
    return lambda m: m["spec"]["podTemplate"]["metadata"]["labels"].update({key: "x"})


def _annotations(key: str) -> Callable[[Manifest], None]:
    return lambda m: m["spec"]["podTemplate"]["metadata"]["annotations"].update({key: "true"})


def _toleration(toleration: dict[str, Any]) -> Callable[[Manifest], None]:
    return lambda m: m["spec"]["resources"]["tolerations"].insert(0, toleration)


ABUSIVE_MANIFESTS: list[tuple[str, Manifest, str, str]] = [
    (
        "host-root",
        abusive(_spec("datasets.volume", {"hostPath": {"path": "/"}})),
        "spec.datasets.volume.hostPath.path",
        "outside the host directories",
    ),
    (
        "host-runtime-socket-as-output",
        abusive(_spec("output.volume", {"hostPath": {"path": "/run/containerd"}})),
        "spec.output.volume.hostPath.path",
        "outside the host directories",
    ),
    (
        "host-prefix-lookalike",
        abusive(_spec("datasets.volume", {"hostPath": {"path": "/mnt/datasets-private"}})),
        "spec.datasets.volume.hostPath.path",
        "outside the host directories",
    ),
    (
        "nfs-data",
        abusive(_spec("datasets.volume", {"nfs": {"server": "nfs.attacker.example", "path": "/"}})),
        "spec.datasets.volume",
        "nfs volumes are not allowed",
    ),
    (
        "nfs-output",
        abusive(_spec("output.volume", {"nfs": {"server": "10.0.0.5", "path": "/exports"}})),
        "spec.output.volume",
        "nfs volumes are not allowed",
    ),
    (
        "image-elsewhere",
        abusive(_spec("image", "docker.io/attacker/miner:latest")),
        "spec.image",
        "is not an image the DataMix policy allows",
    ),
    (
        "image-lookalike-repository",
        abusive(_spec("image", f"{TRAINER_REPOSITORY}-evil:0.1.0")),
        "spec.image",
        "is not an image the DataMix policy allows",
    ),
    (
        "image-registry-port-trick",
        abusive(_spec("image", f"{TRAINER_REPOSITORY}:5000/attacker/miner")),
        "spec.image",
        "is not an image the DataMix policy allows",
    ),
    (
        "keyless-toleration",
        abusive(_toleration({"operator": "Exists"})),
        "spec.resources.tolerations[0].key",
        "tolerates every taint",
    ),
    (
        "control-plane-toleration",
        abusive(_toleration({"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"})),
        "spec.resources.tolerations[0].key",
        "is not a taint the DataMix policy lets pods tolerate",
    ),
    (
        "system-priority",
        abusive(_spec("resources.priorityClassName", "system-node-critical")),
        "spec.resources.priorityClassName",
        "is not a PriorityClass the DataMix policy allows",
    ),
    (
        "label-kubernetes-io",
        abusive(_labels("app.kubernetes.io/name")),
        "spec.podTemplate.metadata.labels[app.kubernetes.io/name]",
        "the prefix is reserved",
    ),
    (
        "label-datamix-run",
        abusive(_labels("datamix.io/run")),
        "spec.podTemplate.metadata.labels[datamix.io/run]",
        "the prefix is reserved",
    ),
    (
        "label-kubeflow-job-role",
        abusive(_labels("training.kubeflow.org/job-role")),
        "spec.podTemplate.metadata.labels[training.kubeflow.org/job-role]",
        "the prefix is reserved",
    ),
    (
        "annotation-kueue",
        abusive(_annotations("kueue.x-k8s.io/queue-name")),
        "spec.podTemplate.metadata.annotations[kueue.x-k8s.io/queue-name]",
        "the prefix is reserved",
    ),
    (
        "annotation-istio-sidecar",
        abusive(_annotations("sidecar.istio.io/inject")),
        "spec.podTemplate.metadata.annotations[sidecar.istio.io/inject]",
        "the prefix is reserved",
    ),
    (
        "annotation-configured-prefix",
        abusive(_annotations("vault.hashicorp.com/agent-inject")),
        "spec.podTemplate.metadata.annotations[vault.hashicorp.com/agent-inject]",
        "the prefix is reserved",
    ),
    (
        "env-secret-the-user-cannot-read",
        abusive(
            lambda m: m["spec"]["env"].append(
                {
                    "name": "DB_PASSWORD",
                    "valueFrom": {"secretKeyRef": {"name": SECRET_THE_USER_CANNOT_READ, "key": "password"}},
                }
            )
        ),
        "spec.env[1].valueFrom.secretKeyRef.name",
        "Secret",
    ),
    (
        "pull-secret-the-user-cannot-read",
        abusive(_spec("imagePullSecrets", [{"name": SECRET_THE_USER_CANNOT_READ}])),
        "spec.imagePullSecrets[0].name",
        "Secret",
    ),
]
