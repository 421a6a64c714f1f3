"""The resync pass against an in-memory API server (FakeKube): in steady state one LIST of
experiments and one of jobs per namespace, nothing per experiment, no write; a snapshot older than
what a watch delivered since is never acted on."""

from __future__ import annotations

from typing import Any

from datamix_operator.metrics import Metrics
from datamix_operator.reconcile import ALL_EXPERIMENTS_SELECTOR, Reconciler
from operator_fakes import Driven, FakeKube, manifest, result_message
from prometheus_client import CollectorRegistry


def make(kube: FakeKube | None = None) -> tuple[FakeKube, Driven]:
    kube = kube or FakeKube()
    rec = Driven(Reconciler(kube, trainer_image="trainer:test", metrics=Metrics(CollectorRegistry())))
    return kube, rec


def job_of(kube: FakeKube, experiment: str, namespace: str = "ns") -> dict[str, Any]:
    (job,) = [j for j in kube.jobs(namespace) if j["metadata"]["labels"]["datamix.io/experiment"] == experiment]
    return job


def versions(kube: FakeKube) -> dict[tuple[str, str, str], str]:
    return {key: obj["metadata"].get("resourceVersion", "") for key, obj in kube.objects.items()}


def a_varied_namespace(kube: FakeKube, rec: Driven) -> None:
    """Experiments in every state a steady cluster holds: pending, running, succeeded (master pod
    read), failed, succeeded with its master pod gone, and one whose spec turned invalid after a
    valid run."""
    for name in ("pending", "running", "succeeded", "failed", "podless", "invalid"):
        body = kube.apply(manifest(name))
        rec.on_experiment("ns", name, body["metadata"]["resourceVersion"], body=body)
    for name, conditions in (("running", ("Created", "Running")), ("succeeded", ("Created", "Succeeded")),
                             ("failed", ("Created", "Failed")), ("podless", ("Created", "Succeeded"))):
        job = job_of(kube, name)
        job_name, run = job["metadata"]["name"], job["metadata"]["labels"]["datamix.io/run"]
        if name == "succeeded":
            kube.add_master_pod(job_name, message=result_message(run))
        if name == "failed":
            kube.add_master_pod(job_name, exit_code=1)
        kube.set_job_conditions(job_name, *conditions, startTime="2026-01-01T01:00:00Z")
        rec.on_job("ns", job_of(kube, name))
    body = kube.apply(manifest("invalid", model={"preset": "tiny", "overrides": {"numLayerz": 4}}))
    rec.on_experiment("ns", "invalid", body["metadata"]["resourceVersion"], body=body)


def test_a_steady_resync_pass_lists_once_per_resource_and_reads_nothing_per_experiment() -> None:
    kube, rec = make()
    a_varied_namespace(kube, rec)
    phases = {o["metadata"]["name"]: o["status"]["phase"] for (k, _, _), o in kube.objects.items() if k == "dmx"}
    assert phases == {"pending": "Pending", "running": "Running", "succeeded": "Succeeded", "failed": "Failed",
                      "podless": "Succeeded", "invalid": "Pending"}
    rec.resync()  # the first pass may still read what this process has not seen (none here)
    before = versions(kube)
    kube.calls.clear()
    rec.resync()
    assert kube.calls == [("list_experiments", "ns"), ("list_jobs", ALL_EXPERIMENTS_SELECTOR)]
    assert versions(kube) == before, "a steady pass writes nothing"


def test_after_a_restart_the_second_pass_is_steady() -> None:
    kube, rec = make()
    a_varied_namespace(kube, rec)
    _, restarted = make(kube)
    kube.calls.clear()
    restarted.resync()
    first = [call for call, _ in kube.calls]
    # what a new process must read once: the finished runs' master pods, the invalid one's run spec
    assert first.count("list_pods") == 3
    assert first.count("get_configmap") == 1
    assert "get_experiment" not in first
    kube.calls.clear()
    restarted.resync()
    assert kube.calls == [("list_experiments", "ns"), ("list_jobs", ALL_EXPERIMENTS_SELECTOR)]


