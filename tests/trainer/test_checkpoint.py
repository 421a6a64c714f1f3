"""Checkpoints: atomic saves, and a damaged checkpoint is skipped in favour of the previous one."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch
from datamix_trainer.checkpoint import MARKER, Checkpointer, step_dir


def make(root: Path, keep: int = 3) -> Checkpointer:
    return Checkpointer(root, rank=0, world_size=1, barrier=lambda: None, keep=keep)


def save(checkpointer: Checkpointer, step: int) -> None:
    model = torch.nn.Linear(64, 64)
    torch.manual_seed(step)
    torch.nn.init.normal_(model.weight)
    checkpointer.save(step, step * 16, lambda: {"model": model.state_dict(), "step": step})


def test_latest_complete_checkpoint_is_found_and_loaded(tmp_path: Path) -> None:
    checkpointer = make(tmp_path)
    for step in (10, 20):
        save(checkpointer, step)
    latest = checkpointer.find_latest(log=lambda _: None)
    assert latest is not None and latest.step == 20 and latest.consumed_samples == 320
    assert checkpointer.load(latest, torch.device("cpu"))["step"] == 20
    assert not list(tmp_path.glob(".tmp-*"))


def test_truncated_checkpoint_is_skipped_for_the_previous_one(tmp_path: Path) -> None:
    checkpointer = make(tmp_path)
    for step in (10, 20, 30):
        save(checkpointer, step)
    state = step_dir(tmp_path, 30) / "state.pt"
    with open(state, "r+b") as f:
        f.truncate(state.stat().st_size - 100)
    messages: list[str] = []
    latest = checkpointer.find_latest(log=messages.append)
    assert latest is not None and latest.step == 20
    assert len(messages) == 1 and "step_00000030 skipped" in messages[0] and "truncated" in messages[0]


def test_checkpoint_with_flipped_bytes_or_without_marker_is_skipped(tmp_path: Path) -> None:
    checkpointer = make(tmp_path)
    for step in (10, 20, 30):
        save(checkpointer, step)
    rng = step_dir(tmp_path, 30) / "rng_rank0.pt"
    data = bytearray(rng.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different content
    rng.write_bytes(bytes(data))
    (step_dir(tmp_path, 20) / MARKER).unlink()  # as if the process died before the marker
    latest = checkpointer.find_latest(log=lambda _: None)
    assert latest is not None and latest.step == 10


def test_an_interrupted_save_leaves_no_checkpoint_and_is_cleaned_up(tmp_path: Path) -> None:
    checkpointer = make(tmp_path)
    save(checkpointer, 10)

    def dies() -> dict:
        raise KeyboardInterrupt  # the process is stopped while serialising

    with contextlib.suppress(KeyboardInterrupt):
        checkpointer.save(20, 320, dies)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("step_")] == ["step_00000010"]
    assert checkpointer.find_latest(log=lambda _: None).step == 10  # type: ignore[union-attr]
    checkpointer.remove_partial()
    assert not list(tmp_path.glob(".tmp-*"))


def test_old_checkpoints_are_pruned_and_the_marker_describes_the_files(tmp_path: Path) -> None:
    checkpointer = make(tmp_path, keep=2)
    for step in (10, 20, 30, 40):
        save(checkpointer, step)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000030", "step_00000040"]
    marker = json.loads((step_dir(tmp_path, 40) / MARKER).read_text())
    assert marker["step"] == 40 and marker["consumed_samples"] == 640
    for name, meta in marker["files"].items():
        assert (step_dir(tmp_path, 40) / name).stat().st_size == meta["bytes"]
