"""Live progress (operator/datamix_operator/progress.py) against the trainer's real metrics
endpoint (datamix_trainer.metrics.TrainerMetrics served over HTTP on 127.0.0.1), with a clock the
test moves; and the status it produces (Progressing, the loss column, events)."""

from __future__ import annotations

import dataclasses
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from datamix_operator.progress import MAX_BODY, ProgressTracker, http_fetch, parse_reading
from datamix_operator.status import (
    Observation,
    ProgressView,
    RunInfo,
    desired_status,
    run_state,
    transitions,
)
from datamix_trainer.metrics import TrainerMetrics
from test_operator_status import experiment, job, run_info

from datamix.runspec import RunSpec
from datamix.schema import STATUS
from tests.trainer.runs import quickstart_spec

NS = "ns"


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def spec() -> RunSpec:
    return quickstart_spec(Path("/data"), Path("/output"))


@pytest.fixture
def trainer(spec: RunSpec) -> Iterator[tuple[TrainerMetrics, int]]:
    """The trainer's own metrics, served on a free port of 127.0.0.1."""
    metrics = TrainerMetrics(spec, peak_flops_per_device=None)
    port = metrics.serve(0)
    metrics.start(0, spec.training.train_samples, [0] * len(spec.datasets))
    yield metrics, port


def step(metrics: TrainerMetrics, spec: RunSpec, consumed: int, loss: float) -> None:
    metrics.step(loss, 1e-3, 0.5, 0.1, 2048, consumed, [0] * len(spec.datasets), 1e7, 1)


def master_pod(port: int, job: str, owner: str = "job-uid", uid: str = "pod-1", phase: str = "Running") -> dict:
    return {
        "metadata": {
            "namespace": NS, "name": f"{job}-master-0", "uid": uid, "creationTimestamp": "2026-01-01T00:00:00Z",
            "labels": {"training.kubeflow.org/job-name": job, "training.kubeflow.org/replica-type": "master"},
            "ownerReferences": [{"uid": owner, "controller": True, "kind": "PyTorchJob"}],
        },
        "spec": {"containers": [{"name": "pytorch", "ports": [{"name": "metrics", "containerPort": port}]}]},
        "status": {"phase": phase, "podIP": "127.0.0.1"},
    }


def tracker(clock: Clock, calls: list[tuple[str, str]]) -> ProgressTracker:
    return ProgressTracker(interval=5, timeout=2, clock=clock, on_change=lambda ns, name: calls.append((ns, name)))


def track(t: ProgressTracker, spec: RunSpec, deadline: int | None = None) -> ProgressView:
    return t.track(NS, spec.experiment, spec.run, f"{spec.experiment}-{spec.run}", deadline=deadline,
                   target_samples=spec.training.train_samples, job_uid="job-uid")


# -- one reading -------------------------------------------------------------------------------


def test_reading_of_the_trainers_exposition_is_for_its_run_only(spec: RunSpec, trainer: Any) -> None:
    metrics, port = trainer
    step(metrics, spec, 160, 4.25)
    metrics.evaluation([4.0, None, *([5.0] * (len(spec.datasets) - 2))], 10)
    text = http_fetch(f"http://127.0.0.1:{port}/metrics", 2)
    reading = parse_reading(text, spec.experiment, spec.run)
    assert reading is not None
    assert reading.consumed_samples == 160
    assert reading.target_samples == spec.training.train_samples
    assert reading.train_loss == 4.25
    assert reading.tokens_per_second == pytest.approx(20480)
    # the plain mean over the datasets that have a validation loss (RunResult's definition)
    n = len(spec.datasets)
    assert reading.mean_validation_loss == pytest.approx((4.0 + 5.0 * (n - 2)) / (n - 1))
    assert reading.validation_step == 10
    assert parse_reading(text, spec.experiment, "0000beef") is None, "another run's endpoint"
    assert parse_reading(text, "other-experiment", spec.run) is None
    assert parse_reading("<html>not metrics</html>", spec.experiment, spec.run) is None


