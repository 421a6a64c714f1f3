"""The reconciler's watch cache against an in-memory API server (FakeKube): a reconciliation a
watch event asks for reads the experiment and its job from what the watch delivered, not with a
GET, but only once the watch has delivered the echo of the operator's own last write."""

from __future__ import annotations

import copy
from typing import Any

from datamix_operator.metrics import Metrics
from datamix_operator.reconcile import Reconciler
from operator_fakes import Driven, FakeKube, manifest
from prometheus_client import CollectorRegistry


def make() -> tuple[FakeKube, Driven]:
    kube = FakeKube()
    return kube, Driven(Reconciler(kube, trainer_image="trainer:test", metrics=Metrics(CollectorRegistry())))


def echo_experiment(kube: FakeKube, rec: Driven, name: str = "mix-a") -> None:
    """The watch delivers the experiment as it is now."""
    body = kube.experiment(name)
    rec.on_experiment("ns", name, body["metadata"]["resourceVersion"], body=body)


def calls(kube: FakeKube) -> list[str]:
    return [c for c, _ in kube.calls]


def created(kube: FakeKube, rec: Driven) -> dict[str, Any]:
    """A new experiment through its watch event; its job's ADDED event and the status echo delivered."""
    body = kube.apply(manifest())
    rec.on_experiment("ns", "mix-a", body["metadata"]["resourceVersion"], body=body)
    echo_experiment(kube, rec)
    (job,) = kube.jobs()
    rec.on_job("ns", job)
    return job


def test_a_job_event_is_reconciled_from_the_watch_cache_without_a_get() -> None:
    kube, rec = make()
    job = created(kube, rec)
    kube.calls.clear()
    kube.set_job_conditions(job["metadata"]["name"], "Created", "Running", startTime="2026-01-01T01:00:00Z")
    rec.on_job("ns", kube.jobs()[0])
    assert calls(kube) == ["patch_status"]
    assert kube.experiment()["status"]["phase"] == "Running"


def test_before_the_echo_of_its_own_write_arrives_the_experiment_is_read_with_a_get() -> None:
    kube, rec = make()
    job = created(kube, rec)
    kube.set_job_conditions(job["metadata"]["name"], "Created", "Running", startTime="2026-01-01T01:00:00Z")
    rec.on_job("ns", kube.jobs()[0])  # writes the status: the cached experiment is behind now
    kube.calls.clear()
    kube.set_job_conditions(job["metadata"]["name"], "Created", "Running", startTime="2026-01-01T01:00:00Z",
                            replicaStatuses={"Master": {"active": 1}})
    rec.on_job("ns", kube.jobs()[0])
    assert calls(kube) == ["get_experiment"], "the cached body predates our status write"
    echo_experiment(kube, rec)
    kube.calls.clear()
    kube.set_job_conditions(job["metadata"]["name"], "Created", "Running", startTime="2026-01-01T01:00:00Z",
                            replicaStatuses={"Master": {"active": 2}})
    rec.on_job("ns", kube.jobs()[0])
    assert calls(kube) == []


def test_an_event_older_than_our_write_does_not_make_the_cache_current() -> None:
    kube, rec = make()
    body = copy.deepcopy(kube.apply(manifest()))
    rec.on_experiment("ns", "mix-a", body["metadata"]["resourceVersion"], body=body)  # writes the status
    edited = copy.deepcopy(kube.experiment())
    edited["metadata"]["labels"] = {"team": "a"}  # someone else's write, delivered before our echo
    edited["metadata"]["resourceVersion"] = "0"
    kube.calls.clear()
    rec.on_experiment("ns", "mix-a", "0", body=edited)
    assert calls(kube)[0] == "get_experiment", "the event predates our write"


def test_a_job_deleted_by_hand_is_created_again_not_read_from_the_cache() -> None:
    kube, rec = make()
    job = created(kube, rec)
    kube.set_job_conditions(job["metadata"]["name"], "Created", "Running", startTime="2026-01-01T01:00:00Z")
    rec.on_job("ns", kube.jobs()[0])
    echo_experiment(kube, rec)
    deleted = kube.jobs()[0]
    kube.delete_job("ns", deleted["metadata"]["name"])
    kube.calls.clear()
    rec.on_job("ns", deleted, deleted=True)
    assert "get_job" in calls(kube) and "create_job" in calls(kube)
    (again,) = kube.jobs()
    assert again["metadata"]["uid"] != deleted["metadata"]["uid"]


def test_a_new_leader_starts_without_the_cache() -> None:
    kube, rec = make()
    job = created(kube, rec)
    rec.reconciler.reset()
    kube.calls.clear()
    kube.set_job_conditions(job["metadata"]["name"], "Created", "Running", startTime="2026-01-01T01:00:00Z")
    rec.controller.enqueue("ns", "mix-a")
    rec.drain()
    assert calls(kube)[0] == "get_experiment"


def test_a_burst_of_new_experiments_gets_every_job_before_any_status_write() -> None:
    kube, rec = make()
    for name in ("a", "b", "c"):
        body = kube.apply(manifest(name))
        rec.controller.submit(rec.reconciler.on_experiment("ns", name, body["metadata"]["resourceVersion"], body=body))
    rec.drain()
    order = [c for c in calls(kube) if c in ("create_job", "patch_status")]
    assert order == ["create_job"] * 3 + ["patch_status"] * 3
    assert "get_job" not in calls(kube) and "get_experiment" not in calls(kube), "the follow-up reads nothing"
    assert [e["reason"] for e in kube.events] == ["JobCreated"] * 3


def test_the_cached_experiment_is_a_private_copy_without_managed_fields() -> None:
    kube, rec = make()
    body = copy.deepcopy(kube.apply(manifest()))
    body["metadata"]["managedFields"] = [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}]
    rec.reconciler.on_experiment("ns", "mix-a", body["metadata"]["resourceVersion"], body=body)
    body["spec"]["training"] = {"trainSteps": 1}  # the event's body changed afterwards: not the cache
    first = rec.reconciler._watched("dmx", "ns", "mix-a")
    second = rec.reconciler._watched("dmx", "ns", "mix-a")
    assert first is not None
    assert "managedFields" not in first["metadata"]
    assert first["spec"].get("training") != {"trainSteps": 1}
    assert first == second
    assert first is not second, "each reader gets its own copy"