def test_a_master_pod_that_finishes_after_its_job_is_read_then() -> None:
    """The job reports Succeeded before the pod is seen: "no pod" is remembered (no read per pass)
    until the pod's own event."""
    kube, rec = make()
    body = kube.apply(manifest())
    rec.on_experiment("ns", "mix-a", body["metadata"]["resourceVersion"], body=body)
    job = kube.jobs()[0]
    kube.set_job_conditions(job["metadata"]["name"], "Created", "Succeeded")
    rec.on_job("ns", kube.jobs()[0])
    assert "result" not in kube.experiment()["status"]
    kube.calls.clear()
    rec.resync()
    assert [c for c, _ in kube.calls].count("list_pods") == 0
    kube.add_master_pod(job["metadata"]["name"], message=result_message(job["metadata"]["labels"]["datamix.io/run"]))
    pod = kube.objects[("pod", "ns", f"{job['metadata']['name']}-master-0")]
    pod["metadata"]["labels"]["datamix.io/experiment"] = "mix-a"
    rec.controller.submit(rec.reconciler.on_master_pod("ns", pod))
    rec.drain()
    assert kube.experiment()["status"]["loss"] == "2.5"


def test_a_snapshot_older_than_a_watch_event_is_not_acted_on() -> None:
    """The resync listed the experiment, then its spec was edited and the watch's event handled
    (a new run, the old job retired): the listed body and jobs are stale and must not bring the old
    run back."""
    kube, rec = make()
    body = kube.apply(manifest())
    rec.on_experiment("ns", "mix-a", body["metadata"]["resourceVersion"], body=body)
    listed = rec.reconciler.resync_requests("ns")
    edited = manifest()
    edited["spec"]["training"]["trainSamples"] = 3200
    body = kube.apply(edited)
    rec.on_experiment("ns", "mix-a", body["metadata"]["resourceVersion"], body=body)
    (new_job,) = kube.jobs()
    status = kube.experiment()["status"]
    assert status["observedGeneration"] == 2
    kube.calls.clear()
    for request in listed:
        rec.controller.submit(request)
    rec.drain()
    assert ("get_experiment", "mix-a") in kube.calls, "read afresh"
    assert kube.jobs() == [new_job]
    assert kube.experiment()["status"] == status


def test_a_snapshot_older_than_a_job_event_is_not_acted_on() -> None:
    """The job started running, the resync listed (the experiment still Pending), then the job's
    event was handled (status Running, one JobRunning event): the listed experiment is stale."""
    kube, rec = make()
    body = kube.apply(manifest())
    rec.on_experiment("ns", "mix-a", body["metadata"]["resourceVersion"], body=body)
    name = kube.jobs()[0]["metadata"]["name"]
    kube.set_job_conditions(name, "Created", "Running", startTime="2026-01-01T01:00:00Z")
    listed = rec.reconciler.resync_requests("ns")
    rec.on_job("ns", kube.jobs()[0])
    assert kube.experiment()["status"]["phase"] == "Running"
    kube.calls.clear()
    for request in listed:
        rec.controller.submit(request)
    rec.drain()
    assert ("patch_status", "mix-a") not in kube.calls
    assert [e["reason"] for e in kube.events].count("JobRunning") == 1


def test_all_namespaces_one_list_each_and_jobs_go_to_their_own_experiment() -> None:
    kube, rec = make()
    for namespace in ("a", "b"):
        body = kube.apply(manifest("same-name"), namespace=namespace)
        rec.on_experiment(namespace, "same-name", body["metadata"]["resourceVersion"], body=body)
    kube.calls.clear()
    requests = rec.reconciler.resync_requests(None)
    assert kube.calls == [("list_experiments", ""), ("list_jobs", ALL_EXPERIMENTS_SELECTOR)]
    for request in requests:
        assert request.snapshot is not None
        (job,) = request.snapshot.jobs or []
        assert job["metadata"]["namespace"] == request.namespace
    kube.calls.clear()
    rec.resync(None)
    assert [c for c, _ in kube.calls] == ["list_experiments", "list_jobs"]


def test_without_the_job_crd_the_pass_still_reconciles_each_experiment() -> None:
    kube, rec = make()
    body = kube.apply(manifest())
    rec.on_experiment("ns", "mix-a", body["metadata"]["resourceVersion"], body=body)
    kube.crd_missing = True
    kube.calls.clear()
    rec.resync()
    assert ("list_jobs", "app.kubernetes.io/managed-by=datamix-operator,datamix.io/experiment=mix-a") in kube.calls
    conditions = {c["type"]: c for c in kube.experiment()["status"]["conditions"]}
    assert conditions["Stalled"]["reason"] == "PyTorchJobCRDMissing"