def test_answers_larger_than_the_limit_are_refused() -> None:
    class Big(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"#" * (MAX_BODY + 10))

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Big)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(ValueError, match="larger than"):
            http_fetch(f"http://127.0.0.1:{server.server_port}/metrics", 2)
    finally:
        server.shutdown()


# -- the tracker -------------------------------------------------------------------------------


def test_status_changes_only_when_a_value_changes(spec: RunSpec, trainer: Any) -> None:
    metrics, port = trainer
    clock, calls = Clock(), []
    t = tracker(clock, calls)
    assert track(t, spec).fields == {}
    assert not t.read_now(NS, spec.experiment), "no master pod known yet: nothing to read"
    t.observe_pod(master_pod(port, f"{spec.experiment}-{spec.run}"))

    step(metrics, spec, 160, 4.5)
    assert t.read_now(NS, spec.experiment)
    assert len(calls) == 1
    first = track(t, spec).fields
    assert first["consumedSamples"] == 160
    assert first["percent"] == 100 * 160 // spec.training.train_samples
    assert first["trainLoss"] == 4.5

    for _ in range(3):  # an idle run: same values -> no call, the reading time stays
        clock.now += 5
        assert t.read_now(NS, spec.experiment)
    assert len(calls) == 1
    assert track(t, spec).fields == first

    clock.now += 5
    step(metrics, spec, 320, 4.0)
    assert t.read_now(NS, spec.experiment)
    assert len(calls) == 2
    second = track(t, spec).fields
    assert second["consumedSamples"] == 320
    assert second["trainLoss"] == 4.0
    assert second["readingTime"] != first["readingTime"]
    # 160 samples in 20 s since the first reading: the rest at 8 samples/s
    remaining = (spec.training.train_samples - 320) / 8
    assert second["estimatedCompletionTime"] == _rfc3339(round((clock.now + remaining) / 60) * 60)


def test_a_reading_for_another_run_is_ignored(spec: RunSpec) -> None:
    other = dataclasses.replace(spec, run="0000beef")
    metrics = TrainerMetrics(other, peak_flops_per_device=None)
    port = metrics.serve(0)
    metrics.start(800, other.training.train_samples, [0] * len(other.datasets))
    clock, calls = Clock(), []
    t = tracker(clock, calls)
    track(t, spec)
    t.observe_pod(master_pod(port, f"{spec.experiment}-{spec.run}"))
    assert not t.read_now(NS, spec.experiment)
    assert calls == []
    assert track(t, spec).fields == {}


def test_pods_of_another_job_or_not_running_are_not_read(spec: RunSpec, trainer: Any) -> None:
    _, port = trainer
    t = tracker(Clock(), [])
    track(t, spec)
    job_name = f"{spec.experiment}-{spec.run}"
    t.observe_pod(master_pod(port, job_name, owner="someone-else"))
    assert not t.read_now(NS, spec.experiment), "a pod not owned by the run's job"
    t.observe_pod(master_pod(port, job_name, uid="pod-2", phase="Pending"))
    assert not t.read_now(NS, spec.experiment)
    t.observe_pod(master_pod(port, job_name, uid="pod-3"))
    assert t.read_now(NS, spec.experiment)
    t.observe_pod(master_pod(port, job_name, uid="pod-3"), deleted=True)
    assert not t.read_now(NS, spec.experiment)


