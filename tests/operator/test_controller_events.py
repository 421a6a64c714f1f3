"""The EventPoster's aggregation against an in-memory API server (FakeKube): the same event about
the same object within the window is counted on the existing Event (a PATCH), not posted again."""

from __future__ import annotations

from typing import Any

from datamix_operator.controller import EventPoster
from datamix_operator.kube import KubeError
from operator_fakes import FakeKube


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def event(reason: str = "CannotCreate", message: str = "the PyTorchJob CRD is missing", name: str = "mix-a",
          uid: str = "uid-a", at: str = "2026-01-01T00:00:00Z") -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"generateName": f"{name}.", "namespace": "ns"},
        "involvedObject": {"kind": "DataMixtureExperiment", "name": name, "namespace": "ns", "uid": uid},
        "type": "Warning", "reason": reason, "message": message,
        "firstTimestamp": at, "lastTimestamp": at, "count": 1,
    }


def poster(kube: FakeKube, window: float = 600.0, max_keys: int = 4096) -> tuple[EventPoster, Clock]:
    clock = Clock()
    return EventPoster(kube, window=window, max_keys=max_keys, clock=clock), clock


def post(p: EventPoster, *bodies: dict[str, Any]) -> None:
    for body in bodies:
        p.post("ns", body)
    p.flush()


def test_the_same_event_again_counts_on_the_existing_one() -> None:
    kube = FakeKube()
    p, clock = poster(kube)
    post(p, event(at="2026-01-01T00:00:00Z"))
    clock.t += 30
    post(p, event(at="2026-01-01T00:00:30Z"), event(at="2026-01-01T00:01:00Z"))
    (only,) = kube.events
    assert only["count"] == 3
    assert only["firstTimestamp"] == "2026-01-01T00:00:00Z"
    assert only["lastTimestamp"] == "2026-01-01T00:01:00Z"
    assert [c for c, _ in kube.calls] == ["patch_event", "patch_event"]


def test_another_reason_message_or_object_is_its_own_event() -> None:
    kube = FakeKube()
    p, _ = poster(kube)
    post(p, event(), event(reason="Other"), event(message="another message"), event(name="mix-b", uid="uid-b"))
    assert len(kube.events) == 4
    assert all(e["count"] == 1 for e in kube.events)


def test_after_the_window_a_new_event_is_posted() -> None:
    kube = FakeKube()
    p, clock = poster(kube, window=600)
    post(p, event())
    clock.t += 601
    post(p, event())
    assert [e["count"] for e in kube.events] == [1, 1]


def test_an_event_gone_from_the_server_is_posted_anew() -> None:
    kube = FakeKube()
    p, _ = poster(kube)
    post(p, event())
    kube.events.clear()  # the API server's TTL (an hour by default) removed it
    post(p, event())
    (again,) = kube.events
    assert again["count"] == 1


def test_without_permission_to_patch_each_posting_creates_an_event() -> None:
    class NoPatch(FakeKube):
        def patch_event(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
            raise KubeError(403, "events is forbidden: cannot patch")

    kube = NoPatch()
    p, _ = poster(kube)
    post(p, event(), event())
    assert [e["count"] for e in kube.events] == [1, 1]


def test_memory_is_bounded_by_max_keys() -> None:
    kube = FakeKube()
    p, _ = poster(kube, max_keys=2)
    post(p, event(reason="A"), event(reason="B"), event(reason="C"), event(reason="A"))
    assert [e["reason"] for e in kube.events] == ["A", "B", "C", "A"], "A was forgotten, posted anew"
    assert len(p._posted) == 2
