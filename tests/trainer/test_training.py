"""Training end to end: DDP convergence, metrics, results, logs, and kill-and-resume."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import threading
import time
import urllib.request
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from datamix.runspec import RunResult, RunSpec
from tests.trainer.runs import (
    history,
    kill_when,
    quickstart_spec,
    start_training,
    wait,
    worker_pids,
    write_spec,
)
from testsupport.ports import free_port

pytestmark = pytest.mark.training

# Short quickstart runs: evaluations and checkpoints every 20 steps.
DDP_TRAINING = {"trainSteps": 60, "evalInterval": 20, "checkpointInterval": 20, "logInterval": 5}
SINGLE_TRAINING = {"trainSteps": 36, "evalInterval": 100, "checkpointInterval": 6, "logInterval": 6}

METRICS = [
    "datamix_train_loss",
    "datamix_validation_loss",
    "datamix_validation_step",
    "datamix_learning_rate",
    "datamix_grad_norm",
    "datamix_step_duration_seconds",
    "datamix_tokens_per_second",
    "datamix_dataset_tokens_total",
    "datamix_dataset_target_share",
    "datamix_consumed_samples",
    "datamix_target_samples",
    "datamix_model_flops_utilization",
    "datamix_last_checkpoint_timestamp_seconds",
]
CONSTANT = {"datamix_dataset_target_share", "datamix_target_samples"}


def scrape(port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
        text = response.read().decode()
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


class Scraper(threading.Thread):
    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.snapshots: list[dict[str, Any]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(OSError):  # not up yet, or already gone
                self.snapshots.append(scrape(self.port))
            time.sleep(0.2)


@pytest.fixture(scope="module")
def ddp_run(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two processes under torchrun train a short quickstart while a thread scrapes the metrics."""
    root = tmp_path_factory.mktemp("ddp")
    # A configured peak (resources.gpu.peakTFLOPS on a cluster) makes the CPU run export MFU too.
    spec = quickstart_spec(demo_dir, root / "out", nproc=2, training=DDP_TRAINING, accelerator_peak_flops=1e11)
    port = free_port()
    log = root / "torchrun.log"
    termination = root / "termination-log"
    process = start_training(
        write_spec(spec, root), 2, log, DATAMIX_METRICS_PORT=str(port), DATAMIX_TERMINATION_LOG=str(termination)
    )
    scraper = Scraper(port)
    scraper.start()
    try:
        wait(process, log)
    finally:
        scraper.stop.set()
        scraper.join()
    return {"spec": spec, "snapshots": scraper.snapshots, "log": log, "termination": termination}


def test_two_processes_with_ddp_learn_the_quickstart(ddp_run: dict[str, Any]) -> None:
    spec: RunSpec = ddp_run["spec"]
    evals = history(Path(spec.output_dir), "eval")
    assert sorted(evals) == [20, 40, 60]

    def mean(step: int) -> float:
        losses = [v for v in evals[step]["validation_loss"].values() if v is not None]
        assert len(losses) == len(spec.datasets)  # every dataset has a validation set
        return sum(losses) / len(losses)

    assert mean(60) <= 0.9 * mean(20), f"mean validation loss {mean(20):.3f} -> {mean(60):.3f}"
    result = json.loads((Path(spec.output_dir) / "results.json").read_text())
    assert result["validation_loss"] == list(evals[60]["validation_loss"].values())


def test_metrics_endpoint_serves_every_metric_and_they_change(ddp_run: dict[str, Any]) -> None:
    spec: RunSpec = ddp_run["spec"]
    snapshots = [s for s in ddp_run["snapshots"] if s.get("datamix_consumed_samples")]
    assert len(snapshots) >= 5, "too few scrapes during the run"
    names = [d.name for d in spec.datasets]
    last = snapshots[-1]
    for metric in METRICS:
        # Histograms expose _bucket/_sum/_count, counters _total (+ _created).
        assert any(n == metric or n.startswith(metric + "_") for n in last), f"{metric} missing"
    for series in (s for name, values in last.items() if name.startswith("datamix_") for s in values):
        assert {k for k, _ in series} <= {"experiment", "run", "dataset", "le"}, series
    for metric in ("datamix_validation_loss", "datamix_dataset_tokens_total", "datamix_dataset_target_share"):
        datasets = {dict(labels)["dataset"] for labels in last[metric]}
        assert datasets == set(names), metric

    def series(metric: str) -> list[tuple]:
        return [tuple(sorted(s.get(metric, {}).items())) for s in snapshots]

    for metric in METRICS:
        name = metric + "_count" if metric == "datamix_step_duration_seconds" else metric
        values = series(name)
        if metric in CONSTANT:
            assert len(set(values)) == 1, f"{metric} should not change"
        else:
            assert len(set(values)) > 1, f"{metric} never changed over {len(values)} scrapes"

    shares = {dict(k)["dataset"]: v for k, v in last["datamix_dataset_target_share"].items()}
    assert shares == pytest.approx({d.name: d.share for d in spec.datasets})
    assert list(last["datamix_target_samples"].values()) == [60 * spec.training.global_batch_size]
    mfu = next(iter(last["datamix_model_flops_utilization"].values()))
    assert 0 < mfu < 1
    tokens = {dict(k)["dataset"]: v for k, v in last["datamix_dataset_tokens_total"].items()}
    consumed = next(iter(last["datamix_consumed_samples"].values()))
    assert sum(tokens.values()) == consumed * spec.training.seq_length


