"""The contract between the operator and the trainer.

Two versioned documents:
- the *run spec*, written by the operator into the run's ConfigMap and read by every trainer
  process: who the run is, the normalised mixture with resolved paths, model and training
  settings, where output goes;
- the *run result*, written by the trainer at the end into `results.json` and the master pod's
  termination message, from which the operator fills `status.result`.

Both encode deterministically (sorted keys, fixed separators) so that the same manifest always
renders to byte-identical ConfigMaps. This module imports neither kopf nor torch.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

RUN_SPEC_VERSION = "datamix.io/runspec/v1"
RUN_RESULT_VERSION = 1
# The trainer writes the run result here; the kubelet puts it (at most 4096 bytes) in the pod status.
TERMINATION_LOG_PATH = "/dev/termination-log"
TERMINATION_MESSAGE_LIMIT = 4096
# Name of the run spec's key in the ConfigMap, and where the pods mount it.
RUN_SPEC_KEY = "runspec.json"
RUN_SPEC_MOUNT_DIR = "/etc/datamix"
RUN_SPEC_PATH = f"{RUN_SPEC_MOUNT_DIR}/{RUN_SPEC_KEY}"
# NCCL and the data loader workers share tensors through this memory-backed mount.
SHM_MOUNT_PATH = "/dev/shm"
# The root filesystem is read-only: torchrun's error files, compiler caches and $HOME go here.
SCRATCH_MOUNT_PATH = "/tmp"
# Paths the operator mounts (or the kubelet writes) in every trainer container: the schema refuses a
# datasets.baseDir or output.path that equals, contains or sits inside one of them.
OPERATOR_MOUNT_PATHS: tuple[str, ...] = (RUN_SPEC_MOUNT_DIR, SHM_MOUNT_PATH, TERMINATION_LOG_PATH)
# Mounts a user's volume may sit inside (a nested mount works and /tmp/... is a common choice), but
# not replace: the schema refuses only these paths themselves.
OPERATOR_SCRATCH_PATHS: tuple[str, ...] = (SCRATCH_MOUNT_PATH,)
# Environment names of the operator and the trainer (DATAMIX_RUN_SPEC, DATAMIX_TERMINATION_LOG, ...):
# the schema refuses them in spec.env.
RESERVED_ENV_PREFIX = "DATAMIX_"
# The trainer image's user and group (Dockerfile): the pods run as them, never as root.
TRAINER_UID = 10001
# A stopped pod's time to finish its step and save a checkpoint (the trainer's launcher waits as long).
DEFAULT_TERMINATION_GRACE_SECONDS = 900


class RunSpecError(ValueError):
    """A run spec or run result document that cannot be decoded."""


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    path: str  # absolute Megatron indexed-dataset prefix (`<path>.bin`, `<path>.idx`)
    share: float  # the dataset's share of the mixture (weight / sum of weights); a run's shares sum to 1
    validation_path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        # The document calls the share `weight` (run spec v1: Megatron's name for it).
        return {"name": self.name, "path": self.path, "weight": self.share, "validation_path": self.validation_path}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> DatasetSpec:
        return cls(name=raw["name"], path=raw["path"], share=raw["weight"], validation_path=raw.get("validation_path"))


@dataclass(frozen=True)
class LearningRate:
    peak: float
    min: float
    warmup_samples: int
    decay: str  # cosine | linear | constant


@dataclass(frozen=True)
class TrainingSpec:
    seq_length: int
    global_batch_size: int
    micro_batch_size: int
    train_samples: int
    learning_rate: LearningRate
    seed: int
    checkpoint_interval: int  # steps
    eval_interval: int  # steps
    eval_samples: int  # validation samples per dataset per evaluation
    log_interval: int  # steps
    vocab_size: int
    eod_token: int

    @property
    def train_steps(self) -> int:
        return train_steps(self.train_samples, self.global_batch_size)


@dataclass(frozen=True)
class ModelSpec:
    preset: str
    settings: dict[str, int | float | str | bool]  # the preset with the overrides applied


@dataclass(frozen=True)
class RunSpec:
    experiment: str
    namespace: str
    run: str  # the run's id: a short hash of the run-defining spec
    datasets: tuple[DatasetSpec, ...]
    model: ModelSpec
    training: TrainingSpec
    output_dir: str  # <output.path>/<namespace>/<experiment>/<run>
    nodes: int
    procs_per_node: int
    accelerator_peak_flops: float | None = None  # per device, for MFU
    version: str = field(default=RUN_SPEC_VERSION)

    @property
    def shares(self) -> list[float]:
        return [d.share for d in self.datasets]

    def to_json(self) -> str:
        return _dumps({**asdict(self), "datasets": [d.to_dict() for d in self.datasets]})

    @classmethod
    def from_json(cls, text: str) -> RunSpec:
        try:
            raw = json.loads(text)
            if raw.get("version") != RUN_SPEC_VERSION:
                raise RunSpecError(
                    f"run spec version {raw.get('version')!r} is not {RUN_SPEC_VERSION!r}: "
                    "the operator and the trainer image are of different releases"
                )
            training = dict(raw["training"])
            training["learning_rate"] = LearningRate(**training["learning_rate"])
            spec = cls(
                **{
                    **raw,
                    "datasets": tuple(DatasetSpec.from_dict(d) for d in raw["datasets"]),
                    "model": ModelSpec(**raw["model"]),
                    "training": TrainingSpec(**training),
                }
            )
        except (KeyError, TypeError, json.JSONDecodeError) as err:
            raise RunSpecError(f"malformed run spec: {err}") from err
        check_weights(spec.shares)
        return spec


def train_steps(train_samples: int, global_batch_size: int) -> int:
    """Optimizer steps of a run: whole global batches, the last one reaching or passing train_samples."""
    return math.ceil(train_samples / global_batch_size)


def batch_problem(global_batch_size: int, micro_batch_size: int, data_parallel_size: int) -> str | None:
    """The batch rule: every step is a whole number of micro batches on every data-parallel rank.
    What is wrong, or None. The schema's CEL rules are the API server's copy of this rule (a test
    holds the two to the same cases); callers name the field and the fix."""
    if global_batch_size % (micro_batch_size * data_parallel_size):
        return (
            f"{global_batch_size} is not a multiple of microBatchSize x data-parallel size "
            f"({micro_batch_size} x {data_parallel_size})"
        )
    return None


def normalise(weights: list[float]) -> list[float]:
    """Each weight divided by the sum of all weights (Megatron's rule), summing to 1 within 1e-12."""
    check_weights(weights, normalised=False)
    total = math.fsum(weights)
    shares = [w / total for w in weights]
    # Put the rounding residue on the largest share so the sum is 1 to the last bit possible.
    residue = 1.0 - math.fsum(shares)
    largest = max(range(len(shares)), key=shares.__getitem__)
    shares[largest] += residue
    return shares


def check_weights(weights: list[float], normalised: bool = True) -> None:
    if not weights:
        raise RunSpecError("a mixture needs at least one dataset")
    for i, w in enumerate(weights):
        if not (isinstance(w, int | float) and math.isfinite(w) and w > 0):
            raise RunSpecError(f"weight {i} is {w!r}: weights must be finite and greater than 0")
    if normalised and abs(math.fsum(weights) - 1.0) > 1e-12:
        raise RunSpecError(f"normalised weights sum to {math.fsum(weights)!r}, not 1")


@dataclass(frozen=True)
class RunResult:
    """What a finished run reports. Per-dataset lists follow the run spec's dataset order; an empty
    list is unknown (left out to fit the termination message, or written by an older trainer)."""

    run: str
    train_loss: float | None
    validation_loss: tuple[float | None, ...]
    tokens: tuple[int, ...]  # training tokens consumed per dataset
    steps: int
    consumed_samples: int
    wall_seconds: float
    detail_truncated: bool = False  # per-dataset lists left out to fit the termination message
    # Per dataset, the tokens of one epoch of its training data: the sum of the sequence lengths of
    # the documents in its train split (megatron-core's tokens per epoch). The sweep's maxEpochs
    # divides by it. Empty: unknown.
    epoch_tokens: tuple[int, ...] = ()

    @property
    def realised_shares(self) -> list[float]:
        total = sum(self.tokens)
        return [t / total if total else 0.0 for t in self.tokens]

    @property
    def mean_validation_loss(self) -> float | None:
        losses = [v for v in self.validation_loss if v is not None]
        return math.fsum(losses) / len(losses) if losses else None

    def encode(self, limit: int = TERMINATION_MESSAGE_LIMIT) -> str:
        """Compact JSON with short keys and 5 significant digits. What does not fit in `limit`
        bytes is left out (and `trunc` set), least needed first: the consumed tokens (the blend
        keeps them within a few samples of share x samples, and results.json has them), then the
        epoch sizes (only maxEpochs needs them), then the validation losses."""
        doc: dict[str, Any] = {
            "v": RUN_RESULT_VERSION,
            "run": self.run,
            "loss": _round(self.train_loss),
            "val": [_round(v) for v in self.validation_loss],
            "tok": list(self.tokens),
            "steps": self.steps,
            "samples": self.consumed_samples,
            "wall": round(self.wall_seconds, 1),
        }
        if self.epoch_tokens:
            doc["epoch"] = list(self.epoch_tokens)
        if self.detail_truncated:
            doc["val"], doc["tok"], doc["trunc"] = [], [], True
            doc.pop("epoch", None)
        text = _dumps(doc)
        for drop in ("tok", "epoch", "val"):
            if len(text.encode()) <= limit:
                break
            doc["trunc"] = True
            if drop == "epoch":
                doc.pop("epoch", None)
            else:
                doc[drop] = []
            text = _dumps(doc)
        return text

    @classmethod
    def decode(cls, text: str) -> RunResult:
        try:
            doc = json.loads(text)
            if not isinstance(doc, dict):
                raise TypeError("not a JSON object")
            if doc.get("v") != RUN_RESULT_VERSION:
                raise RunSpecError(f"run result version {doc.get('v')!r} is not {RUN_RESULT_VERSION}")
            epoch = doc.get("epoch", [])  # absent in results of trainers older than maxEpochs
            if not isinstance(doc["run"], str) or not all(isinstance(doc[k], list) for k in ("val", "tok")):
                raise TypeError("run must be a string, val and tok lists")
            if not isinstance(epoch, list):
                raise TypeError("epoch must be a list of token counts")
            lengths = {len(x) for x in (doc["val"], doc["tok"], epoch) if x}
            if len(lengths) > 1:
                raise ValueError(f"per-dataset lists of different lengths ({sorted(lengths)})")
            return cls(
                run=doc["run"],
                train_loss=_loss(doc["loss"]),
                validation_loss=tuple(_loss(v) for v in doc["val"]),
                tokens=tuple(_count(t) for t in doc["tok"]),
                steps=_count(doc["steps"]),
                consumed_samples=_count(doc["samples"]),
                wall_seconds=float(_loss(doc["wall"]) or 0.0),
                detail_truncated=bool(doc.get("trunc", False)),
                epoch_tokens=tuple(_count(t) for t in epoch),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise RunSpecError(f"malformed run result: {err}") from err


def _loss(value: Any) -> float | None:
    """A reported number: finite, or null (a run result is untrusted input to the operator)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{value!r} is not a finite number")
    return float(value)


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{value!r} is not a count")
    return value


def _round(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return float(f"{value:.5g}")


def _dumps(doc: Any) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False)


# How every trainer pod starts: `datamix launch` is torchrun with honest exit codes (128+n when a
# rank died of signal n). torchrun reads --nnodes, --node-rank and --nproc-per-node from the
# PET_NNODES, PET_NODE_RANK and PET_NPROC_PER_NODE variables that the Kubeflow training-operator
# injects; the rendezvous address comes from its MASTER_ADDR/MASTER_PORT (expanded by the kubelet).
TRAINER_COMMAND: tuple[str, ...] = (
    "datamix",
    "launch",
    "--master-addr=$(MASTER_ADDR)",
    "--master-port=$(MASTER_PORT)",
    "--no-python",
    "datamix",
    "train",
    "--run-spec",
    RUN_SPEC_PATH,
)
RUN_SPEC_ENV = "DATAMIX_RUN_SPEC"
# The trainer's exit code when the loss or gradient norm is not finite (status reason NonFiniteLoss).
NON_FINITE_LOSS_EXIT_CODE = 3
# The trainer's Prometheus endpoint (one per pod, served by local rank 0), container port `metrics`.
METRICS_PORT = 9410
METRICS_PORT_NAME = "metrics"
