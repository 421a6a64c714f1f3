"""Failures under the pods' launcher (`datamix launch`, 2 CPU processes): exit codes that tell the
training-operator's ExitCode policy what happened, and a non-finite loss that fails the run.

(SIGKILL of one rank, exit 137 and the relaunch, is in test_training.py: it reuses that module's
uninterrupted two-process run as the reference.)"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datamix_trainer.checkpoint import Checkpointer, safe_load

from datamix.runspec import NON_FINITE_LOSS_EXIT_CODE
from tests.trainer.runs import history, quickstart_spec, start_training, trainer_env, write_spec

pytestmark = pytest.mark.training


def test_a_program_error_exits_1(demo_dir: Path, tmp_path: Path) -> None:
    """A checkpoint this code cannot load into its model (a state of the right run but the wrong
    shapes: a bug, not bad input) fails both ranks with a traceback; the launcher exits 1."""
    spec = quickstart_spec(demo_dir, tmp_path / "out", nproc=2, training={"trainSteps": 4})
    Checkpointer(Path(spec.output_dir) / "checkpoints", 0, 1, lambda: None, run=spec.run).save(
        2,
        2 * spec.training.global_batch_size,
        lambda: {"model": {"wrong": torch.zeros(3)}, "trainer": {"run": spec.run}},
    )
    log = tmp_path / "launch.log"
    code = start_training(write_spec(spec, tmp_path), 2, log).wait(timeout=300)
    text = log.read_text()
    assert code == 1, text[-3000:]
    assert "Traceback" in text
    assert "datamix launch: rank 0 exited with code 1: exit code 1" in text or (
        "datamix launch: rank 1 exited with code 1: exit code 1" in text
    )


def test_a_non_finite_loss_fails_with_its_exit_code_and_keeps_finite_checkpoints(
    demo_dir: Path, tmp_path: Path
) -> None:
    training = {
        "trainSteps": 40,
        "checkpointInterval": 1,
        "logInterval": 1,
        "evalInterval": 100,
        "learningRate": {"peak": 1e6, "min": 1e6, "warmupSamples": 0, "decay": "constant"},
    }
    spec = quickstart_spec(demo_dir, tmp_path / "out", nproc=2, training=training)
    out = Path(spec.output_dir)
    log = tmp_path / "launch.log"
    code = start_training(write_spec(spec, tmp_path), 2, log, DATAMIX_KEEP_CHECKPOINTS="2").wait(timeout=300)
    text = log.read_text()
    assert code == NON_FINITE_LOSS_EXIT_CODE, text[-3000:]
    match = re.search(r"error: non-finite training at step (\d+): loss \S+, grad norm \S+", text) or re.search(
        r"error: non-finite weights \(\S+\) after step (\d+): not saved", text
    )
    assert match, text[-3000:]
    failed = int(match.group(1))
    print(f"non-finite at step {failed}: {match.group(0)}")
    assert f"datamix launch: rank 0 exited with code {NON_FINITE_LOSS_EXIT_CODE}" in text or (
        f"datamix launch: rank 1 exited with code {NON_FINITE_LOSS_EXIT_CODE}" in text
    )
    assert not (out / "results.json").exists()

    checkpoints = sorted((out / "checkpoints").glob("step_*"))
    assert checkpoints, "no checkpoint before the failure"
    newest = checkpoints[-1]
    assert int(newest.name[len("step_") :]) < failed + (0 if "non-finite training" in match.group(0) else 1)
    state = safe_load(newest / "state.pt", torch.device("cpu"))
    for name, tensor in state["model"].items():
        assert torch.isfinite(tensor).all(), f"{newest.name}: {name} is not finite"
    for i, per_param in state["optimizer"]["state"].items():
        for key, tensor in per_param.items():
            assert torch.isfinite(tensor).all(), f"{newest.name}: optimizer state {i}.{key} is not finite"
    steps = history(out)
    assert max(steps) < failed  # the failing step was never recorded as trained


PEER_SCRIPT = """
import os, signal, sys
import torch
import torch.distributed as dist
from datamix_trainer.distributed import PEER_LOST_EXIT_CODE, peer_lost

signal.signal(signal.SIGTERM, signal.SIG_IGN)  # let the survivor see the error, not the launcher's stop
dist.init_process_group("gloo")
t = torch.ones(1)
dist.all_reduce(t)  # both alive
if dist.get_rank() == 1:
    os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer would, on "another node"
try:
    for _ in range(1000):
        dist.all_reduce(t)
except Exception as err:
    print(f"rank 0 peer_lost={peer_lost(err)}: {type(err).__name__}: {str(err)[:200]}", flush=True)
    sys.exit(PEER_LOST_EXIT_CODE if peer_lost(err) else 1)
print("rank 0 saw no error", flush=True)
"""


def test_a_rank_whose_peer_died_classifies_the_real_gloo_error_as_peer_lost(tmp_path: Path) -> None:
    """What the ranks of another node see when a pod dies: a collective with a vanished peer. The
    trainer maps that error to exit 129 (retried), not 1 (the job would fail for good); the
    launcher here still reports the dead rank's 137."""
    script = tmp_path / "peer.py"
    script.write_text(PEER_SCRIPT)
    log = tmp_path / "peer.log"
    command = [sys.executable, "-m", "datamix_cli", "launch", "--standalone", "--nproc-per-node=2", str(script)]
    with open(log, "wb") as out:
        code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=trainer_env(), timeout=300).returncode
    text = log.read_text()
    assert "rank 0 peer_lost=True" in text, text[-3000:]
    assert code == 128 + signal.SIGKILL, text[-3000:]
    assert "datamix launch: rank 1 died of SIGKILL: exit code 137" in text
