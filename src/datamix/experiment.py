"""From a DataMixtureExperiment manifest to a run: its id, child names and run spec.

Shared by `datamix validate/render/run` and the operator; imports neither kopf nor torch.
"""

from __future__ import annotations

import hashlib
import json
import math
import posixpath
from pathlib import Path
from typing import Any

import yaml

from datamix import API_VERSION, KIND
from datamix.errors import UserError
from datamix.presets import PRESETS, check_override, trainer_refusal
from datamix.runspec import (
    DatasetSpec,
    LearningRate,
    ModelSpec,
    RunSpec,
    RunSpecError,
    TrainingSpec,
    normalise,
)
from datamix.schema import RUN_ID_LENGTH

DEFAULT_BASE_DIR = "/data"
DEFAULT_OUTPUT_PATH = "/output"
# Fields whose change starts a new run (new child names). Others (suspend, env, pod metadata,
# pull secrets, deadline) apply to the current run's future pods or to the next run.
RUN_DEFINING_FIELDS = ("datasets", "model", "training", "resources", "image", "output")


def load_manifest(path: str | Path) -> dict[str, Any]:
    """Read one DataMixtureExperiment from a YAML file."""
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise UserError(f"{path}: cannot read the file ({err.strerror}); check the path") from err
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise UserError(f"{path}: malformed YAML{where}: {problem}; fix the syntax") from err
    if len(docs) != 1 or not isinstance(docs[0], dict):
        raise UserError(f"{path}: expected exactly one YAML mapping (a {KIND}), found {len(docs)} documents")
    manifest: dict[str, Any] = docs[0]
    if manifest.get("kind") != KIND or manifest.get("apiVersion") != API_VERSION:
        raise UserError(
            f"{path}: apiVersion/kind are {manifest.get('apiVersion')!r}/{manifest.get('kind')!r}; "
            f"expected {API_VERSION}/{KIND}"
        )
    return manifest


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def run_id(manifest: dict[str, Any]) -> str:
    """A short hash of the run-defining spec: equal specs give equal ids, in any process."""
    spec = manifest.get("spec", {})
    defining = {k: _integral_floats_as_ints(spec[k]) for k in RUN_DEFINING_FIELDS if k in spec}
    return hashlib.sha256(canonical_json(defining).encode()).hexdigest()[:RUN_ID_LENGTH]


def _integral_floats_as_ints(value: Any) -> Any:
    """The API server stores `weight: 2.0` as `2`: hash what it will return, so a file and the
    object read back from the cluster have the same run id."""
    if isinstance(value, dict):
        return {k: _integral_floats_as_ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral_floats_as_ints(v) for v in value]
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        return int(value)
    return value


def run_name(manifest: dict[str, Any]) -> str:
    """Name of the run's children (ConfigMap, PyTorchJob): `<experiment>-<run id>`."""
    return f"{manifest['metadata']['name']}-{run_id(manifest)}"


def build_run_spec(
    manifest: dict[str, Any],
    *,
    namespace: str | None = None,
    base_dir: str | None = None,
    output_dir: str | None = None,
    procs_per_node: int | None = None,
    nodes: int | None = None,
) -> RunSpec:
    """The run spec of the manifest's current run.

    Assumes the manifest passed schema validation; raises UserError for what only this step can
    see (unknown model settings, parallelism that does not divide the batch). The keyword
    arguments re-target a run to this machine (`datamix run`) without changing its id.
    """
    meta = manifest["metadata"]
    spec = manifest["spec"]
    datasets_spec = spec["datasets"]
    resources = spec["resources"]
    training = spec["training"]

    base = base_dir or datasets_spec.get("baseDir", DEFAULT_BASE_DIR)
    mixture = datasets_spec["mixture"]
    try:
        shares = normalise([float(d["weight"]) for d in mixture])
    except RunSpecError as err:
        raise UserError(f"spec.datasets.mixture: {err}") from err
    datasets = tuple(
        DatasetSpec(
            name=d["name"],
            path=posixpath.join(base, d["path"]),
            weight=share,
            validation_path=posixpath.join(base, d["validationPath"]) if d.get("validationPath") else None,
        )
        for d, share in zip(mixture, shares, strict=True)
    )

    settings = dict(PRESETS[spec["model"]["preset"]])
    overrides = spec["model"].get("overrides", {})
    for key, value in sorted(overrides.items()):
        problem = check_override(key, value)
        if problem:
            raise UserError(f"spec.model.overrides.{key}: {problem}")
        settings[key] = value
    refusal = trainer_refusal(settings, on_gpus=int(resources["gpusPerNode"]) > 0)
    if refusal is not None:
        key, why = refusal
        where = f"spec.model.overrides.{key}" if key in overrides else f"spec.model.preset ({key} of the preset)"
        raise UserError(f"{where}: {why}")

    seq_length = int(training["seqLength"])
    global_batch = int(training["globalBatchSize"])
    micro_batch = int(training["microBatchSize"])
    if "trainSamples" in training:
        train_samples = int(training["trainSamples"])
    elif "trainTokens" in training:
        train_samples = math.ceil(int(training["trainTokens"]) / seq_length)
    elif "trainSteps" in training:
        train_samples = int(training["trainSteps"]) * global_batch
    else:
        raise UserError("spec.training: set exactly one of trainSamples, trainTokens or trainSteps")
    steps = math.ceil(train_samples / global_batch)

    node_count = nodes or int(resources["nodes"])
    procs = procs_per_node or max(int(resources["gpusPerNode"]), 1)
    _check_parallelism(node_count * procs, global_batch, micro_batch)

    lr = training["learningRate"]
    tokenizer = training["tokenizer"]
    vocab_size = int(tokenizer["vocabSize"])
    gpu = resources.get("gpu", {})
    output = output_dir or spec.get("output", {}).get("path", DEFAULT_OUTPUT_PATH)
    rid = run_id(manifest)
    return RunSpec(
        experiment=meta["name"],
        namespace=namespace or meta.get("namespace", "default"),
        run=rid,
        datasets=datasets,
        model=ModelSpec(preset=spec["model"]["preset"], settings=settings),
        training=TrainingSpec(
            seq_length=seq_length,
            global_batch_size=global_batch,
            micro_batch_size=micro_batch,
            train_samples=train_samples,
            learning_rate=LearningRate(
                peak=float(lr["peak"]),
                min=float(lr.get("min", 0.0)),
                warmup_samples=int(lr.get("warmupSamples", 0)),
                decay=lr.get("decay", "cosine"),
            ),
            seed=int(training.get("seed", 1234)),
            checkpoint_interval=int(training.get("checkpointInterval", steps)),
            eval_interval=int(training.get("evalInterval", max(1, steps // 10))),
            eval_samples=int(training.get("evalSamples", 32)),
            log_interval=int(training.get("logInterval", 1 if steps <= 100 else 10)),
            vocab_size=vocab_size,
            eod_token=int(tokenizer.get("eodToken", vocab_size - 1)),
        ),
        output_dir=posixpath.join(output, meta["name"], rid),
        nodes=node_count,
        procs_per_node=procs,
        accelerator_peak_flops=float(gpu["peakTFLOPS"]) * 1e12 if "peakTFLOPS" in gpu else None,
    )


def _check_parallelism(world: int, global_batch: int, micro_batch: int) -> None:
    # data-parallel only (presets.trainer_refusal): every process is a data-parallel rank
    if global_batch % (micro_batch * world):
        raise UserError(
            f"spec.training.globalBatchSize: {global_batch} is not a multiple of microBatchSize x "
            f"data-parallel size ({micro_batch} x {world}); change the batch sizes or the resources"
        )
