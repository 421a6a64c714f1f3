"""The fake GPU node pool: Nodes managed by kwok, labelled as GPU Feature Discovery labels real ones."""

from __future__ import annotations

from typing import Any

KWOK_ANNOTATION = "kwok.x-k8s.io/node"
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
H100 = "NVIDIA-H100-80GB-HBM3"
A100 = "NVIDIA-A100-SXM4-40GB"
# The default fake node pool: (name prefix, count, product, memory MiB, gpus per node).
DEFAULT_POOL = [
    ("gpu-h100", 2, H100, 81559, 8),
    ("gpu-a100", 2, A100, 40960, 8),
    ("cpu", 1, None, 0, 0),
]


def fake_node_manifest(name: str, product: str | None = None, memory_mib: int = 0, gpus: int = 0,
                       cpu: str = "96", memory: str = "1Ti", pods: str = "110",
                       labels: dict[str, str] | None = None) -> dict[str, Any]:
    """A Node managed by kwok; GPU nodes carry GPU Feature Discovery labels and the gpu taint."""
    node_labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "type": "kwok",
        "datamix.io/fake-node": "true",
    }
    capacity = {"cpu": cpu, "memory": memory, "pods": pods}
    spec: dict[str, Any] = {}
    if product and gpus > 0:
        node_labels.update({
            "nvidia.com/gpu.present": "true",
            "nvidia.com/gpu.product": product,
            "nvidia.com/gpu.memory": str(memory_mib),
            "nvidia.com/gpu.count": str(gpus),
        })
        capacity["nvidia.com/gpu"] = str(gpus)
        spec["taints"] = [dict(GPU_TAINT)]
    node_labels.update(labels or {})
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": node_labels,
            "annotations": {KWOK_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
        },
        "spec": spec,
        "status": {"capacity": dict(capacity), "allocatable": dict(capacity)},
    }


def default_pool() -> list[dict[str, Any]]:
    nodes = []
    for prefix, count, product, mem, gpus in DEFAULT_POOL:
        for i in range(count):
            if product:
                nodes.append(fake_node_manifest(f"{prefix}-{i}", product, mem, gpus))
            else:
                nodes.append(fake_node_manifest(f"{prefix}-{i}", cpu="32", memory="256Gi"))
    return nodes
