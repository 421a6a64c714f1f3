"""A valid manifest to derive test cases from."""

from __future__ import annotations

import copy
from typing import Any

_VALID: dict[str, Any] = {
    "apiVersion": "datamix.io/v1alpha1",
    "kind": "DataMixtureExperiment",
    "metadata": {"name": "mix-a"},
    "spec": {
        "datasets": {
            "baseDir": "/data",
            "volume": {"persistentVolumeClaim": {"claimName": "corpus", "readOnly": True}},
            "mixture": [
                {
                    "name": "web",
                    "path": "web/part_0_text_document",
                    "weight": 1.1068,
                    "validationPath": "web/valid_text_document",
                },
                {"name": "code", "path": "code/part_0_text_document", "weight": 0.3577},
                {"name": "math", "path": "math/part_0_text_document", "weight": 2},
            ],
        },
        "model": {"preset": "openseek-small", "overrides": {"numLayers": 4}},
        "training": {
            "seqLength": 4096,
            "globalBatchSize": 1024,
            "microBatchSize": 1,
            "trainSamples": 24576000,
            "learningRate": {"peak": 3.0e-3, "min": 3.0e-4, "warmupSamples": 2048000, "decay": "cosine"},
            "seed": 42,
            "checkpointInterval": 600,
            "evalInterval": 100,
            "tokenizer": {"type": "QwenTokenizerFS", "vocabSize": 151851},
        },
        "resources": {
            "nodes": 2,
            "gpusPerNode": 8,
            "gpu": {"products": ["NVIDIA-H100-80GB-HBM3"], "minMemory": "80G"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
        },
        "env": [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}}],
        "output": {"volume": {"nfs": {"server": "nfs.example", "path": "/exports/runs"}}, "path": "/output"},
    },
}


def valid_manifest() -> dict[str, Any]:
    return copy.deepcopy(_VALID)
