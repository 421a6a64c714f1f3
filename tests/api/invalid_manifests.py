"""Invalid manifests with the field path and message both `datamix validate` and the real API
server must report. Each entry: (id, manifest, field path, message substring)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.api.manifests import valid_manifest

Manifest = dict[str, Any]


def _case(mutate: Callable[[Manifest], None]) -> Manifest:
    manifest = valid_manifest()
    mutate(manifest)
    return manifest


def _spec(m: Manifest) -> dict[str, Any]:
    spec: dict[str, Any] = m["spec"]
    return spec


def _set(path: str, value: Any) -> Callable[[Manifest], None]:
    def mutate(m: Manifest) -> None:
        node: Any = m
        *head, last = path.split(".")
        for part in head:
            node = node[int(part)] if part.isdigit() else node[part]
        if value is _DELETE:
            del node[last]
        else:
            node[int(last) if last.isdigit() else last] = value

    return mutate


_DELETE = object()

INVALID_MANIFESTS: list[tuple[str, Manifest, str, str]] = [
    (
        "zero-weight",
        _case(_set("spec.datasets.mixture.0.weight", 0)),
        "spec.datasets.mixture[0].weight",
        "should be greater than 0",
    ),
    (
        "negative-weight",
        _case(_set("spec.datasets.mixture.1.weight", -0.5)),
        "spec.datasets.mixture[1].weight",
        "should be greater than 0",
    ),
    (
        "string-weight",
        _case(_set("spec.datasets.mixture.1.weight", "heavy")),
        "spec.datasets.mixture[1].weight",
        "must be of type number",
    ),
    ("empty-mixture", _case(_set("spec.datasets.mixture", [])), "spec.datasets.mixture", "at least 1 items"),
    (
        "duplicate-name",
        _case(
            lambda m: _spec(m)["datasets"]["mixture"].append(
                {"name": "web", "path": "web/part_1_text_document", "weight": 1}
            )
        ),
        "spec.datasets.mixture[3]",
        "Duplicate value",
    ),
    (
        "duplicate-path",
        _case(
            lambda m: _spec(m)["datasets"]["mixture"].append(
                {"name": "web-again", "path": "web/part_0_text_document", "weight": 1}
            )
        ),
        "spec.datasets.mixture",
        "each dataset path may appear only once",
    ),
    (
        "bad-dataset-name",
        _case(_set("spec.datasets.mixture.0.name", "Web_Corpus")),
        "spec.datasets.mixture[0].name",
        "should match",
    ),
    (
        "absolute-path",
        _case(_set("spec.datasets.mixture.0.path", "/abs/part_0_text_document")),
        "spec.datasets.mixture[0].path",
        "should match",
    ),
    (
        "path-escapes-base",
        _case(_set("spec.datasets.mixture.0.path", "../other/part_0_text_document")),
        "spec.datasets.mixture[0].path",
        "must stay inside baseDir",
    ),
    (
        "two-volume-sources",
        _case(_set("spec.datasets.volume.hostPath", {"path": "/mnt/data"})),
        "spec.datasets.volume",
        "exactly one of persistentVolumeClaim, nfs or hostPath",
    ),
    ("unknown-preset", _case(_set("spec.model.preset", "gpt-5")), "spec.model.preset", "Unsupported value"),
    (
        "two-lengths",
        _case(_set("spec.training.trainSteps", 100)),
        "spec.training",
        "exactly one of trainSamples, trainTokens or trainSteps",
    ),
    (
        "no-length",
        _case(_set("spec.training.trainSamples", _DELETE)),
        "spec.training",
        "exactly one of trainSamples, trainTokens or trainSteps",
    ),
    (
        "batch-not-divisible",
        _case(_set("spec.training.globalBatchSize", 1000)),
        "spec.training.globalBatchSize",
        "multiple of microBatchSize x data-parallel size",
    ),
    (
        "min-lr-above-peak",
        _case(_set("spec.training.learningRate.min", 0.1)),
        "spec.training.learningRate.min",
        "min must not exceed peak",
    ),
    (
        "zero-nodes",
        _case(_set("spec.resources.nodes", 0)),
        "spec.resources.nodes",
        "should be greater than or equal to 1",
    ),
    (
        "too-many-gpus",
        _case(_set("spec.resources.gpusPerNode", 64)),
        "spec.resources.gpusPerNode",
        "should be less than or equal to 16",
    ),
    (
        "bad-memory-quantity",
        _case(_set("spec.resources.gpu.minMemory", "lots")),
        "spec.resources.gpu.minMemory",
        "should match",
    ),
    (
        "gpu-without-gpus",
        _case(_set("spec.resources.gpusPerNode", 0)),
        "spec.resources.gpu",
        "needs gpusPerNode of at least 1",
    ),
    ("env-value-and-ref", _case(_set("spec.env.0.value", "x")), "spec.env[0]", "set value or valueFrom, not both"),
    ("name-too-long", _case(_set("metadata.name", "a" * 45)), "metadata.name", "at most 44 characters"),
    ("name-starts-with-digit", _case(_set("metadata.name", "1mix")), "metadata.name", "must start with a letter"),
    ("missing-resources", _case(_set("spec.resources", _DELETE)), "spec.resources", "Required value"),
    (
        "eod-outside-vocab",
        _case(_set("spec.training.tokenizer.eodToken", 151851)),
        "spec.training.tokenizer.eodToken",
        "eodToken must be smaller than vocabSize",
    ),
]

# Input limits (issue 10, item 5): no `..` in any path, no mount over the operator's own paths,
# DATAMIX_ names reserved, overrides and env bounded.
INVALID_MANIFESTS += [
    (
        "validation-path-escapes-base",
        _case(_set("spec.datasets.mixture.0.validationPath", "web/../../etc/valid")),
        "spec.datasets.mixture[0].validationPath",
        "must stay inside baseDir",
    ),
    (
        "base-dir-dot-dot",
        _case(_set("spec.datasets.baseDir", "/data/../etc")),
        "spec.datasets.baseDir",
        "must not contain '.' or '..' as a path segment",
    ),
    (
        "host-path-dot-dot",
        _case(_set("spec.datasets.volume", {"hostPath": {"path": "/mnt/data/../../var/run"}})),
        "spec.datasets.volume.hostPath.path",
        "must not contain '..' as a path segment",
    ),
    (
        "nfs-path-dot-dot",
        _case(_set("spec.output.volume.nfs.path", "/exports/runs/../../private")),
        "spec.output.volume.nfs.path",
        "must not contain '..' as a path segment",
    ),
    (
        "tokenizer-path-dot-dot",
        _case(_set("spec.training.tokenizer.path", "../hf_openseek/tokenizer")),
        "spec.training.tokenizer.path",
        "must not contain '..' as a path segment",
    ),
    (
        "output-path-dot-dot",
        _case(_set("spec.output.path", "/output/../etc/datamix")),
        "spec.output.path",
        "must not contain '.' or '..' as a path segment",
    ),
    (
        "base-dir-over-run-spec",
        _case(_set("spec.datasets.baseDir", "/etc/datamix")),
        "spec.datasets.baseDir",
        "must not be, contain or sit inside a path the operator mounts",
    ),
    (
        "base-dir-contains-run-spec",
        _case(_set("spec.datasets.baseDir", "/etc")),
        "spec.datasets.baseDir",
        "must not be, contain or sit inside a path the operator mounts",
    ),
    (
        "output-over-scratch",
        _case(_set("spec.output.path", "/tmp")),
        "spec.output.path",
        "must not be the pods' scratch directory",
    ),
    (
        "output-in-shm",
        _case(_set("spec.output.path", "/dev/shm/out")),
        "spec.output.path",
        "must not be, contain or sit inside a path the operator mounts",
    ),
    (
        "output-over-termination-log",
        _case(_set("spec.output.path", "/dev")),
        "spec.output.path",
        "must not be, contain or sit inside a path the operator mounts",
    ),
    ("output-root", _case(_set("spec.output.path", "/")), "spec.output.path", "should match"),
    (
        "base-dir-trailing-slash",
        _case(_set("spec.datasets.baseDir", "/data/")),
        "spec.datasets.baseDir",
        "should match",
    ),
    (
        "output-inside-base-dir",
        _case(_set("spec.output.path", "/data/out")),
        "spec.output.path",
        "must not be the same directory or inside one another",
    ),
    (
        "reserved-env-name",
        _case(lambda m: _spec(m)["env"].append({"name": "DATAMIX_TERMINATION_LOG", "value": "/output/x"})),
        "spec.env[1].name",
        "names starting with DATAMIX_ are reserved",
    ),
    (
        "env-value-too-long",
        _case(lambda m: _spec(m)["env"].append({"name": "BIG", "value": "x" * 5000})),
        "spec.env[1].value",
        "Too long",
    ),
]

# Accepted by the API server, refused by the operator (and by `datamix validate`).
OPERATOR_ONLY_INVALID: list[tuple[str, Manifest, str, str]] = [
    (
        "nested-override",
        _case(_set("spec.model.overrides", {"numLayers": {"a": [1, 2, 3]}})),
        "spec.model.overrides.numLayers",
        "must be a int",
    ),
    (
        "long-override-string",
        _case(_set("spec.model.overrides", {"normalization": "x" * 300})),
        "spec.model.overrides.normalization",
        "at most 256",
    ),
    (
        "unknown-model-setting",
        _case(_set("spec.model.overrides", {"numLayerz": 4})),
        "spec.model.overrides.numLayerz",
        "unknown model setting",
    ),
    (
        "tensor-parallel-refused",
        _case(_set("spec.model.overrides", {"tensorModelParallelSize": 3})),
        "spec.model.overrides.tensorModelParallelSize",
        "data-parallel only",
    ),
    (
        "pipeline-parallel-refused",
        _case(_set("spec.model.overrides", {"pipelineModelParallelSize": 2})),
        "spec.model.overrides.pipelineModelParallelSize",
        "data-parallel only",
    ),
    (
        "query-groups-do-not-divide-heads",
        _case(_set("spec.model.overrides", {"numAttentionHeads": 16, "numQueryGroups": 12})),
        "spec.model.overrides.numQueryGroups",
        "must be a multiple of numQueryGroups",
    ),
]
