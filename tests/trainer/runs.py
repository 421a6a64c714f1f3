"""Helpers of the trainer tests: run specs from the quickstart, launching and killing runs."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from datamix_trainer.local_run import local_train_command

from datamix.experiment import build_run_spec, load_manifest
from datamix.runspec import RunSpec

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "examples" / "quickstart.yaml"


def quickstart_spec(
    data_dir: Path,
    output: Path,
    nproc: int = 1,
    training: dict[str, Any] | None = None,
    **replace: Any,
) -> RunSpec:
    """The quickstart manifest as `datamix run` turns it into a run spec, with training overrides."""
    manifest = load_manifest(QUICKSTART)
    manifest["spec"]["training"].update(training or {})
    if "trainSteps" in (training or {}):
        manifest["spec"]["training"].pop("trainSamples", None)
    spec = build_run_spec(manifest, base_dir=str(data_dir), output_dir=str(output), procs_per_node=nproc, nodes=1)
    return dataclasses.replace(spec, **replace) if replace else spec


def write_spec(spec: RunSpec, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "runspec.json"
    path.write_text(spec.to_json())
    return path


def trainer_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            # One thread per process: bitwise comparisons need the same thread count in every run,
            # and the test machine has two cores for up to two processes.
            "OMP_NUM_THREADS": "1",
            "DATAMIX_METRICS_PORT": "none",
            "PYTHONWARNINGS": "ignore",
        }
    )
    env.update(extra)
    return env


def start_training(spec_path: Path, nproc: int, log: Path, **env: str) -> subprocess.Popen[bytes]:
    """`datamix train` as a pod runs it: under `datamix launch` (torchrun) for several processes,
    bare for one."""
    command = local_train_command(spec_path, nproc)
    log.parent.mkdir(parents=True, exist_ok=True)
    out = open(log, "wb")  # noqa: SIM115  (closed by the process's end; the test reads it after)
    return subprocess.Popen(
        command, stdout=out, stderr=subprocess.STDOUT, env=trainer_env(**env), start_new_session=True, cwd=REPO
    )


def wait(process: subprocess.Popen[bytes], log: Path, timeout: float = 300) -> None:
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise
    assert process.returncode == 0, f"training failed ({process.returncode}):\n{log.read_text()[-4000:]}"


def kill_when(process: subprocess.Popen[bytes], condition: Callable[[], bool], timeout: float = 300) -> None:
    """SIGKILL the whole process group (torchrun and its workers) as soon as `condition()` holds."""
    deadline = time.time() + timeout
    while not condition():
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline, "timed out waiting to kill the run"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def worker_pids(launcher: subprocess.Popen[bytes]) -> dict[int, int]:
    """Global rank -> pid of the launcher's worker processes (its children with RANK set)."""
    workers: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue  # gone, or not ours to read
        if parent != launcher.pid:
            continue
        for item in environ:
            if item.startswith(b"RANK="):
                workers[int(item[len(b"RANK=") :])] = int(entry.name)
    return workers


def history(output_dir: Path, kind: str = "train", attempt: int | None = None) -> dict[int, dict[str, Any]]:
    """Per-step records of `history.jsonl` (of one attempt, if given); a torn last line is skipped."""
    records: dict[int, dict[str, Any]] = {}
    path = output_dir / "history.jsonl"
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record["kind"] == kind and (attempt is None or record["attempt"] == attempt):
            records[record["step"]] = record
    return records
