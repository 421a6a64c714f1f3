"""Checkpoints: atomic saves, and a damaged checkpoint is skipped in favour of the previous one."""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from datamix_trainer.checkpoint import MARKER, Checkpointer, step_dir

from datamix.errors import UserError


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
    assert latest is not None, "no checkpoint found"
    assert (latest.step, latest.consumed_samples) == (20, 320)
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
    assert latest is not None, "no checkpoint found"
    assert latest.step == 20
    assert len(messages) == 1, messages
    assert "step_00000030 skipped" in messages[0], messages[0]
    assert "truncated" in messages[0], messages[0]


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
    assert latest is not None, "no checkpoint found"
    assert latest.step == 10


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
    assert (marker["step"], marker["consumed_samples"]) == (40, 640)
    for name, meta in marker["files"].items():
        assert (step_dir(tmp_path, 40) / name).stat().st_size == meta["bytes"]


class Payload:
    """Unpickling this creates a file: what a planted checkpoint would do instead."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.sentinel,))


def plant(checkpoint: Path, name: str, payload: object) -> None:
    """Replace one file of a complete checkpoint and re-seal its marker, as someone with write
    access to a shared output volume could."""
    torch.save({"model": {}, "trainer": payload}, checkpoint / name)
    marker = json.loads((checkpoint / MARKER).read_text())
    data = (checkpoint / name).read_bytes()
    marker["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (checkpoint / MARKER).write_text(json.dumps(marker))


@pytest.mark.parametrize("name", ["state.pt", "rng_rank0.pt"])
def test_a_pickle_payload_is_not_run_and_the_previous_checkpoint_is_loaded(tmp_path: Path, name: str) -> None:
    checkpointer = make(tmp_path / "checkpoints")
    for step in (10, 20):
        save(checkpointer, step)
    sentinel = tmp_path / "payload-ran"
    plant(step_dir(tmp_path / "checkpoints", 20), name, Payload(sentinel))
    assert Checkpointer.verify(step_dir(tmp_path / "checkpoints", 20)) == (True, "")  # the marker matches

    messages: list[str] = []
    found = checkpointer.load_latest(torch.device("cpu"), log=messages.append)
    assert not sentinel.exists()
    assert found is not None
    checkpoint, state = found
    assert checkpoint.step == 10
    assert state["step"] == 10
    assert len(messages) == 1
    assert f"step_00000020 skipped: {name} holds more than tensors and plain data" in messages[0]


def test_a_checkpoint_of_another_run_is_refused_before_unpickling(tmp_path: Path) -> None:
    save(Checkpointer(tmp_path, rank=0, world_size=1, barrier=lambda: None, run="aaaa1111"), 10)
    sentinel = tmp_path / "payload-ran"
    plant(step_dir(tmp_path, 10), "state.pt", Payload(sentinel))
    mine = Checkpointer(tmp_path, rank=0, world_size=1, barrier=lambda: None, run="bbbb2222")
    with pytest.raises(UserError, match=r"belongs to run aaaa1111, not bbbb2222"):
        mine.load_latest(torch.device("cpu"), log=lambda _: None)
    assert not sentinel.exists()


def test_every_type_the_trainer_saves_loads_with_weights_only(tmp_path: Path) -> None:
    """Optimizer state, RNG states (Python, NumPy, torch) and nested plain data round-trip."""
    model = torch.nn.Linear(8, 8)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
    model(torch.randn(2, 8)).sum().backward()
    optimizer.step()
    checkpointer = make(tmp_path)
    checkpointer.save(
        1,
        16,
        lambda: {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "trainer": {"step": 1, "validation": [None, 1.5], "recent_losses": [2.0], "run": "r"},
        },
    )
    random.seed(7)
    np.random.seed(7)
    torch.manual_seed(7)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(7)
    np.random.seed(7)
    torch.manual_seed(7)
    checkpointer.save(2, 32, lambda: {"model": model.state_dict()})  # RNG states saved here
    _ = (random.random(), np.random.rand(), torch.rand(1).item())  # move every generator on
    found = checkpointer.load_latest(torch.device("cpu"), log=lambda _: None)
    assert found is not None
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected  # restored
    first = checkpointer.load(checkpointer.find_latest(before=2), torch.device("cpu"))  # type: ignore[arg-type]
    assert first["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.95)
    assert first["trainer"]["validation"] == [None, 1.5]
