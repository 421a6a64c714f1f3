"""From a DataMixtureExperiment manifest to a planned run: `plan_run` is the one place that turns
a manifest into a run's id, child names, run spec (with the mixture's *shares*) and what the
operator needs to render the run's children.

Shared by `datamix validate/render/run` and the operator; imports neither kopf nor torch.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    batch_problem,
    normalise,
    train_steps,
)
from datamix.schema import RUN_ID_LENGTH
from datamix.yamlfile import read_yaml_documents

DEFAULT_BASE_DIR = "/data"
DEFAULT_OUTPUT_PATH = "/output"
DEFAULT_NAMESPACE = "default"
# Fields whose change starts a new run (new child names). Others (suspend, env, pod metadata,
# pull secrets, deadline) apply to the current run's future pods or to the next run.
RUN_DEFINING_FIELDS = ("datasets", "model", "training", "resources", "image", "output")


def load_manifest(path: str | Path, kinds: tuple[str, ...] = (KIND,)) -> dict[str, Any]:
    """Read one manifest of one of `kinds` (default: a DataMixtureExperiment) from a YAML file."""
    docs = read_yaml_documents(path, str(path))
    if len(docs) != 1 or not isinstance(docs[0], dict):
        wanted = " or ".join(kinds)
        raise UserError(f"{path}: expected exactly one YAML mapping (a {wanted}), found {len(docs)} documents")
    manifest: dict[str, Any] = docs[0]
    if manifest.get("kind") not in kinds or manifest.get("apiVersion") != API_VERSION:
        raise UserError(
            f"{path}: apiVersion/kind are {manifest.get('apiVersion')!r}/{manifest.get('kind')!r}; "
            f"expected {API_VERSION}/{' or '.join(kinds)}"
        )
    return manifest


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


# The version of `run_id`'s recipe, labelled on every child (names.LABEL_RUN_ID_SCHEME). Children
# without the label predate it and were made with this same recipe (tests/api pins fixed ids). A
# change of the recipe must change this value.
RUN_ID_SCHEME = "1"


def run_id(manifest: Mapping[str, Any]) -> str:
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


def child_name(owner: str, run: str) -> str:
    """Name of a run's children (ConfigMap, PyTorchJob): `<owner>-<run id>`."""
    return f"{owner}-{run}"


def run_name(manifest: Mapping[str, Any]) -> str:
    """Name of the manifest's current run's children."""
    return child_name(manifest["metadata"]["name"], run_id(manifest))


def mixture_shares(mixture: Sequence[Mapping[str, Any]]) -> list[float]:
    """Each mixture entry's share: its relative `weight` over the sum of all weights (raises
    RunSpecError for weights that make no mixture)."""
    return normalise([float(d["weight"]) for d in mixture])


def suspend_requested(manifest: Mapping[str, Any]) -> bool:
    """spec.suspend: remove the current run's pods (the job stays) until it turns false."""
    return bool((manifest.get("spec") or {}).get("suspend", False))


def queue_name(manifest: Mapping[str, Any]) -> str | None:
    """spec.resources.queueName: the Kueue LocalQueue that admits the run, if any."""
    queue = ((manifest.get("spec") or {}).get("resources") or {}).get("queueName")
    return str(queue) if queue else None


@dataclass(frozen=True)
class RunOwner:
    """The object a run's children belong to (owner reference, `datamix.io/experiment` label)."""

    api_version: str
    kind: str
    name: str
    uid: str | None = None  # None: rendered offline, before the API server assigned one


@dataclass(frozen=True)
class RunPlan:
    """One run, planned once from a manifest: everything the operator renders and reports.

    `workload` is the manifest's spec as planned (pods, volumes, scheduling, environment); the run
    spec is the trainer's contract. An owner may hold several runs (a sweep's trials): nothing
    here assumes the owner is a DataMixtureExperiment.
    """

    id: str  # the run id: a short hash of the run-defining spec
    owner: RunOwner
    namespace: str
    spec: RunSpec
    workload: Mapping[str, Any]

    @property
    def name(self) -> str:
        """Name of every child of the run (its ConfigMap and its PyTorchJob)."""
        return child_name(self.owner.name, self.id)

    @property
    def suspend(self) -> bool:
        return suspend_requested({"spec": self.workload})

    @property
    def queue(self) -> str | None:
        return queue_name({"spec": self.workload})


