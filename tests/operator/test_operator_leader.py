"""Leader election (datamix_operator/leader.py) against an in-memory Lease store with the API
server's optimistic concurrency (resourceVersion, 409 on a stale update) and a hand-driven clock.
The same protocol on the real API server: tests/operator/test_operator_reliability_e2e.py."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from datamix_operator.kube import AlreadyExists, KubeError, NotLeader
from datamix_operator.leader import LeaderElector, LeaseSettings

NS, NAME = "ops", "datamix-operator"


class Leases:
    """What the API server does with Leases, in memory; `down` makes every call fail."""

    def __init__(self) -> None:
        self.obj: dict[str, Any] | None = None
        self.version = 0
        self.down = False
        self.writes = 0

    def _check(self) -> None:
        if self.down:
            raise KubeError(0, "API server unreachable")

    def get_lease(self, namespace: str, name: str, timeout: float) -> dict[str, Any] | None:
        self._check()
        return copy.deepcopy(self.obj)

    def create_lease(self, namespace: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        self._check()
        if self.obj is not None:
            raise AlreadyExists(409, "exists")
        return self._store(body)

    def replace_lease(self, namespace: str, name: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        self._check()
        assert self.obj is not None
        if body["metadata"].get("resourceVersion") != self.obj["metadata"]["resourceVersion"]:
            raise KubeError(409, "the object has been modified")
        return self._store(body)

    def _store(self, body: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        self.writes += 1
        self.obj = copy.deepcopy(body)
        self.obj["metadata"]["resourceVersion"] = str(self.version)
        return copy.deepcopy(self.obj)

    @property
    def holder(self) -> str:
        return str(((self.obj or {}).get("spec") or {}).get("holderIdentity") or "")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def candidate(store: Leases, clock: Clock, identity: str, events: list[str] | None = None) -> LeaderElector:
    log = events if events is not None else []
    return LeaderElector(
        store, LeaseSettings(NS, NAME, identity, lease_duration=15, renew_deadline=10, retry_period=2),
        on_started_leading=lambda: log.append(f"{identity} started"),
        on_stopped_leading=lambda: log.append(f"{identity} stopped"),
        clock=clock,
    )


def test_the_first_candidate_creates_the_lease_and_leads_the_second_stands_by() -> None:
    store, clock, events = Leases(), Clock(), []
    a, b = candidate(store, clock, "a", events), candidate(store, clock, "b", events)
    assert a.step() is True
    assert b.step() is False
    assert store.holder == "a"
    assert a.is_leader()
    assert not b.is_leader()
    assert events == ["a started"]
    assert store.obj is not None
    assert store.obj["spec"]["leaseDurationSeconds"] == 15


def test_a_standby_takes_over_only_after_a_whole_lease_duration_without_renewal() -> None:
    store, clock, events = Leases(), Clock(), []
    a, b = candidate(store, clock, "a", events), candidate(store, clock, "b", events)
    a.step()
    b.step()  # b sees a's record now
    clock.now += 14.9
    assert b.step() is False, "a's lease has not expired on b's clock yet"
    clock.now += 0.2
    assert b.step() is True
    assert store.holder == "b"
    assert store.obj is not None
    assert store.obj["spec"]["leaseTransitions"] == 1
    assert a.remaining() <= 0, "a stopped at its renew deadline, 5 s before b could take over"
    assert a.step() is False
    # a's fence closed by its clock alone; its next attempt sees b and says so
    assert events == ["a started", "b started", "a stopped"]


def test_renewals_keep_the_standby_out() -> None:
    store, clock = Leases(), Clock()
    a, b = candidate(store, clock, "a"), candidate(store, clock, "b")
    a.step()
    for _ in range(30):
        clock.now += 2
        assert a.step() is True
        assert b.step() is False
    assert store.holder == "a"


def test_a_leader_that_cannot_renew_stops_acting_at_its_renew_deadline() -> None:
    store, clock, events = Leases(), Clock(), []
    a = candidate(store, clock, "a", events)
    a.step()
    store.down = True
    clock.now += 9.9
    assert a.step() is True, "still within the renew deadline"
    assert a.remaining() == pytest.approx(0.1)
    clock.now += 0.2
    assert a.step() is False
    assert a.remaining() <= 0
    assert events == ["a started", "a stopped"]
    store.down = False
    clock.now += 1
    assert a.step() is True, "its own record: it may renew it once the API server is back"
    assert events == ["a started", "a stopped", "a started"]


def test_a_leader_that_sees_another_holder_stops_at_once() -> None:
    store, clock, events = Leases(), Clock(), []
    a = candidate(store, clock, "a", events)
    a.step()
    assert store.obj is not None
    store.obj["spec"]["holderIdentity"] = "intruder"  # e.g. a took too long and lost it
    store.version += 1
    store.obj["metadata"]["resourceVersion"] = str(store.version)
    assert a.step() is False
    assert not a.is_leader()
    assert events == ["a started", "a stopped"]


def test_a_concurrent_update_decides_nothing() -> None:
    store, clock = Leases(), Clock()
    a, b = candidate(store, clock, "a"), candidate(store, clock, "b")
    a.step()
    b.step()
    clock.now += 20  # a is gone; b takes over, but a write sneaks in between b's read and update
    real_get = store.get_lease

    def racing_get(namespace: str, name: str, timeout: float) -> dict[str, Any] | None:
        seen = real_get(namespace, name, timeout)
        assert store.obj is not None
        store._store(store.obj)  # another writer bumps the resourceVersion
        return seen

    store.get_lease = racing_get  # type: ignore[method-assign]
    assert b.step() is False
    assert store.holder == "a"


def test_release_hands_over_at_once() -> None:
    store, clock = Leases(), Clock()
    a, b = candidate(store, clock, "a"), candidate(store, clock, "b")
    a.step()
    b.step()
    a.release()
    assert not a.is_leader()
    assert store.holder == ""
    clock.now += 2
    assert b.step() is True


def test_a_standby_does_not_release() -> None:
    store, clock = Leases(), Clock()
    a, b = candidate(store, clock, "a"), candidate(store, clock, "b")
    a.step()
    b.step()
    writes = store.writes
    b.release()
    assert store.writes == writes
    assert store.holder == "a"


@pytest.mark.parametrize(
    ("duration", "deadline", "retry", "message"),
    [
        (10, 10, 2, "lease-duration must be longer"),
        (15, 2, 2, "renew-deadline must be longer than 1.2 x"),
    ],
)
def test_inconsistent_timing_is_refused(duration: float, deadline: float, retry: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LeaseSettings(NS, NAME, "a", duration, deadline, retry).check()


def test_the_fence_refuses_writes_of_a_non_leader_and_lets_reads_through() -> None:
    from datamix_operator.kube import ClientKube
    from kubernetes import client

    cfg = client.Configuration()
    cfg.host = "https://127.0.0.1:9"  # nothing listens: a request that is sent fails to connect
    kube = ClientKube(cfg, fence=lambda: 0.0)
    with pytest.raises(NotLeader, match="not sent"):
        kube.create_configmap("ns", {"metadata": {"name": "x"}})
    with pytest.raises(KubeError, match="unreachable") as read:
        kube.get_configmap("ns", "x")
    assert not isinstance(read.value, NotLeader)
