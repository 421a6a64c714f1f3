"""The reconciler against an in-memory API server (FakeKube): create-or-get, status only on
change, new runs and retirement, suspend, stalls, retries."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from datamix_operator.metrics import Metrics
from datamix_operator.reconcile import Reconciler
from operator_fakes import BrokenKube, Driven, FakeKube, manifest, result_message
from prometheus_client import CollectorRegistry


class Clock:
    def __init__(self) -> None:
        self.t = 0

    def __call__(self) -> str:
        self.t += 1
        return f"2026-01-01T00:{self.t // 60:02d}:{self.t % 60:02d}Z"


def make(kube: FakeKube | None = None) -> tuple[FakeKube, Driven, list[tuple[str, str, float]]]:
    """The reconciler behind the real controller and work queue; `scheduled`: the retries asked for."""
    kube = kube or FakeKube()
    rec = Driven(Reconciler(kube, trainer_image="trainer:test", metrics=Metrics(CollectorRegistry()), clock=Clock()))
    return kube, rec, rec.queue.scheduled


def count(kube: FakeKube, call: str) -> int:
    return sum(1 for c, _ in kube.calls if c == call)


def sample(metrics: Metrics, name: str, labels: dict[str, str] | None = None) -> float:
    for metric in [metrics.runs_created, metrics.runs_succeeded, metrics.runs_failed, metrics.reconcile_errors,
                   metrics.experiments]:
        for fam in metric.collect():
            for s in fam.samples:
                if s.name == name and (labels is None or s.labels == labels):
                    return float(s.value)
    raise KeyError(name)


def test_first_reconcile_creates_one_configmap_one_job_and_status() -> None:
    kube, rec, _ = make()
    kube.apply(manifest())
    rec.reconcile("ns", "mix-a")
    (job,), (cm,) = kube.jobs(), kube.configmaps()
    assert job["metadata"]["name"] == cm["metadata"]["name"]
    exp = kube.experiment()
    assert job["metadata"]["ownerReferences"][0]["uid"] == exp["metadata"]["uid"]
    status = exp["status"]
    assert status["phase"] == "Pending" and status["run"]["job"] == job["metadata"]["name"]
    assert {c["type"]: c["status"] for c in status["conditions"]}["Created"] == "True"
    assert [e["reason"] for e in kube.events] == ["JobCreated"]
    assert sample(rec.metrics, "datamix_operator_runs_created_total") == 1
    assert sample(rec.metrics, "datamix_operator_experiments", {"phase": "Pending"}) == 1


def test_reconciling_again_writes_nothing() -> None:
    kube, rec, _ = make()
    kube.apply(manifest())
    rec.reconcile("ns", "mix-a")
    rv = kube.experiment()["metadata"]["resourceVersion"]
    kube.calls.clear()
    for _ in range(3):
        rec.reconcile("ns", "mix-a")
    assert kube.experiment()["metadata"]["resourceVersion"] == rv
    assert [c for c, _ in kube.calls] == ["get_experiment", "get_job"] * 3, "a GET, not a LIST, of the job"


def test_echo_of_our_own_status_write_is_skipped() -> None:
    kube, rec, _ = make()
    kube.apply(manifest())
    rec.reconcile("ns", "mix-a")
    kube.calls.clear()
    rec.on_experiment("ns", "mix-a", kube.experiment()["metadata"]["resourceVersion"])
    assert kube.calls == []


def test_job_created_by_an_earlier_operator_is_adopted_not_duplicated() -> None:
    """The operator died after creating the job but before anything else (the list missed it)."""
    kube, rec, _ = make()
    kube.apply(manifest())
    rec.reconcile("ns", "mix-a")
    real_list = kube.list_jobs
    kube.list_jobs = lambda ns, sel: []  # type: ignore[method-assign]
    _, rec2, _ = make(kube)
    rec2.reconcile("ns", "mix-a")
    kube.list_jobs = real_list  # type: ignore[method-assign]
    assert len(kube.jobs()) == 1 and count(kube, "create_job") == 2  # the second got 409 and adopted it
    assert kube.experiment()["status"]["phase"] == "Pending"


def test_job_of_another_owner_with_the_run_name_stalls_and_retries() -> None:
    kube, rec, scheduled = make()
    kube.apply(manifest())
    rec.reconcile("ns", "mix-a")
    # the experiment is deleted and re-created; the old job is still there (garbage collector is slow)
    del kube.objects[("dmx", "ns", "mix-a")]
    kube.apply(manifest())
    rec.reconcile("ns", "mix-a")
    status = kube.experiment()["status"]
    stalled = {c["type"]: c for c in status["conditions"]}["Stalled"]
    assert stalled["status"] == "True" and stalled["reason"] == "ChildConflict"
    assert scheduled and scheduled[-1][2] == 10.0
    assert len(kube.jobs()) == 1


def test_follows_the_job_to_success_with_the_result() -> None:
    kube, rec, _ = make()
    kube.apply(manifest())
    rec.reconcile("ns", "mix-a")
    (job,) = kube.jobs()
    name = job["metadata"]["name"]
    run = job["metadata"]["labels"]["datamix.io/run"]
    kube.set_job_conditions(name, "Created", "Running", startTime="2026-01-01T01:00:00Z")
    rec.on_job("ns", kube.jobs()[0])
    assert kube.experiment()["status"]["phase"] == "Running"
    kube.add_master_pod(name, message=result_message(run, loss=2.25, samples=1600))
    kube.set_job_conditions(name, "Created", "Succeeded", startTime="2026-01-01T01:00:00Z",
                            completionTime="2026-01-01T02:00:00Z")
    rec.on_job("ns", kube.jobs()[0])
    status = kube.experiment()["status"]
    assert status["phase"] == "Succeeded" and status["loss"] == "2.25"
    assert status["progress"]["percent"] == 100
    assert status["result"]["datasets"][1] == {"name": "code", "tokens": 500, "share": 500 / 1500}
    assert [e["reason"] for e in kube.events] == ["JobCreated", "JobRunning", "JobSucceeded"]
    assert sample(rec.metrics, "datamix_operator_runs_succeeded_total") == 1
    # the master pod is read once; later reconciles neither read it again nor write anything
    kube.calls.clear()
    rec.reconcile("ns", "mix-a")
    assert count(kube, "list_pods") == 0 and count(kube, "patch_status") == 0
    # a restarted operator reads the pod once more and finds the same status
    _, rec2, _ = make(kube)
    rec2.reconcile("ns", "mix-a")
    assert count(kube, "list_pods") == 1 and count(kube, "patch_status") == 0


def test_failure_path() -> None:
    kube, rec, _ = make()
    kube.apply(manifest())
    rec.reconcile("ns", "mix-a")
    name = kube.jobs()[0]["metadata"]["name"]
    kube.add_master_pod(name, exit_code=1)
    kube.set_job_conditions(name, "Created", "Failed",
                            message="PyTorchJob ns/x is failed because 1 Master replica(s) failed.")
    rec.reconcile("ns", "mix-a")
    status = kube.experiment()["status"]
    failed = {c["type"]: c for c in status["conditions"]}["Failed"]
    assert status["phase"] == "Failed" and failed["reason"] == "JobFailed"
    assert "1 Master replica(s) failed" in failed["message"] and "code 1" in failed["message"]
    assert sample(rec.metrics, "datamix_operator_runs_failed_total") == 1
    assert kube.events[-1]["type"] == "Warning"


def test_mixture_edit_starts_a_new_run_and_retires_the_old_after_recording_it() -> None:
    kube, rec, _ = make()
    kube.apply(manifest())
    rec.reconcile("ns", "mix-a")
    old = kube.jobs()[0]["metadata"]["name"]
    old_run = kube.jobs()[0]["metadata"]["labels"]["datamix.io/run"]
    kube.add_master_pod(old, message=result_message(old_run, loss=3.0))
    kube.set_job_conditions(old, "Created", "Succeeded")
    rec.reconcile("ns", "mix-a")

    edited = manifest()
    edited["spec"]["datasets"]["mixture"][1]["weight"] = 3
    kube.apply(edited)
    order: list[str] = []
    real_patch, real_delete = kube.patch_experiment_status, kube.delete_job

    def patch(ns: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        order.append("status")
        return real_patch(ns, name, body)

    def delete(ns: str, name: str) -> None:
        order.append(f"delete {name}")
        real_delete(ns, name)

    kube.patch_experiment_status = patch  # type: ignore[method-assign]
    kube.delete_job = delete  # type: ignore[method-assign]
    rec.reconcile("ns", "mix-a")
    assert order == ["status", f"delete {old}"], "the old run is recorded before its job is deleted"
    (job,) = kube.jobs()
    (cm,) = kube.configmaps()
    assert job["metadata"]["name"] != old and cm["metadata"]["name"] == job["metadata"]["name"]
    status = kube.experiment()["status"]
    assert status["observedGeneration"] == 2 and status["run"]["job"] == job["metadata"]["name"]
    assert status["previousRuns"] == [{"id": old_run, "configMap": old, "job": old, "phase": "Succeeded",
                                       "reason": "JobSucceeded", "trainLoss": 3.0, "meanValidationLoss": 2.6}]
    assert "result" not in status and status["phase"] == "Pending"
    reasons = [e["reason"] for e in kube.events]
    assert "RunStarted" in reasons and "RunRetired" in reasons


def test_retiring_a_running_run_marks_it_superseded() -> None:
    kube, rec, _ = make()
    kube.apply(manifest())
    rec.reconcile("ns", "mix-a")
    old = kube.jobs()[0]["metadata"]["name"]
    kube.set_job_conditions(old, "Created", "Running")
    edited = manifest()
    edited["spec"]["training"]["trainSamples"] = 3200
    kube.apply(edited)
    rec.reconcile("ns", "mix-a")
    (prev,) = kube.experiment()["status"]["previousRuns"]
    assert prev["phase"] == "Running" and prev["reason"] == "Superseded"
    assert kube.experiment()["status"]["progress"] == {"targetSamples": 3200}


def test_suspend_and_resume() -> None:
    kube, rec, _ = make()
    kube.apply(manifest())
    rec.reconcile("ns", "mix-a")
    name = kube.jobs()[0]["metadata"]["name"]
    kube.apply(manifest(suspend=True))
    rec.reconcile("ns", "mix-a")
    job = kube.jobs()[0]
    assert job["metadata"]["name"] == name, "suspending keeps the run"
    assert job["spec"]["runPolicy"]["suspend"] is True
    assert job["metadata"]["annotations"]["datamix.io/suspend"] == "true"
    kube.set_job_conditions(name, "Created", "Suspended")
    rec.reconcile("ns", "mix-a")
    assert kube.experiment()["status"]["phase"] == "Suspended"
    kube.apply(manifest(suspend=False))
    rec.reconcile("ns", "mix-a")
    assert kube.jobs()[0]["spec"]["runPolicy"]["suspend"] is False
    kube.set_job_conditions(name, "Created", "Running")
    rec.reconcile("ns", "mix-a")
    assert kube.experiment()["status"]["phase"] == "Running"
    assert "Resumed" in [e["reason"] for e in kube.events]


def test_with_a_kueue_queue_the_operator_does_not_unsuspend() -> None:
    kube, rec, _ = make()
    m = manifest()
    m["spec"]["resources"]["queueName"] = "team-a"
    kube.apply(m)
    rec.reconcile("ns", "mix-a")
    name = kube.jobs()[0]["metadata"]["name"]
    assert kube.jobs()[0]["spec"]["runPolicy"]["suspend"] is True
    kube.set_job_conditions(name, "Created", "Suspended")
    rec.reconcile("ns", "mix-a")
    assert kube.experiment()["status"]["phase"] == "Pending"
    assert count(kube, "patch_job") == 0, "queued: Kueue unsuspends, not the operator"
    # Kueue admits it
    kube.objects[("job", "ns", name)]["spec"]["runPolicy"]["suspend"] = False
    kube.set_job_conditions(name, "Created", "Running")
    rec.reconcile("ns", "mix-a")
    assert count(kube, "patch_job") == 0
    # the user suspends: the operator sets suspend; on resume it leaves suspend to Kueue
    m["spec"]["suspend"] = True
    kube.apply(m)
    rec.reconcile("ns", "mix-a")
    assert kube.jobs()[0]["spec"]["runPolicy"]["suspend"] is True
    m["spec"]["suspend"] = False
    kube.apply(m)
    rec.reconcile("ns", "mix-a")
    job = kube.jobs()[0]
    assert job["spec"]["runPolicy"]["suspend"] is True
    assert job["metadata"]["annotations"]["datamix.io/suspend"] == "false"


def test_operator_only_invalid_input_stalls_with_invalid_spec() -> None:
    kube, rec, scheduled = make()
    kube.apply(manifest(model={"preset": "tiny", "overrides": {"numLayerz": 4}}))
    rec.reconcile("ns", "mix-a")
    assert kube.jobs() == [] and kube.configmaps() == []
    status = kube.experiment()["status"]
    stalled = {c["type"]: c for c in status["conditions"]}["Stalled"]
    assert stalled["status"] == "True" and stalled["reason"] == "InvalidSpec"
    assert "numLayerz" in stalled["message"]
    assert scheduled == [], "nothing to retry: the next spec edit triggers a reconcile"
    assert kube.events[-1]["reason"] == "InvalidSpec" and kube.events[-1]["type"] == "Warning"


def test_invalid_edit_keeps_following_the_last_valid_run() -> None:
    kube, rec, _ = make()
    kube.apply(manifest())
    rec.reconcile("ns", "mix-a")
    name = kube.jobs()[0]["metadata"]["name"]
    kube.apply(manifest(model={"preset": "tiny", "overrides": {"numLayerz": 4}}))
    rec.reconcile("ns", "mix-a")
    kube.set_job_conditions(name, "Created", "Running")
    rec.reconcile("ns", "mix-a")
    status = kube.experiment()["status"]
    assert [j["metadata"]["name"] for j in kube.jobs()] == [name], "no new run, the old is not retired"
    assert status["phase"] == "Running" and status["run"]["job"] == name
    assert {c["type"]: c["status"] for c in status["conditions"]}["Stalled"] == "True"


def test_missing_crd_stalls_and_retries_slowly_then_recovers() -> None:
    kube, rec, scheduled = make()
    kube.crd_missing = True
    kube.apply(manifest())
    rec.reconcile("ns", "mix-a")
    stalled = {c["type"]: c for c in kube.experiment()["status"]["conditions"]}["Stalled"]
    assert stalled["reason"] == "PyTorchJobCRDMissing" and stalled["status"] == "True"
    assert scheduled == [("ns", "mix-a", 30.0)]
    assert sample(rec.metrics, "datamix_operator_reconcile_errors_total") == 0, "a stall is not a crash"
    kube.crd_missing = False
    rec.reconcile("ns", "mix-a")
    assert len(kube.jobs()) == 1
    stalled = {c["type"]: c for c in kube.experiment()["status"]["conditions"]}["Stalled"]
    assert stalled["status"] == "False"


def test_api_errors_are_counted_and_retried_with_backoff() -> None:
    kube, rec, scheduled = make(BrokenKube())
    kube.apply(manifest())
    rec.reconcile("ns", "mix-a")
    rec.reconcile("ns", "mix-a")
    assert sample(rec.metrics, "datamix_operator_reconcile_errors_total") == 2
    first, second = (d for _, _, d in scheduled)
    assert 2.0 <= first < 2.2, "2 s plus up to 10 % jitter"
    assert 4.0 <= second < 4.4, "doubled"


def test_deleted_experiment_is_forgotten() -> None:
    kube, rec, _ = make()
    kube.apply(manifest())
    rec.reconcile("ns", "mix-a")
    del kube.objects[("dmx", "ns", "mix-a")]
    rec.on_experiment("ns", "mix-a", None, deleted=True)
    assert sample(rec.metrics, "datamix_operator_experiments", {"phase": "Pending"}) == 0


def test_experiment_being_deleted_is_left_to_the_garbage_collector() -> None:
    kube, rec, _ = make()
    kube.apply(manifest())
    kube.objects[("dmx", "ns", "mix-a")]["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    rec.reconcile("ns", "mix-a")
    assert kube.jobs() == [] and "status" not in kube.experiment()


@pytest.mark.parametrize("point", ["configmap-created", "job-created", "status-written", "run-recorded"])
def test_crash_points_are_known(point: str) -> None:
    from datamix_operator.reconcile import CRASH_POINTS

    assert point in CRASH_POINTS


def test_a_restarted_operator_retires_a_job_recorded_but_not_deleted() -> None:
    """The operator died between recording the old run and deleting its job (crash point
    run-recorded): the first reconcile of the next process lists the jobs and retires it."""
    kube, rec, _ = make()
    kube.apply(manifest())
    rec.reconcile("ns", "mix-a")
    old = kube.jobs()[0]["metadata"]["name"]
    edited = manifest()
    edited["spec"]["training"]["trainSamples"] = 3200
    kube.apply(edited)
    real_delete = kube.delete_job
    kube.delete_job = lambda ns, name: None  # type: ignore[method-assign]  # "crash" before deleting
    rec.reconcile("ns", "mix-a")
    kube.delete_job = real_delete  # type: ignore[method-assign]
    assert len(kube.jobs()) == 2
    rec.reconcile("ns", "mix-a")
    assert len(kube.jobs()) == 2, "the same process does not list again for an unchanged run"
    _, restarted, _ = make(kube)
    restarted.reconcile("ns", "mix-a")
    assert [j["metadata"]["name"] for j in kube.jobs()] != [old] and len(kube.jobs()) == 1
    assert kube.experiment()["status"]["previousRuns"][0]["job"] == old


def test_resync_lists_jobs_and_retires_orphans() -> None:
    kube, rec, _ = make()
    kube.apply(manifest())
    rec.reconcile("ns", "mix-a")
    orphan = copy.deepcopy(kube.jobs()[0])
    orphan["metadata"]["name"] = "mix-a-0rphan00"
    orphan["metadata"]["labels"]["datamix.io/run"] = "0rphan00"
    kube.objects[("job", "ns", "mix-a-0rphan00")] = orphan
    rec.reconcile("ns", "mix-a")
    assert len(kube.jobs()) == 2
    rec.reconcile("ns", "mix-a", full=True)
    assert len(kube.jobs()) == 1
    assert kube.experiment()["status"]["previousRuns"][0]["id"] == "0rphan00"


def test_a_new_experiment_gets_its_job_in_two_calls() -> None:
    kube, rec, _ = make()
    body = kube.apply(manifest())
    rec.on_experiment("ns", "mix-a", body["metadata"]["resourceVersion"], body=body)
    assert [c for c, _ in kube.calls] == ["create_configmap", "create_job", "patch_status"]
    # an event of an experiment with a status is read afresh
    kube.calls.clear()
    rec.on_experiment("ns", "mix-a", "stale", body=kube.experiment())
    assert kube.calls[0] == ("get_experiment", "mix-a")


def test_missing_crd_message_is_the_same_from_create_and_from_get() -> None:
    kube, rec, _ = make()
    kube.crd_missing = True
    body = kube.apply(manifest())
    rec.on_experiment("ns", "mix-a", None, body=body)  # the create path
    rv = kube.experiment()["metadata"]["resourceVersion"]
    rec.reconcile("ns", "mix-a")  # the GET path
    rec.reconcile("ns", "mix-a", full=True)  # the LIST path
    assert kube.experiment()["metadata"]["resourceVersion"] == rv


def test_a_forged_master_pod_does_not_set_the_result() -> None:
    kube, rec, _ = make()
    kube.apply(manifest())
    rec.reconcile("ns", "mix-a")
    (job,) = kube.jobs()
    name = job["metadata"]["name"]
    run = job["metadata"]["labels"]["datamix.io/run"]
    # a pod anyone could create, labelled as the master, newer than the real one, with a forged result
    kube.add_master_pod(name, message=result_message(run, loss=0.01))
    kube.add_master_pod(name, message=result_message(run, loss=0.001), owned=False, name="forged")
    kube.objects[("pod", "ns", "forged")]["metadata"]["creationTimestamp"] = "2026-01-02T00:00:00Z"
    kube.set_job_conditions(name, "Created", "Succeeded")
    rec.on_job("ns", kube.jobs()[0])
    status = kube.experiment()["status"]
    assert status["loss"] == "0.01"
    warnings = [e for e in kube.events if e["reason"] == "ForeignPodIgnored"]
    assert len(warnings) == 1
    assert "forged" in warnings[0]["message"]