def plan_run(
    manifest: Mapping[str, Any],
    namespace: str | None = None,
    *,
    base_dir: str | None = None,
    output_dir: str | None = None,
    procs_per_node: int | None = None,
    nodes: int | None = None,
) -> RunPlan:
    """Plan the manifest's current run.

    Assumes the manifest passed schema validation; raises UserError for what only this step can
    see (unknown model settings, settings the trainer cannot honour, a batch that does not divide).
    The keyword arguments re-target a run to this machine (`datamix run`) without changing its id.
    """
    meta = manifest["metadata"]
    rid = run_id(manifest)
    ns = namespace or meta.get("namespace") or DEFAULT_NAMESPACE
    spec = _run_spec(
        manifest, rid, ns, base_dir=base_dir, output_dir=output_dir, procs_per_node=procs_per_node, nodes=nodes
    )
    owner = RunOwner(
        api_version=manifest.get("apiVersion", API_VERSION),
        kind=manifest.get("kind", KIND),
        name=meta["name"],
        uid=meta.get("uid") or None,
    )
    return RunPlan(id=rid, owner=owner, namespace=ns, spec=spec, workload=copy.deepcopy(dict(manifest["spec"])))


def build_run_spec(
    manifest: Mapping[str, Any],
    *,
    namespace: str | None = None,
    base_dir: str | None = None,
    output_dir: str | None = None,
    procs_per_node: int | None = None,
    nodes: int | None = None,
) -> RunSpec:
    """The run spec of the manifest's current run (`plan_run(...).spec`)."""
    return plan_run(
        manifest, namespace, base_dir=base_dir, output_dir=output_dir, procs_per_node=procs_per_node, nodes=nodes
    ).spec


def train_samples_of(training: Mapping[str, Any]) -> int:
    """Samples a run trains on, from exactly one of trainSamples, trainTokens (rounded up to whole
    samples) or trainSteps (whole global batches)."""
    if "trainSamples" in training:
        return int(training["trainSamples"])
    if "trainTokens" in training:
        return math.ceil(int(training["trainTokens"]) / int(training["seqLength"]))
    if "trainSteps" in training:
        return int(training["trainSteps"]) * int(training["globalBatchSize"])
    raise UserError("spec.training: set exactly one of trainSamples, trainTokens or trainSteps")


def run_output_dir(output: str, namespace: str, experiment: str, rid: str) -> str:
    """`<output>/<namespace>/<experiment>/<run>`: experiments of different namespaces that share an
    output volume never share a run directory (nor resume from each other's checkpoints)."""
    return posixpath.join(output, namespace, experiment, rid)


def _run_spec(
    manifest: Mapping[str, Any],
    rid: str,
    namespace: str,
    *,
    base_dir: str | None,
    output_dir: str | None,
    procs_per_node: int | None,
    nodes: int | None,
) -> RunSpec:
    meta = manifest["metadata"]
    spec = manifest["spec"]
    datasets_spec = spec["datasets"]
    resources = spec["resources"]
    training = spec["training"]

    base = base_dir or datasets_spec.get("baseDir", DEFAULT_BASE_DIR)
    mixture = datasets_spec["mixture"]
    try:
        shares = mixture_shares(mixture)
    except RunSpecError as err:
        raise UserError(f"spec.datasets.mixture: {err}") from err
    datasets = tuple(
        DatasetSpec(
            name=d["name"],
            path=posixpath.join(base, d["path"]),
            share=share,
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
    train_samples = train_samples_of(training)
    steps = train_steps(train_samples, global_batch)

    node_count = nodes or int(resources["nodes"])
    procs = procs_per_node or max(int(resources["gpusPerNode"]), 1)
    # data-parallel only (presets.trainer_refusal): every process is a data-parallel rank
    problem = batch_problem(global_batch, micro_batch, node_count * procs)
    if problem:
        raise UserError(f"spec.training.globalBatchSize: {problem}; change the batch sizes or the resources")

    lr = training["learningRate"]
    tokenizer = training["tokenizer"]
    vocab_size = int(tokenizer["vocabSize"])
    gpu = resources.get("gpu", {})
    output = output_dir or spec.get("output", {}).get("path", DEFAULT_OUTPUT_PATH)
    return RunSpec(
        experiment=meta["name"],
        namespace=namespace,
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
        output_dir=run_output_dir(output, namespace, meta["name"], rid),
        nodes=node_count,
        procs_per_node=procs,
        accelerator_peak_flops=float(gpu["peakTFLOPS"]) * 1e12 if "peakTFLOPS" in gpu else None,
    )