def test_results_json_and_termination_message_match_the_run_result_schema(ddp_run: dict[str, Any]) -> None:
    spec: RunSpec = ddp_run["spec"]
    doc = json.loads((Path(spec.output_dir) / "results.json").read_text())
    assert set(doc) == {f.name for f in fields(RunResult)}
    result = RunResult(**{**doc, "validation_loss": tuple(doc["validation_loss"]), "tokens": tuple(doc["tokens"])})
    n = len(spec.datasets)
    assert result.run == spec.run
    assert result.steps == 60
    assert not result.detail_truncated
    assert result.consumed_samples == 60 * spec.training.global_batch_size
    assert len(result.validation_loss) == n
    assert all(isinstance(v, float) for v in result.validation_loss), result.validation_loss
    assert len(result.tokens) == n
    assert sum(result.tokens) == result.consumed_samples * spec.training.seq_length
    assert result.train_loss is not None, "no train loss"
    assert math.isfinite(result.train_loss), result.train_loss
    assert result.wall_seconds > 0
    for realised, d in zip(result.realised_shares, spec.datasets, strict=True):
        assert abs(realised - d.share) < 0.01
    # The termination message is the compact encoding of the same result.
    decoded = RunResult.decode(ddp_run["termination"].read_text())
    assert (decoded.run, decoded.tokens, decoded.steps) == (result.run, result.tokens, result.steps)
    # each dataset's size (tokens of one epoch), reported by rank 0: the .bin files hold uint16 tokens
    assert list(result.epoch_tokens) == [Path(d.path + ".bin").stat().st_size // 2 for d in spec.datasets]
    assert decoded.epoch_tokens == tuple(result.epoch_tokens)
    assert decoded.validation_loss == pytest.approx(result.validation_loss, rel=1e-4)


def test_logs_follow_the_per_process_layout(ddp_run: dict[str, Any]) -> None:
    spec: RunSpec = ddp_run["spec"]
    details = Path(spec.output_dir) / "logs" / "details"
    files = sorted(p.relative_to(details).as_posix() for p in details.rglob("*.log"))
    pattern = re.compile(r"host_0_[^/]+/\d{8}_\d{6}\.\d{6}/attempt_0/[01]/(stdout|stderr)\.log")
    assert len(files) == 4, files
    assert [f for f in files if not pattern.fullmatch(f)] == [], "log files outside the layout"
    for rank in "01":
        out = next(details.rglob(f"attempt_0/{rank}/stdout.log")).read_text()
        lines = [line for line in out.splitlines() if "lm loss:" in line]
        assert len(lines) == 60 // DDP_TRAINING["logInterval"]
        for key in (
            "consumed samples:",
            "lm loss:",
            "learning rate:",
            "grad norm:",
            "tokens per second:",
            "elapsed time per iteration (ms):",
        ):
            assert key in lines[-1]


def resumed_step(out: Path, attempt: int = 1) -> int:
    log = next((out / "logs" / "details").rglob(f"attempt_{attempt}/0/stdout.log")).read_text()
    match = re.search(r"resumed from step_\d+: step (\d+)", log)
    assert match, log[-2000:]
    return int(match.group(1))


@pytest.fixture(scope="module")
def single_reference(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> RunSpec:
    """An uninterrupted one-process run: the losses resumed runs must reproduce bitwise."""
    root = tmp_path_factory.mktemp("reference")
    reference = quickstart_spec(demo_dir, root / "out", training=SINGLE_TRAINING)
    process = start_training(write_spec(reference, root), 1, root / "ref.log")
    wait(process, root / "ref.log")
    return reference


def test_kill_truncate_and_sigterm_one_process_resume_bitwise(
    single_reference: RunSpec, demo_dir: Path, tmp_path: Path
) -> None:
    """Three attempts of one run: SIGKILLed after a checkpoint (whose newest checkpoint is then
    truncated), SIGTERMed mid-way (a pod deletion), then run to the end. Every step after each
    restart reproduces the uninterrupted run bitwise."""
    expected = history(Path(single_reference.output_dir))
    interval = SINGLE_TRAINING["checkpointInterval"]
    spec = quickstart_spec(demo_dir, tmp_path / "out", training=SINGLE_TRAINING)
    out = Path(spec.output_dir)
    spec_path = write_spec(spec, tmp_path)

    # Attempt 0: SIGKILL once checkpoint 12 is complete; then truncate the newest checkpoint.
    process = start_training(spec_path, 1, tmp_path / "attempt0.log")
    kill_when(process, (out / "checkpoints" / "step_00000012" / "COMPLETE").exists)
    newest = max((out / "checkpoints").glob("step_*"))
    with open(newest / "state.pt", "r+b") as f:
        f.truncate((newest / "state.pt").stat().st_size // 2)

    # Attempt 1: skips the truncated checkpoint, resumes from the one before; SIGTERM a few steps on.
    process = start_training(spec_path, 1, tmp_path / "attempt1.log")
    deadline = time.time() + 300
    while len(history(out, attempt=1)) < interval + 2:
        assert process.poll() is None, (tmp_path / "attempt1.log").read_text()[-3000:]
        assert time.time() < deadline, "timed out waiting for attempt 1's steps"
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 143, (tmp_path / "attempt1.log").read_text()[-3000:]
    log = next((out / "logs" / "details").rglob("attempt_1/0/stdout.log")).read_text()
    assert re.search(rf"checkpoint .*{newest.name} skipped: state.pt has \d+ bytes", log), log[-2000:]
    assert resumed_step(out, 1) == int(newest.name[len("step_") :]) - interval
    stopped = max(history(out, attempt=1))
    assert stopped < SINGLE_TRAINING["trainSteps"]
    assert (out / "checkpoints" / f"step_{stopped:08d}" / "COMPLETE").exists()  # saved on SIGTERM

    # Attempt 2: resumes at the SIGTERM step and finishes.
    process = start_training(spec_path, 1, tmp_path / "attempt2.log")
    wait(process, tmp_path / "attempt2.log")
    assert resumed_step(out, 2) == stopped
    for attempt, first in ((1, resumed_step(out, 1) + 1), (2, stopped + 1)):
        records = history(out, attempt=attempt)
        last = stopped if attempt == 1 else SINGLE_TRAINING["trainSteps"]
        assert sorted(records) == list(range(first, last + 1))
        for step, record in records.items():
            assert record["loss"] == expected[step]["loss"], f"attempt {attempt} step {step} differs"
            assert record["grad_norm"] == expected[step]["grad_norm"]
    final = json.loads((out / "results.json").read_text())
    reference = json.loads((Path(single_reference.output_dir) / "results.json").read_text())
    assert final["validation_loss"] == reference["validation_loss"]
    assert final["tokens"] == reference["tokens"]  # per-dataset counts survive the restarts


def test_sigkill_of_one_rank_exits_137_within_60s_and_the_relaunch_matches_the_uninterrupted_run(
    ddp_run: dict[str, Any], demo_dir: Path, tmp_path: Path
) -> None:
    """One rank OOM-killed (SIGKILL) under the pods' launcher: the launcher stops the other rank and
    exits 128 + 9, a code the ExitCode restart policy retries; the relaunch resumes from the last
    checkpoint and reproduces the uninterrupted two-process run."""
    expected = history(Path(ddp_run["spec"].output_dir))
    spec = quickstart_spec(demo_dir, tmp_path / "out", nproc=2, training=DDP_TRAINING)
    out = Path(spec.output_dir)
    spec_path = write_spec(spec, tmp_path)
    process = start_training(spec_path, 2, tmp_path / "first.log")
    marker = out / "checkpoints" / "step_00000020" / "COMPLETE"
    deadline = time.time() + 300
    while not marker.exists():
        assert process.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert time.time() < deadline, "timed out waiting for checkpoint 20"
        time.sleep(0.05)
    workers = worker_pids(process)
    assert sorted(workers) == [0, 1]
    os.kill(workers[1], signal.SIGKILL)
    killed = time.monotonic()
    code = process.wait(timeout=120)
    seconds = time.monotonic() - killed
    log = (tmp_path / "first.log").read_text()
    print(f"launcher exited {code} {seconds:.1f}s after rank 1 was SIGKILLed")
    assert code == 128 + signal.SIGKILL, log[-3000:]
    assert seconds < 60
    assert "datamix launch: rank 1 died of SIGKILL: exit code 137" in log
    assert not (out / "results.json").exists(), "the first attempt was meant to die before the end"
    time.sleep(0.5)
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers.values()), "a worker outlived the launcher"

    process = start_training(spec_path, 2, tmp_path / "second.log")
    wait(process, tmp_path / "second.log")
    start = resumed_step(out)
    assert start >= 20
    resumed = history(out, attempt=1)
    steps = list(range(start + 1, DDP_TRAINING["trainSteps"] + 1))
    assert sorted(resumed) == steps
    for step in steps:
        assert abs(resumed[step]["loss"] - expected[step]["loss"]) <= 1e-6, f"step {step}"
    assert len(list((out / "logs" / "details").rglob("attempt_1/*/stdout.log"))) == 2