def test_progress_deadline_passes_and_clears(spec: RunSpec, trainer: Any) -> None:
    metrics, port = trainer
    clock, calls = Clock(), []
    t = tracker(clock, calls)
    track(t, spec, deadline=30)
    t.observe_pod(master_pod(port, f"{spec.experiment}-{spec.run}"))
    step(metrics, spec, 160, 4.5)
    t.read_now(NS, spec.experiment)
    clock.now += 10
    step(metrics, spec, 320, 4.4)
    t.read_now(NS, spec.experiment)  # a step completed at t=10
    calls.clear()

    clock.now += 30  # 30 s after the last step: not yet over
    t.sweep()
    assert not track(t, spec, deadline=30).exceeded
    clock.now += 1
    t.read_now(NS, spec.experiment)  # readable, but no new step
    t.sweep()
    view = track(t, spec, deadline=30)
    assert view.exceeded
    assert calls == [(NS, spec.experiment)], "one call when the verdict flips"

    clock.now += 5
    step(metrics, spec, 480, 4.3)
    t.read_now(NS, spec.experiment)
    assert not track(t, spec, deadline=30).exceeded
    assert len(calls) == 2


def test_an_unreachable_pod_counts_as_no_progress(spec: RunSpec) -> None:
    clock, calls = Clock(), []
    t = tracker(clock, calls)
    track(t, spec, deadline=10)
    t.observe_pod(master_pod(1, f"{spec.experiment}-{spec.run}"))  # nothing listens on port 1
    assert not t.read_now(NS, spec.experiment)
    clock.now += 11
    t.sweep()
    assert track(t, spec, deadline=10).exceeded


def test_restart_keeps_the_recorded_last_progress_time(spec: RunSpec) -> None:
    clock = Clock()
    t = tracker(clock, [])
    recorded = {"consumedSamples": 160, "lastProgressTime": _rfc3339(clock.now - 100)}
    view = t.track(NS, spec.experiment, spec.run, "job", deadline=60, target_samples=1600, recorded=recorded)
    assert view.exceeded, "an operator restart does not restart the deadline"


# -- the status it gives -------------------------------------------------------------------------


def running_status(view: ProgressView | None, old: dict[str, Any] | None = None) -> dict[str, Any]:
    run: RunInfo = run_info()
    return desired_status(experiment(old), Observation(run, run_state(job("Created", "Running")), progress=view),
                          "2026-01-01T00:00:00Z")


def test_live_status_shows_progress_and_loss_and_fits_the_schema() -> None:
    from datamix.validation import Problem, _check

    fields = {"consumedSamples": 400, "percent": 25, "trainLoss": 3.21, "meanValidationLoss": 3.4,
              "validationStep": 20, "tokensPerSecond": 1234.5, "estimatedCompletionTime": "2026-01-01T01:00:00Z",
              "readingTime": "2026-01-01T00:00:00Z", "lastProgressTime": "2026-01-01T00:00:00Z"}
    status = running_status(ProgressView(fields))
    assert status["progress"] == {**fields, "targetSamples": run_info().target_samples}
    assert status["loss"] == "3.21"
    progressing = next(c for c in status["conditions"] if c["type"] == "Progressing")
    assert (progressing["status"], progressing["reason"]) == ("True", "StepsCompleting")
    problems: list[Problem] = []
    _check(status, STATUS, ".status", problems)
    assert problems == []


def test_deadline_exceeded_is_a_false_condition_and_a_warning_event_then_resumes() -> None:
    fields = {"consumedSamples": 400, "percent": 25}
    ok = running_status(ProgressView(fields, deadline=60))
    stuck = running_status(ProgressView(fields, exceeded=True, deadline=60, last_progress="2026-01-01T00:00:00Z"),
                           old=ok)
    progressing = next(c for c in stuck["conditions"] if c["type"] == "Progressing")
    assert (progressing["status"], progressing["reason"]) == ("False", "ProgressDeadlineExceeded")
    assert "60s" in progressing["message"]
    assert stuck["phase"] == "Running", "the run is not stopped"
    events = transitions(ok, stuck)
    assert [(e.type, e.reason) for e in events] == [("Warning", "ProgressDeadlineExceeded")]
    again = running_status(ProgressView({**fields, "consumedSamples": 480}, deadline=60), old=stuck)
    assert [(e.type, e.reason) for e in transitions(stuck, again)] == [("Normal", "ProgressResumed")]


def _rfc3339(t: float) -> str:
    from datamix_operator.progress import rfc3339

    return rfc3339(t)
