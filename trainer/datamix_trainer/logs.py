"""Per-process log files in the OpenSeek/FlagScale layout, and Megatron-like log lines.

    <output_dir>/logs/details/host_<node_rank>_<host>/<timestamp>/attempt_<n>/<local_rank>/{stdout,stderr}.log

`timestamp` is global rank 0's start time, shared with every rank so that one launch is one
folder on every host. `attempt` counts the launches of this run (pod restarts and torchrun
restarts alike) from `logs/launches.jsonl`, which rank 0 appends to; torchrun's own
TORCHELASTIC_RESTART_COUNT only counts restarts inside one pod.

Every process writes its own files. Rank 0 also echoes to the console (the container log that
`kubectl logs` shows); other ranks echo only their stderr, so that errors are never hidden.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, TextIO

from datamix_trainer.config import DistEnv


def host_dir_name(env: DistEnv) -> str:
    return f"host_{env.node_rank}_{env.hostname}"


def next_attempt(logs_root: Path, env: DistEnv, timestamp: str) -> int:
    """Rank 0: number this launch and record it."""
    logs_root.mkdir(parents=True, exist_ok=True)
    launches = logs_root / "launches.jsonl"
    previous = 0
    if launches.exists():
        previous = sum(1 for line in launches.read_text().splitlines() if line.strip())
    attempt = max(previous, env.restart_count)
    with open(launches, "a") as f:
        f.write(json.dumps({"attempt": attempt, "timestamp": timestamp, "world_size": env.world_size}) + "\n")
    return attempt


def process_log_dir(logs_root: Path, env: DistEnv, timestamp: str, attempt: int) -> Path:
    return logs_root / "details" / host_dir_name(env) / timestamp / f"attempt_{attempt}" / str(env.local_rank)


def launch_timestamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%d_%H%M%S.%f")


class Tee:
    """A text stream writing to a file and, optionally, to the original stream."""

    def __init__(self, file: IO[str], echo: TextIO | None) -> None:
        self.file = file
        self.echo = echo

    def write(self, text: str) -> int:
        self.file.write(text)
        if self.echo is not None:
            self.echo.write(text)
        return len(text)

    def flush(self) -> None:
        self.file.flush()
        if self.echo is not None:
            self.echo.flush()

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:  # faulthandler and subprocess want a real descriptor
        return self.file.fileno()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.file, name)


@contextmanager
def process_logs(directory: Path, echo_stdout: bool) -> Iterator[Path]:
    """Redirect sys.stdout/sys.stderr into `directory`/{stdout,stderr}.log for the block."""
    directory.mkdir(parents=True, exist_ok=True)
    old_out, old_err = sys.stdout, sys.stderr
    with (
        open(directory / "stdout.log", "a", buffering=1) as out,
        open(directory / "stderr.log", "a", buffering=1) as err,
    ):
        sys.stdout = Tee(out, old_out if echo_stdout else None)
        sys.stderr = Tee(err, old_err)
        try:
            yield directory
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            sys.stdout, sys.stderr = old_out, old_err


def now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


def iteration_line(
    step: int,
    steps: int,
    consumed: int,
    ms_per_step: float,
    tokens_per_second: float,
    lr: float,
    global_batch: int,
    loss: float,
    grad_norm: float,
) -> str:
    """One line per logging interval, in Megatron-LM's shape (greppable by the same tools)."""
    return (
        f" [{now()}] iteration {step:>8d}/{steps:>8d} | consumed samples: {consumed:>12d} | "
        f"elapsed time per iteration (ms): {ms_per_step:.1f} | tokens per second: {tokens_per_second:.1f} | "
        f"learning rate: {lr:.6E} | global batch size: {global_batch:>5d} | lm loss: {loss:.6E} | "
        f"grad norm: {grad_norm:.3f} |"
    )


def validation_line(step: int, names: list[str], losses: list[float | None]) -> str:
    parts = [f"{n}: {'n/a' if v is None else f'{v:.4f}'}" for n, v in zip(names, losses, strict=True)]
    known = [v for v in losses if v is not None]
    mean = f"{sum(known) / len(known):.4f}" if known else "n/a"
    return f" [{now()}] validation loss at iteration {step} | " + " | ".join(parts) + f" | mean: {mean} |"


def flush_all() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
            os.fsync(stream.fileno())
        except (OSError, ValueError, AttributeError):
            pass
