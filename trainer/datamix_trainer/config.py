"""What a trainer process knows before it trains: the run spec, its place in the job, its settings.

Three small typed objects, each read from one place:
- `RunSpec` (the contract with the operator, `datamix.runspec`) from `--run-spec` or `DATAMIX_RUN_SPEC`;
- `DistEnv` from the variables torchrun sets (`RANK`, `LOCAL_RANK`, ...); defaults make a plain
  `datamix train` a world of one;
- `TrainerSettings` from `DATAMIX_*` variables: things that are about this machine, not the run.
`Plan` derives the batch arithmetic once, with the errors a user can fix.

No torch here: `datamix run` uses this module in the launcher process.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

from datamix.errors import UserError
from datamix.runspec import (
    METRICS_PORT,
    RUN_SPEC_ENV,
    TERMINATION_LOG_PATH,
    RunSpec,
    RunSpecError,
    batch_problem,
)


def load_run_spec(path: str | None) -> RunSpec:
    """The run spec from `path`, else from `$DATAMIX_RUN_SPEC`; every problem is a UserError."""
    path = path or os.environ.get(RUN_SPEC_ENV)
    if not path:
        raise UserError(f"--run-spec: no run spec given; pass --run-spec PATH or set {RUN_SPEC_ENV}")
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise UserError(f"--run-spec: cannot read {path} ({err.strerror}); check the path") from err
    try:
        return RunSpec.from_json(text)
    except RunSpecError as err:
        raise UserError(f"--run-spec: {path}: {err}") from err


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError as err:
        raise UserError(f"{name}: {value!r} is not an integer") from err


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the job, as torchrun describes it."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    node_rank: int = 0
    restart_count: int = 0  # torchrun's restarts of this worker group (not pod restarts)
    hostname: str = "localhost"

    @classmethod
    def from_env(cls) -> DistEnv:
        world = _env_int("WORLD_SIZE", 1)
        local_world = _env_int("LOCAL_WORLD_SIZE", world)
        rank = _env_int("RANK", 0)
        return cls(
            rank=rank,
            local_rank=_env_int("LOCAL_RANK", 0),
            world_size=world,
            local_world_size=local_world,
            # torchrun has GROUP_RANK; the pod's PET_NODE_RANK is the same number.
            node_rank=_env_int("GROUP_RANK", _env_int("PET_NODE_RANK", rank // max(local_world, 1))),
            restart_count=_env_int("TORCHELASTIC_RESTART_COUNT", 0),
            hostname=socket.gethostname(),
        )

    @property
    def is_main(self) -> bool:
        """Global rank 0: writes checkpoints' shared files, results and the termination message."""
        return self.rank == 0

    @property
    def is_local_main(self) -> bool:
        """Local rank 0: serves the pod's one metrics endpoint."""
        return self.local_rank == 0


@dataclass(frozen=True)
class TrainerSettings:
    """Per-machine settings from the environment (never part of the run's identity)."""

    metrics_port: int | None = METRICS_PORT
    """Port of the Prometheus endpoint (`DATAMIX_METRICS_PORT`); 0 picks a free one and prints it;
    `none` or `off` serves none."""
    termination_log: str = TERMINATION_LOG_PATH
    """Where the compact run result goes (`DATAMIX_TERMINATION_LOG`); written only if the file's
    directory exists, as `/dev` does in a pod."""
    keep_checkpoints: int = 3
    """Complete checkpoints kept (`DATAMIX_KEEP_CHECKPOINTS`); older ones are deleted after a save."""
    model: str = "auto"
    """Model builder (`DATAMIX_MODEL`): `auto` (megatron-core GPTModel on CUDA, else the PyTorch
    GPT), `torch` or `megatron`."""
    data_workers: int = 0
    """DataLoader worker processes per rank (`DATAMIX_DATA_WORKERS`); 0 reads in the training process,
    which is fastest for the tiny CPU model (workers would compete for the same cores)."""
    console: bool = True
    """Whether rank 0 also prints its log lines to the console (`DATAMIX_CONSOLE=0` turns it off;
    `datamix run` does, because it draws a progress bar)."""

    @classmethod
    def from_env(cls) -> TrainerSettings:
        raw_port = os.environ.get("DATAMIX_METRICS_PORT", str(METRICS_PORT)).strip().lower()
        port = None if raw_port in ("none", "off", "") else _env_int("DATAMIX_METRICS_PORT", METRICS_PORT)
        keep = _env_int("DATAMIX_KEEP_CHECKPOINTS", 3)
        if keep < 1:
            raise UserError("DATAMIX_KEEP_CHECKPOINTS: must be at least 1 (the checkpoint to resume from)")
        model = os.environ.get("DATAMIX_MODEL", "auto")
        if model not in ("auto", "torch", "megatron"):
            raise UserError(f"DATAMIX_MODEL: {model!r} is not one of auto, torch, megatron")
        return cls(
            metrics_port=port,
            termination_log=os.environ.get("DATAMIX_TERMINATION_LOG", TERMINATION_LOG_PATH),
            keep_checkpoints=keep,
            model=model,
            data_workers=_env_int("DATAMIX_DATA_WORKERS", 0),
            console=os.environ.get("DATAMIX_CONSOLE", "1") != "0",
        )


@dataclass(frozen=True)
class Plan:
    """The batch arithmetic of a run on a given number of data-parallel ranks."""

    data_parallel_size: int
    micro_batch_size: int
    global_batch_size: int
    micro_batches_per_step: int  # gradient accumulation steps on each rank
    train_steps: int
    total_samples: int  # train_steps x global batch: every step is a full global batch
    seq_length: int

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch_size * self.seq_length

    @classmethod
    def make(cls, spec: RunSpec, data_parallel_size: int) -> Plan:
        t = spec.training
        problem = batch_problem(t.global_batch_size, t.micro_batch_size, data_parallel_size)
        if problem:
            raise UserError(f"training.globalBatchSize: {problem}; change the batch sizes or the number of processes")
        per_pass = t.micro_batch_size * data_parallel_size
        steps = t.train_steps
        return cls(
            data_parallel_size=data_parallel_size,
            micro_batch_size=t.micro_batch_size,
            global_batch_size=t.global_batch_size,
            micro_batches_per_step=t.global_batch_size // per_pass,
            train_steps=steps,
            total_samples=steps * t.global_batch_size,
            seq_length=t.seq_length,
        )


@dataclass(frozen=True)
class RunPaths:
    """Where a run's files go, all under the run spec's output_dir (`<output>/<namespace>/<experiment>/<run>`)."""

    root: Path

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def data_cache(self) -> Path:
        """megatron-core's index cache (`path_to_cache`): on the output volume, so that every rank
        and every restart reads the same blend indices instead of rebuilding them."""
        return self.root / "data-cache"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def results(self) -> Path:
        return self.root / "results.json"

    @property
    def history(self) -> Path:
        """One JSON line per logged step and per evaluation (rank 0), for plots and tests."""
        return self.root / "history.jsonl"

    @property
    def run_spec(self) -> Path:
        return self.root / "runspec.json"
