"""Atomic checkpoints and resume from the latest complete one.

Layout under `<output_dir>/checkpoints/`:

    step_00000100/
        state.pt          model, optimizer, schedule, trainer state (written by rank 0)
        rng_rank<r>.pt    python, numpy and torch RNG states of rank r
        COMPLETE          JSON: step, consumed samples, size and sha256 of every file above

A checkpoint is written into `.tmp-step_...`, every file fsynced, `COMPLETE` written last, then
the directory renamed into place (a rename is atomic on POSIX file systems, NFS included). Loading
scans `step_*` newest first and takes the first whose `COMPLETE` exists and whose files match
their recorded sizes and hashes; a half-written or truncated checkpoint is skipped in favour of
the previous one. The directory scan is the only source of truth: there is no `latest` pointer
that could disagree with it.

Checkpoint files are data, not code: they are read with `torch.load(weights_only=True)`, which
rebuilds tensors and plain containers only and refuses any other pickled object, plus the short
`SAFE_GLOBALS` list below. The RNG states are stored as tensors and tuples for that reason. A
file that carries anything else (a pickle payload planted on a shared volume) is refused without
running it, and loading falls back to the previous checkpoint. The marker names the run, so a
checkpoint of another run is refused before any of its files is unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from datamix.errors import UserError

MARKER = "COMPLETE"
STATE_FILE = "state.pt"
PREFIX = "step_"
TMP_PREFIX = ".tmp-"


def step_dir(root: Path, step: int) -> Path:
    return root / f"{PREFIX}{step:08d}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durably(path: Path, write: Callable[[Any], None]) -> None:
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# Types besides tensors and plain containers that a checkpoint may hold: the dtypes and devices
# torch puts into some optimizer and RNG states. Nothing here runs code when unpickled.
SAFE_GLOBALS: list[Any] = [torch.device, torch.dtype, torch.Size]


class UnsafeCheckpoint(Exception):
    """A checkpoint file holds something other than tensors and plain data."""


def rng_state() -> dict[str, Any]:
    # NumPy's state as a tuple with a tensor: weights_only loading refuses NumPy arrays.
    name, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    state = {
        "python": random.getstate(),
        "numpy": (str(name), torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class Checkpoint:
    path: Path
    step: int
    consumed_samples: int


class Checkpointer:
    """Saves and finds checkpoints; collective calls (`save`, `find_latest`) run on every rank."""

    def __init__(
        self,
        root: Path,
        rank: int,
        world_size: int,
        barrier: Callable[[], None],
        keep: int = 3,
        run: str | None = None,
        all_ok: Callable[[bool], bool] = lambda ok: ok,
    ):
        self.root = root
        self.rank = rank
        self.world_size = world_size
        self.barrier = barrier
        self.keep = keep
        self.run = run  # written into the marker and checked before anything is unpickled
        self.all_ok = all_ok  # whether every rank's value is True (a collective under torchrun)

    # Saving -------------------------------------------------------------------------------------

    def save(self, step: int, consumed_samples: int, state: Callable[[], dict[str, Any]]) -> Checkpoint:
        """Write checkpoint `step`; `state()` is evaluated on rank 0 only (it may be large)."""
        final = step_dir(self.root, step)
        tmp = self.root / f"{TMP_PREFIX}{final.name}"
        if self.rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
        self.barrier()
        _write_durably(tmp / f"rng_rank{self.rank}.pt", lambda f: torch.save(rng_state(), f))
        if self.rank == 0:
            _write_durably(tmp / STATE_FILE, lambda f: torch.save(state(), f))
        self.barrier()
        if self.rank == 0:
            files = sorted(p for p in tmp.iterdir() if p.is_file())
            marker = {
                "step": step,
                "consumed_samples": consumed_samples,
                "world_size": self.world_size,
                "run": self.run,
                "time": time.time(),
                "files": {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in files},
            }
            _write_durably(tmp / MARKER, lambda f: f.write(json.dumps(marker, indent=2).encode()))
            _fsync_dir(tmp)
            if final.exists():  # the same step saved again (a resumed run re-saving at its end)
                shutil.rmtree(final)
            os.rename(tmp, final)
            _fsync_dir(self.root)
            self._prune()
        self.barrier()
        return Checkpoint(final, step, consumed_samples)

    def _prune(self) -> None:
        complete = [c for c in self._candidates() if (c / MARKER).exists()]
        for old in complete[self.keep :]:
            shutil.rmtree(old, ignore_errors=True)

    def remove_partial(self) -> None:
        """Delete leftovers of saves that died before their rename (rank 0, at start)."""
        if self.rank == 0 and self.root.exists():
            for tmp in self.root.glob(f"{TMP_PREFIX}*"):
                shutil.rmtree(tmp, ignore_errors=True)

    # Loading ------------------------------------------------------------------------------------

    def _candidates(self) -> list[Path]:
        if not self.root.exists():
            return []
        dirs = [p for p in self.root.glob(f"{PREFIX}*") if p.is_dir() and p.name[len(PREFIX) :].isdigit()]
        return sorted(dirs, key=lambda p: int(p.name[len(PREFIX) :]), reverse=True)

    @staticmethod
    def verify(path: Path) -> tuple[bool, str]:
        """Whether `path` is a complete checkpoint, and why not."""
        marker_path = path / MARKER
        if not marker_path.exists():
            return False, "no COMPLETE marker (the save did not finish)"
        try:
            marker = json.loads(marker_path.read_text())
            files = marker["files"]
        except (OSError, ValueError, KeyError) as err:
            return False, f"unreadable COMPLETE marker ({err})"
        if STATE_FILE not in files:
            return False, f"the marker lists no {STATE_FILE}"
        for name, meta in files.items():
            f = path / name
            if not f.exists():
                return False, f"{name} is missing"
            if f.stat().st_size != meta["bytes"]:
                return False, f"{name} has {f.stat().st_size} bytes, {meta['bytes']} were written (truncated)"
            if _sha256(f) != meta["sha256"]:
                return False, f"{name} does not match its sha256 (corrupt)"
        return True, ""

    def find_latest(self, log: Callable[[str], None] = print, before: int | None = None) -> Checkpoint | None:
        """The newest complete checkpoint (older than step `before`, if given), chosen by rank 0
        and agreed on by every rank."""
        choice: Checkpoint | None = None
        if self.rank == 0:
            for path in self._candidates():
                if before is not None and int(path.name[len(PREFIX) :]) >= before:
                    continue
                ok, why = self.verify(path)
                if ok:
                    marker = json.loads((path / MARKER).read_text())
                    self._check_run(path, marker.get("run"))
                    choice = Checkpoint(path, int(marker["step"]), int(marker["consumed_samples"]))
                    break
                log(f"checkpoint {path} skipped: {why}")
        return self._agree(choice)

    def _check_run(self, path: Path, run: str | None) -> None:
        if self.run is not None and run is not None and run != self.run:
            raise UserError(
                f"output.path: {path} belongs to run {run}, not {self.run}; give each run its own output directory"
            )

    def load_latest(
        self, map_location: torch.device, log: Callable[[str], None] = print
    ) -> tuple[Checkpoint, dict[str, Any]] | None:
        """The newest checkpoint that every rank could load, and its state; None when there is none.

        A checkpoint whose files hold anything but tensors and plain data is skipped (on every rank:
        each rank reads its own RNG file, so they agree through `all_ok` before going on).
        """
        before: int | None = None
        while (checkpoint := self.find_latest(log, before)) is not None:
            state: dict[str, Any] | None = None
            try:
                state = self.load(checkpoint, map_location)
            except UnsafeCheckpoint as err:
                log(f"checkpoint {checkpoint.path} skipped: {err}")
            if self.all_ok(state is not None) and state is not None:
                return checkpoint, state
            before = checkpoint.step
        return None

    def _agree(self, choice: Checkpoint | None) -> Checkpoint | None:
        if self.world_size == 1:
            return choice
        objects = [choice]
        torch.distributed.broadcast_object_list(objects, src=0)
        return objects[0]

    def load(self, checkpoint: Checkpoint, map_location: torch.device) -> dict[str, Any]:
        """Rank-0's state (every rank loads the same file) and this rank's RNG state applied."""
        state = safe_load(checkpoint.path / STATE_FILE, map_location)
        rng = checkpoint.path / f"rng_rank{self.rank}.pt"
        if rng.exists():  # absent when resuming on more ranks than the checkpoint was written by
            set_rng_state(safe_load(rng, torch.device("cpu")))
        return state


def safe_load(path: Path, map_location: torch.device) -> Any:
    """`torch.load` that rebuilds tensors and plain data only (never runs pickled code)."""
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UnsafeCheckpoint(f"{path.name} holds more than tensors and plain data, not loaded ({first})") from err
