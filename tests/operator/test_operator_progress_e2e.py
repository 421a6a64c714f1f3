"""Live progress and the progress deadline on the real control plane (issue 12).

The master pod is played by kwok, but its metrics endpoint is real: kwok gives the pod the
loopback address from its `datamix.io/fake-pod-ip` annotation and keeps it Running while
`datamix.io/fake-hold` is "true" (tools/cluster/stages/pod.yaml), and a process of this test
answers there on the pod's `metrics` port (9410):

- a real `datamix train` of the run spec the operator wrote into the run's ConfigMap (the
  demo data at datasets.baseDir), for the live progress and then the final result;
- the trainer's own metrics code (`TrainerMetrics`) with values the test sets, for an idle run,
  for a run that stops and resumes completing steps, and for an endpoint of another run.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from datamix_trainer.metrics import TrainerMetrics
from prometheus_client import start_http_server

from datamix.runspec import METRICS_PORT, RUN_SPEC_KEY, RunSpec
from tests.trainer.runs import start_training
from testsupport.clusterlib import H100, wait_for
from testsupport.experiments import (
    condition,
    core,
    e2e_manifest,
    get_experiment,
    posted_events,
    run_name_of,
    wait_condition,
    wait_phase,
)

pytestmark = pytest.mark.cluster

INTERVAL = 2
FAKE_POD_IP = "datamix.io/fake-pod-ip"
FAKE_HOLD = "datamix.io/fake-hold"
DOMAINS = ("python-code", "docstrings", "python-reference", "comments", "html-docs", "licenses")


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from datamix_trainer import demo_data

    directory = tmp_path_factory.mktemp("demo-data")
    demo_data.build(directory, log=lambda _: None, max_domain_bytes=250_000)
    return directory


def port_free(address: str) -> bool:
    with socket.socket() as s:
        try:
            s.bind((address, METRICS_PORT))
        except OSError:
            return False
    return True


def held_manifest(name: str, pool: str, address: str, **spec: Any) -> dict[str, Any]:
    """An experiment whose master pod answers at `address` and stays Running until released."""
    manifest = e2e_manifest(name, pool=pool, gpus=1, products=(H100,), result=False, duration="1s")
    annotations = manifest["spec"]["podTemplate"]["metadata"]["annotations"]
    annotations.update({FAKE_POD_IP: address, FAKE_HOLD: "true"})
    manifest["spec"].update(spec)
    return manifest


def apply(cluster: Any, namespace: str, manifest: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))


def run_spec_of(k8s_client: Any, namespace: str, manifest: dict[str, Any]) -> RunSpec:
    name = run_name_of(manifest, namespace)

    def configmap() -> Any:
        try:
            return core(k8s_client).read_namespaced_config_map(name, namespace)
        except Exception:
            return None

    cm = wait_for(configmap, 60, description=f"ConfigMap {name}")
    return RunSpec.from_json(cm.data[RUN_SPEC_KEY])


def master_pod(k8s_client: Any, namespace: str, job: str) -> Any:
    selector = f"training.kubeflow.org/job-name={job},training.kubeflow.org/replica-type=master"

    def running() -> Any:
        pods = core(k8s_client).list_namespaced_pod(namespace, label_selector=selector).items
        return next((p for p in pods if p.status.phase == "Running" and p.status.pod_ip), None)

    return wait_for(running, 90, description=f"the master pod of {job} Running")


def release(k8s_client: Any, namespace: str, pod: str, message: str) -> None:
    """The process that played the pod ended: kwok completes it with its termination message."""
    patch = {"metadata": {"annotations": {FAKE_HOLD: "false", "datamix.io/fake-termination-message": message}}}
    core(k8s_client).patch_namespaced_pod(pod, namespace, patch)


def resource_version(k8s_client: Any, namespace: str, name: str) -> str:
    return str(get_experiment(k8s_client, namespace, name)["metadata"]["resourceVersion"])


def parse_time(text: str) -> float:
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC).timestamp()


def reads(op: Any, outcome: str) -> float:
    for line in op.metrics().splitlines():
        if line.startswith(f'datamix_operator_progress_reads_total{{outcome="{outcome}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture
def trainer_served() -> Iterator[list[Any]]:
    """Servers of TrainerMetrics registries the test starts; shut down at the end."""
    servers: list[Any] = []
    yield servers
    for server in servers:
        server.shutdown()
        server.server_close()


def serve(servers: list[Any], spec: RunSpec, address: str, consumed: int) -> TrainerMetrics:
    metrics = TrainerMetrics(spec, peak_flops_per_device=None)
    server, _ = start_http_server(METRICS_PORT, addr=address, registry=metrics.registry)
    servers.append(server)
    metrics.start(consumed, spec.training.train_samples, [0] * len(spec.datasets))
    return metrics


def test_live_progress_of_a_real_trainer_then_its_result(
    cluster: Any, k8s_client: Any, namespace: str, gpu_pool: str, start_operator: Any, demo_data: Path,
    tmp_path: Path,
) -> None:
    if not port_free("127.0.0.1"):
        pytest.skip(f"port {METRICS_PORT} of 127.0.0.1 is busy: the trainer playing the pod needs it")
    op = start_operator([namespace], extra_args=["--progress-interval", str(INTERVAL)])
    manifest = held_manifest("live", gpu_pool, "127.0.0.1")
    manifest["spec"]["datasets"] = {
        "baseDir": str(demo_data),
        "mixture": [
            {"name": d, "path": f"{d}/train_text_document", "validationPath": f"{d}/validation_text_document",
             "weight": w}
            for d, w in zip(DOMAINS, (3.0, 1.5, 1.2, 0.8, 0.5, 0.3), strict=True)
        ],
    }
    manifest["spec"]["training"] = {
        "seqLength": 128, "globalBatchSize": 16, "microBatchSize": 4, "trainSteps": 120,
        "learningRate": {"peak": 0.003, "min": 0.0003, "warmupSamples": 160},
        "evalInterval": 20, "evalSamples": 8, "checkpointInterval": 1000, "logInterval": 10,
        "tokenizer": {"type": "byte", "vocabSize": 257, "eodToken": 256},
    }
    manifest["spec"]["output"] = {"path": str(tmp_path / "output")}
    apply(cluster, namespace, manifest)
    spec = run_spec_of(k8s_client, namespace, manifest)
    pod = master_pod(k8s_client, namespace, run_name_of(manifest, namespace))
    assert pod.status.pod_ip == "127.0.0.1"

    # the run spec from the ConfigMap, as the pod would mount it
    spec_path = tmp_path / "runspec.json"
    spec_path.write_text(spec.to_json())
    termination = tmp_path / "termination-log"
    log = tmp_path / "trainer.log"
    trainer = start_training(spec_path, 1, log, DATAMIX_METRICS_PORT=str(METRICS_PORT),
                             DATAMIX_TERMINATION_LOG=str(termination))
    seen: list[dict[str, Any]] = []
    columns: list[str] = []
    try:
        while trainer.poll() is None:
            status = get_experiment(k8s_client, namespace, "live").get("status") or {}
            progress = status.get("progress") or {}
            if "consumedSamples" in progress and status.get("phase") == "Running":
                if not seen or seen[-1]["progress"] != progress:
                    seen.append({"progress": progress, "loss": status.get("loss")})
                if len(columns) < 2 and progress.get("percent"):
                    columns.append(cluster.kubectl("get", "dmx", "live", "-n", namespace).stdout)
            time.sleep(0.5)
    finally:
        if trainer.poll() is None:
            os.killpg(trainer.pid, signal.SIGKILL)
    assert trainer.wait() == 0, log.read_text()[-3000:]

    percents = [s["progress"]["percent"] for s in seen]
    assert len(set(percents)) >= 3, f"too few live readings: {percents}"
    assert percents == sorted(percents), percents
    assert max(percents) < 100 or len(percents) > 3
    # A reading may come before the trainer logged its first loss; from then on every one has it.
    first_loss = next((i for i, s in enumerate(seen) if s["loss"]), len(seen))
    assert len(seen) - first_loss >= 2, f"the loss column is live: {seen}"
    assert all(s["loss"] and float(s["loss"]) > 0 for s in seen[first_loss:]), seen
    assert all(s["progress"]["targetSamples"] == 120 * 16 for s in seen)
    evaluated = [s["progress"] for s in seen if "meanValidationLoss" in s["progress"]]
    assert evaluated, "a live mean validation loss"
    assert all(p["validationStep"] % 20 == 0 for p in evaluated)
    assert any("tokensPerSecond" in s["progress"] and "readingTime" in s["progress"] for s in seen)
    header, row = columns[0].splitlines()[:2]
    assert "PROGRESS" in header
    assert "LOSS" in header
    assert "Running" in row

    # the process ended: the pod completes with its termination message, and the result is final
    release(k8s_client, namespace, pod.metadata.name, termination.read_text())
    done = wait_phase(k8s_client, namespace, "live", "Succeeded", timeout=90, op=op)
    results = json.loads((Path(spec.output_dir) / "results.json").read_text())
    status = done["status"]
    assert status["progress"]["percent"] == 100
    assert status["progress"]["consumedSamples"] == results["consumed_samples"]
    assert status["result"]["trainLoss"] == pytest.approx(results["train_loss"], rel=1e-4)
    assert condition(done, "Progressing")["status"] == "False"


def test_idle_run_is_not_written_deadline_passes_and_clears_foreign_readings_ignored(
    cluster: Any, k8s_client: Any, namespace: str, gpu_pool: str, start_operator: Any, trainer_served: list[Any],
) -> None:
    idle_ip, foreign_ip = "127.0.0.2", "127.0.0.3"
    if not (port_free(idle_ip) and port_free(foreign_ip)):
        pytest.skip(f"port {METRICS_PORT} is busy on the loopback addresses this test serves from")
    deadline = 16
    op = start_operator([namespace], extra_args=["--progress-interval", str(INTERVAL)])

    # An endpoint that answers for another run: its readings are ignored.
    foreign = held_manifest("foreign", gpu_pool, foreign_ip)
    apply(cluster, namespace, foreign)
    foreign_spec = run_spec_of(k8s_client, namespace, foreign)
    serve(trainer_served, dataclasses.replace(foreign_spec, run="0000beef"), foreign_ip, consumed=800)

    # An idle run: alive, answering for its own run, completing no steps.
    idle = held_manifest("idle", gpu_pool, idle_ip, progressDeadlineSeconds=deadline)
    apply(cluster, namespace, idle)
    spec = run_spec_of(k8s_client, namespace, idle)
    metrics = serve(trainer_served, spec, idle_ip, consumed=160)
    wait_phase(k8s_client, namespace, "idle", "Running", op=op)
    first = wait_for(
        lambda: (get_experiment(k8s_client, namespace, "idle").get("status") or {}).get("progress", {})
        .get("consumedSamples") == 160 or None,
        30, description="the first reading of the idle run",
    )
    assert first

    # Nothing changes between readings: no status write.
    version = resource_version(k8s_client, namespace, "idle")
    accepted = reads(op, "accepted")
    time.sleep(3 * INTERVAL + 1)
    assert reads(op, "accepted") >= accepted + 2, "the operator kept reading"
    exp = get_experiment(k8s_client, namespace, "idle")
    if condition(exp, "Progressing").get("reason") != "ProgressDeadlineExceeded":
        assert exp["metadata"]["resourceVersion"] == version, "an idle run's status was rewritten"

    # No step within the deadline: Progressing False, a Warning event, the run keeps running.
    def exceeded() -> dict[str, Any] | None:
        e = get_experiment(k8s_client, namespace, "idle")
        return e if condition(e, "Progressing").get("reason") == "ProgressDeadlineExceeded" else None

    stuck = wait_for(exceeded, deadline + 4 * INTERVAL, description="ProgressDeadlineExceeded")
    progressing = condition(stuck, "Progressing")
    assert progressing["status"] == "False"
    assert stuck["status"]["phase"] == "Running", "the run is not stopped"
    last = parse_time(stuck["status"]["progress"]["lastProgressTime"])
    flipped = parse_time(progressing["lastTransitionTime"])
    # within the deadline plus one interval (+1 s: both times are truncated to whole seconds)
    assert deadline <= flipped - last <= deadline + INTERVAL + 1, (last, flipped)
    (exceeded_event,) = posted_events(k8s_client, namespace, "idle", "ProgressDeadlineExceeded")
    assert exceeded_event.type == "Warning"

    # Steps complete again: the condition clears.
    metrics.consumed_samples.labels(**metrics.run_labels).set(320)
    resumed = wait_condition(k8s_client, namespace, "idle", "Progressing", "StepsCompleting", timeout=6 * INTERVAL,
                             op=op)
    assert resumed["status"]["progress"]["consumedSamples"] == 320
    assert posted_events(k8s_client, namespace, "idle", "ProgressResumed")

    # The other run's endpoint was read, and nothing of it reached the status.
    assert reads(op, "foreign") >= 2
    foreign_status = get_experiment(k8s_client, namespace, "foreign")["status"]
    assert "consumedSamples" not in foreign_status.get("progress", {})
    assert "loss" not in foreign_status
