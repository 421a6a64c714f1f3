"""The operator on the real local control plane (API server, scheduler, garbage collector,
training-operator, kwok): one test per "Done when" item of the operator issue.

Each test runs its own `datamix operator --namespace <its namespace>` subprocess, so tests and
other users of the same cluster do not see each other's experiments.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from datamix_operator.reconcile import CRASH_ENV

from datamix import GROUP
from testsupport.clusterlib import A100, H100, create_namespace, delete_namespace, wait_for
from testsupport.experiments import (
    A100_MEMORY,
    H100_MEMORY,
    capture,
    condition,
    e2e_manifest,
    get_experiment,
    kubectl_apply,
    lifecycle_scenario,
    list_configmaps,
    list_jobs,
    list_pods,
    posted_events,
    private_pool,
    run_id_of,
    run_name_of,
    wait_condition,
    wait_phase,
)
from testsupport.operator_process import DATAMIX, TRAINER_IMAGE, http_get

pytestmark = pytest.mark.cluster

SERVER_SET = ("uid", "resourceVersion", "creationTimestamp", "generation", "managedFields", "ownerReferences")


def strip_server_fields(obj: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in obj.items() if k != "status"}
    out["metadata"] = {k: v for k, v in obj["metadata"].items() if k not in SERVER_SET}
    return out


def assert_same(live: dict[str, Any], rendered: dict[str, Any]) -> None:
    a = json.dumps(rendered, indent=1, sort_keys=True).splitlines()
    b = json.dumps(live, indent=1, sort_keys=True).splitlines()
    assert a == b, "\n".join(difflib.unified_diff(a, b, "rendered", "live", lineterm=""))


def job_pods(api: Any, namespace: str, job: str) -> list[Any]:
    return list_pods(api, namespace, f"training.kubeflow.org/job-name={job}")


def test_apply_creates_exactly_one_configmap_and_job_equal_to_datamix_render(
    cluster: Any, k8s_client: Any, namespace: str, gpu_pool: str, start_operator: Any, tmp_path: Path
) -> None:
    start_operator([namespace])
    manifest = e2e_manifest("render-eq", pool=gpu_pool, duration="30s")
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(manifest))
    cluster.kubectl("apply", "-n", namespace, "-f", str(path))
    wait_for(lambda: list_jobs(k8s_client, namespace), 60, description="the PyTorchJob")
    rendered = list(yaml.safe_load_all(subprocess.run(
        [DATAMIX, "render", str(path), "--namespace", namespace],
        capture_output=True, text=True, check=True,
        env={**os.environ, "DATAMIX_TRAINER_IMAGE": TRAINER_IMAGE},  # the operator's --trainer-image
    ).stdout))
    exp = get_experiment(k8s_client, namespace, "render-eq")
    time.sleep(2)  # time for a duplicate to appear, if the operator made one
    jobs = list_jobs(k8s_client, namespace)
    cms = [{"apiVersion": "v1", "kind": "ConfigMap", **k8s_client.sanitize_for_serialization(c)}
           for c in list_configmaps(k8s_client, namespace, "render-eq")]
    assert len(jobs) == 1, [j["metadata"]["name"] for j in jobs]
    assert len(cms) == 1, [c["metadata"]["name"] for c in cms]
    assert_same(strip_server_fields(cms[0]), rendered[0])
    assert_same(strip_server_fields(jobs[0]), rendered[1])
    for child in (cms[0], jobs[0]):
        assert child["metadata"]["ownerReferences"] == [{
            "apiVersion": f"{GROUP}/v1alpha1", "kind": "DataMixtureExperiment", "name": "render-eq",
            "uid": exp["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}]
    assert "finalizers" not in exp["metadata"], "deletion must not depend on a running operator"
    assert not [k for k in exp["metadata"].get("annotations") or {} if "kopf" in k], "no kopf state on the object"


def test_pods_land_only_on_the_requested_gpu_and_2x8_h100_gets_both_h100_nodes(
    cluster: Any, k8s_client: Any, namespace: str, start_operator: Any
) -> None:
    pool_spec = [
        ("h100", 2, H100, H100_MEMORY, 8),
        ("a100", 2, A100, A100_MEMORY, 8),
        ("h100small", 1, H100, 40960, 8),  # the right product with too little memory for minMemory
    ]
    with private_pool(k8s_client, pool_spec) as (pool, nodes):
        op = start_operator([namespace])
        on_h100 = e2e_manifest("on-h100", nodes=2, gpus=8, min_memory="80G", pool=pool, duration="120s")
        on_a100 = e2e_manifest("on-a100", nodes=1, gpus=8, products=(A100,), pool=pool, duration="120s")
        nowhere = e2e_manifest("nowhere", nodes=1, gpus=8, products=(A100,), min_memory="80Gi", pool=pool)
        for m in (on_h100, on_a100, nowhere):
            kubectl_apply(cluster, namespace, m)
        wait_phase(k8s_client, namespace, "on-h100", "Running", op=op)
        wait_phase(k8s_client, namespace, "on-a100", "Running", op=op)
        h_nodes = [p.spec.node_name for p in job_pods(k8s_client, namespace, run_name_of(on_h100, namespace))]
        a_nodes = [p.spec.node_name for p in job_pods(k8s_client, namespace, run_name_of(on_a100, namespace))]
        assert sorted(h_nodes) == sorted(nodes["h100"]), "2 x 8 H100: one pod on each H100 node"
        assert len(a_nodes) == 1, a_nodes
        assert a_nodes[0] in nodes["a100"], f"{a_nodes[0]} is not an A100 node of the pool"
        pending = wait_phase(k8s_client, namespace, "nowhere", "Pending", op=op)
        unplaced = run_name_of(nowhere, namespace)

        def unschedulable() -> bool:
            pods = job_pods(k8s_client, namespace, unplaced)
            return bool(pods) and all(
                p.spec.node_name is None
                and any(c.type == "PodScheduled" and c.reason == "Unschedulable" for c in p.status.conditions or [])
                for p in pods)

        wait_for(unschedulable, 30, description="the A100 80GB pod unschedulable (no such node)")
        capture("pending", pending)
        cluster.kubectl("delete", "dmx", "--all", "-n", namespace, "--wait=false")
        wait_for(lambda: not list_pods(k8s_client, namespace), 90, description="pods gone before the pool goes")


def test_experiment_follows_the_job_to_succeeded_with_the_run_result(
    cluster: Any, k8s_client: Any, namespace: str, gpu_pool: str, start_operator: Any
) -> None:
    op = start_operator([namespace])
    done = lifecycle_scenario(k8s_client, cluster, namespace, pool=gpu_pool, op=op)
    for reason in ("JobCreated", "JobRunning", "JobSucceeded"):
        assert posted_events(k8s_client, namespace, "lifecycle", reason), reason
    assert done["status"]["startTime"] <= done["status"]["completionTime"]


def test_failure_path_ends_failed_with_the_jobs_reason_and_message(
    cluster: Any, k8s_client: Any, namespace: str, gpu_pool: str, start_operator: Any
) -> None:
    op = start_operator([namespace])
    manifest = e2e_manifest("fails", pool=gpu_pool, duration="2s", exit_code=1, result=False)
    kubectl_apply(cluster, namespace, manifest)
    exp = wait_phase(k8s_client, namespace, "fails", "Failed", op=op)
    capture("failed", exp)
    (job,) = list_jobs(k8s_client, namespace)
    job_failed = next(c for c in job["status"]["conditions"] if c["type"] == "Failed")
    failed = condition(exp, "Failed")
    assert failed["status"] == "True"
    assert failed["reason"] == "JobFailed"
    assert job_failed["reason"] in failed["message"], "the job's reason is in the message"
    assert job_failed["message"] in failed["message"], "the job's message is in the message"
    assert "the master exited with code 1" in failed["message"]
    assert exp["status"]["run"]["phase"] == "Failed"
    assert {e.type for e in posted_events(k8s_client, namespace, "fails", "JobFailed")} == {"Warning"}


def test_infrastructure_exit_code_restarts_the_pod_until_the_deadline(
    cluster: Any, k8s_client: Any, namespace: str, gpu_pool: str, start_operator: Any
) -> None:
    """Exit code 137 (OOM kill, SIGKILL) is retried by the ExitCode policy: Restarting, not Failed.
    The training-operator (v1.9.4) recreates such pods without counting them against backoffLimit
    (it counts container restarts only), so spec.activeDeadlineSeconds is what ends a run that is
    killed every time."""
    op = start_operator([namespace])
    manifest = e2e_manifest("oom", pool=gpu_pool, duration="2s", exit_code=137, result=False)
    manifest["spec"]["activeDeadlineSeconds"] = 15
    kubectl_apply(cluster, namespace, manifest)
    exp = wait_condition(k8s_client, namespace, "oom", "Restarting", "JobRestarting", op=op)
    capture("restarting", exp)
    assert exp["status"]["phase"] == "Running"
    exp = wait_phase(k8s_client, namespace, "oom", "Failed", timeout=90, op=op)
    (job,) = list_jobs(k8s_client, namespace)
    job_failed = next(c for c in job["status"]["conditions"] if c["type"] == "Failed")
    assert condition(exp, "Failed")["reason"] == "JobFailed"
    assert job_failed["message"] in condition(exp, "Failed")["message"]


def test_killing_and_restarting_the_operator_at_several_points_keeps_one_job_per_run(
    cluster: Any, k8s_client: Any, namespace: str, gpu_pool: str, start_operator: Any
) -> None:
    """The operator SIGKILLed after each step of starting a run, then while the job runs: every
    restart carries on from what is on the API server, and the run keeps its one job."""
    manifest = e2e_manifest("restarts", pool=gpu_pool, duration="8s")
    run = run_name_of(manifest, namespace)
    op = start_operator([namespace], start_env={CRASH_ENV: "configmap-created"})
    kubectl_apply(cluster, namespace, manifest)
    assert op.wait_exit() == 137
    assert [c.metadata.name for c in list_configmaps(k8s_client, namespace, "restarts")] == [run]
    assert list_jobs(k8s_client, namespace) == []

    op.start(env={CRASH_ENV: "job-created"}, wait=False)
    assert op.wait_exit() == 137
    (job,) = list_jobs(k8s_client, namespace)
    uid = job["metadata"]["uid"]

    op.start(env={CRASH_ENV: "status-written"}, wait=False)
    assert op.wait_exit() == 137
    assert get_experiment(k8s_client, namespace, "restarts")["status"]["run"]["job"] == run

    op.start()
    wait_phase(k8s_client, namespace, "restarts", "Running", op=op)
    op.kill()  # while the job runs; it finishes while no operator watches
    wait_for(lambda: any(c["type"] == "Succeeded" for c in (list_jobs(k8s_client, namespace)[0].get("status") or {})
                         .get("conditions") or []), 60, description="the job to finish unobserved")
    op.start()
    wait_phase(k8s_client, namespace, "restarts", "Succeeded", op=op)
    (job,) = list_jobs(k8s_client, namespace)
    assert job["metadata"]["uid"] == uid, "the job was never re-created"
    assert len(list_configmaps(k8s_client, namespace, "restarts")) == 1


def test_operator_killed_between_recording_a_new_run_and_retiring_the_old_one_finishes_the_retirement(
    cluster: Any, k8s_client: Any, namespace: str, gpu_pool: str, start_operator: Any
) -> None:
    manifest = e2e_manifest("restarts", pool=gpu_pool, duration="2s")
    run = run_name_of(manifest, namespace)
    op = start_operator([namespace])
    kubectl_apply(cluster, namespace, manifest)
    wait_phase(k8s_client, namespace, "restarts", "Succeeded", op=op)

    # a new run, with the operator dying after recording the old run and before deleting its job
    op.stop()
    edited = e2e_manifest("restarts", pool=gpu_pool, duration="4s", weights=(1.0, 1.0))
    new_run = run_name_of(edited, namespace)
    kubectl_apply(cluster, namespace, edited)
    op.start(env={CRASH_ENV: "run-recorded"}, wait=False)
    assert op.wait_exit() == 137
    status = get_experiment(k8s_client, namespace, "restarts")["status"]
    assert status["run"]["job"] == new_run
    assert status["previousRuns"][0]["job"] == run
    assert sorted(j["metadata"]["name"] for j in list_jobs(k8s_client, namespace)) == sorted([run, new_run])
    op.start()
    wait_for(lambda: [j["metadata"]["name"] for j in list_jobs(k8s_client, namespace)] == [new_run], 60,
             description="the old run's job retired")
    new_uid = list_jobs(k8s_client, namespace)[0]["metadata"]["uid"]
    done = wait_phase(k8s_client, namespace, "restarts", "Succeeded", op=op)
    assert list_jobs(k8s_client, namespace)[0]["metadata"]["uid"] == new_uid
    assert [c.metadata.name for c in list_configmaps(k8s_client, namespace, "restarts")] == [new_run]
    assert [r["id"] for r in done["status"]["previousRuns"]] == [run_id_of(manifest, namespace)]


def test_deleting_the_experiment_garbage_collects_configmap_job_and_pods(
    cluster: Any, k8s_client: Any, namespace: str, gpu_pool: str, start_operator: Any
) -> None:
    op = start_operator([namespace])
    manifest = e2e_manifest("doomed", nodes=2, pool=gpu_pool, duration="300s")
    kubectl_apply(cluster, namespace, manifest)
    wait_phase(k8s_client, namespace, "doomed", "Running", op=op)
    assert len(list_pods(k8s_client, namespace, f"{GROUP}/experiment=doomed")) == 2
    cluster.kubectl("delete", "dmx", "doomed", "-n", namespace, "--wait=true", "--timeout=60s")

    def all_gone() -> bool:
        return not (list_jobs(k8s_client, namespace) or list_configmaps(k8s_client, namespace, "doomed")
                    or list_pods(k8s_client, namespace, f"{GROUP}/experiment=doomed"))

    wait_for(all_gone, 90, description="ConfigMap, PyTorchJob and pods garbage-collected")


def test_editing_the_mixture_starts_a_new_run_and_retires_the_old(
    cluster: Any, k8s_client: Any, namespace: str, gpu_pool: str, start_operator: Any
) -> None:
    op = start_operator([namespace])
    first = e2e_manifest("edited", pool=gpu_pool, duration="300s")
    kubectl_apply(cluster, namespace, first)
    wait_phase(k8s_client, namespace, "edited", "Running", op=op)
    old = run_name_of(first, namespace)
    second = e2e_manifest("edited", pool=gpu_pool, duration="3s", weights=(1.0, 3.0))
    new = run_name_of(second, namespace)
    assert new != old
    kubectl_apply(cluster, namespace, second)
    wait_for(lambda: [j["metadata"]["name"] for j in list_jobs(k8s_client, namespace)] == [new], 60,
             description="only the new run's job")
    wait_for(lambda: [c.metadata.name for c in list_configmaps(k8s_client, namespace, "edited")] == [new], 60,
             description="only the new run's ConfigMap")
    wait_for(lambda: not job_pods(k8s_client, namespace, old), 60, description="the old run's pods gone")
    exp = wait_phase(k8s_client, namespace, "edited", "Succeeded", op=op)
    capture("succeeded-after-edit", exp)
    status = exp["status"]
    assert status["observedGeneration"] == 2
    assert status["run"]["job"] == new
    assert [m["share"] for m in status["mixture"]] == [0.25, 0.75]
    (previous,) = status["previousRuns"]
    assert (previous["job"], previous["phase"], previous["reason"]) == (old, "Running", "Superseded")
    for reason in ("RunStarted", "RunRetired"):
        assert posted_events(k8s_client, namespace, "edited", reason), reason


def test_suspend_removes_the_pods_and_resume_brings_them_back(
    cluster: Any, k8s_client: Any, namespace: str, gpu_pool: str, start_operator: Any
) -> None:
    op = start_operator([namespace])
    manifest = e2e_manifest("pausable", nodes=2, pool=gpu_pool, duration="300s")
    job = run_name_of(manifest, namespace)
    kubectl_apply(cluster, namespace, manifest)
    wait_phase(k8s_client, namespace, "pausable", "Running", op=op)
    assert len(job_pods(k8s_client, namespace, job)) == 2
    manifest["spec"]["suspend"] = True
    kubectl_apply(cluster, namespace, manifest)
    exp = wait_phase(k8s_client, namespace, "pausable", "Suspended", op=op)
    assert condition(exp, "Suspended")["reason"] == "Suspended"
    wait_for(lambda: not job_pods(k8s_client, namespace, job), 60, description="pods removed")
    capture("suspended", get_experiment(k8s_client, namespace, "pausable"))
    manifest["spec"]["suspend"] = False
    kubectl_apply(cluster, namespace, manifest)
    exp = wait_phase(k8s_client, namespace, "pausable", "Running", op=op)
    wait_for(lambda: len(job_pods(k8s_client, namespace, job)) == 2, 60, description="pods back")
    assert [j["metadata"]["name"] for j in list_jobs(k8s_client, namespace)] == [job], "the same run"
    assert condition(exp, "Suspended")["status"] == "False"


def test_reapplying_an_unchanged_manifest_after_the_run_settles_changes_nothing(
    cluster: Any, k8s_client: Any, namespace: str, gpu_pool: str, start_operator: Any, tmp_path: Path
) -> None:
    op = start_operator([namespace], resync_seconds=1)
    manifest = e2e_manifest("settled", pool=gpu_pool, duration="2s")
    path = tmp_path / "settled.yaml"
    path.write_text(yaml.safe_dump(manifest))
    cluster.kubectl("apply", "-n", namespace, "-f", str(path))
    settled = wait_phase(k8s_client, namespace, "settled", "Succeeded", op=op)
    time.sleep(2)  # let the last echoes of the status writes pass
    before = get_experiment(k8s_client, namespace, "settled")
    job_rv = list_jobs(k8s_client, namespace)[0]["metadata"]["resourceVersion"]
    out = cluster.kubectl("apply", "-n", namespace, "-f", str(path)).stdout
    assert "unchanged" in out
    reconciles = _reconcile_count(op.metrics())
    wait_for(lambda: _reconcile_count(op.metrics()) >= reconciles + 3, 30, description="three more reconciles")
    after = get_experiment(k8s_client, namespace, "settled")
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert after["status"] == settled["status"]
    assert list_jobs(k8s_client, namespace)[0]["metadata"]["resourceVersion"] == job_rv


def _reconcile_count(metrics: str) -> float:
    match = re.search(r"^datamix_operator_reconcile_duration_seconds_count (\S+)$", metrics, re.M)
    return float(match.group(1)) if match else 0.0


def test_an_operator_watching_one_namespace_ignores_another(
    cluster: Any, k8s_client: Any, namespace: str, gpu_pool: str, start_operator: Any
) -> None:
    other = create_namespace(k8s_client, "t-unwatched")
    try:
        op = start_operator([namespace], resync_seconds=1)
        kubectl_apply(cluster, namespace, e2e_manifest("watched", pool=gpu_pool, duration="300s"))
        kubectl_apply(cluster, other, e2e_manifest("ignored", pool=gpu_pool, duration="300s"))
        wait_phase(k8s_client, namespace, "watched", "Running", op=op)
        reconciles = _reconcile_count(op.metrics())
        wait_for(lambda: _reconcile_count(op.metrics()) >= reconciles + 3, 30, description="resyncs")
        assert "status" not in get_experiment(k8s_client, other, "ignored")
        assert list_jobs(k8s_client, other) == []
        assert list_configmaps(k8s_client, other, "ignored") == []
    finally:
        delete_namespace(k8s_client, other, wait_pods=True)


def test_the_metrics_endpoint_serves_the_operators_metrics(
    cluster: Any, k8s_client: Any, namespace: str, gpu_pool: str, start_operator: Any
) -> None:
    op = start_operator([namespace])
    kubectl_apply(cluster, namespace, e2e_manifest("counted", pool=gpu_pool, duration="2s"))
    kubectl_apply(cluster, namespace, e2e_manifest("counted-fail", pool=gpu_pool, duration="2s", exit_code=2,
                                                   result=False))
    wait_phase(k8s_client, namespace, "counted", "Succeeded", op=op)
    wait_phase(k8s_client, namespace, "counted-fail", "Failed", op=op)
    metrics = op.metrics()
    expected = {
        'datamix_operator_experiments{phase="Succeeded"}': 1.0,
        'datamix_operator_experiments{phase="Failed"}': 1.0,
        'datamix_operator_experiments{phase="Running"}': 0.0,
        "datamix_operator_runs_created_total": 2.0,
        "datamix_operator_runs_succeeded_total": 1.0,
        "datamix_operator_runs_failed_total": 1.0,
    }
    for series, value in expected.items():
        assert f"{series} {value}" in metrics, (series, metrics)
    assert re.search(r"^datamix_operator_reconcile_errors_total \d", metrics, re.M)
    assert _reconcile_count(metrics) > 0
    assert 'datamix_operator_reconcile_duration_seconds_bucket{le="0.1"}' in metrics


def test_json_logs_and_the_liveness_endpoint(
    cluster: Any, k8s_client: Any, namespace: str, gpu_pool: str, start_operator: Any
) -> None:
    op = start_operator([namespace], extra_args=["--log-format", "json"])
    kubectl_apply(cluster, namespace, e2e_manifest("logged", pool=gpu_pool, duration="1s"))
    wait_phase(k8s_client, namespace, "logged", "Succeeded", op=op)
    assert http_get(f"http://127.0.0.1:{op.liveness_port}/healthz")[0] == 200
    lines = [line for line in op.log_path.read_text().splitlines() if line and not line.startswith("###")]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert any("created PyTorchJob" in r.get("message", "") for r in records), records
