"""The work queue (controller-runtime's semantics) and the controller's workers."""

from __future__ import annotations

import threading
import time

from datamix_operator.controller import Controller
from datamix_operator.metrics import Metrics
from datamix_operator.reconcile import Reconciler
from datamix_operator.workqueue import ExponentialBackoff, WorkQueue
from operator_fakes import FakeKube, manifest
from prometheus_client import CollectorRegistry


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_adding_a_waiting_key_again_coalesces() -> None:
    q: WorkQueue[str] = WorkQueue()
    for _ in range(1000):
        q.add("a")
    q.add("b")
    assert len(q) == 2
    assert [q.get(0), q.get(0), q.get(0)] == ["a", "b", None]


def test_an_urgent_key_goes_ahead_of_the_waiting_ones() -> None:
    q: WorkQueue[str] = WorkQueue()
    q.add("follow-up-1")
    q.add("follow-up-2")
    q.add("new-1", urgent=True)
    q.add("new-2", urgent=True)
    q.add("follow-up-1", urgent=True)  # waiting already: coalesced where it is
    assert [q.get(0) for _ in range(5)] == ["new-1", "new-2", "follow-up-1", "follow-up-2", None]


def test_a_new_experiments_first_reconciliation_goes_first() -> None:
    kube = FakeKube()
    ctl = Controller(Reconciler(kube, metrics=Metrics(CollectorRegistry())), workers=0)
    for name in ("old-1", "old-2"):
        ctl.enqueue("ns", name)
    body = kube.apply(manifest("new"))
    ctl.submit(ctl.reconciler.on_experiment("ns", "new", body["metadata"]["resourceVersion"], body=body))  # type: ignore[attr-defined]
    assert ctl.queue.get(0) == ("ns", "new")


def test_a_key_in_processing_is_not_handed_out_twice_and_a_readd_runs_after_done() -> None:
    q: WorkQueue[str] = WorkQueue()
    q.add("a")
    assert q.get(0) == "a"
    q.add("a")
    q.add("a")
    assert q.get(0) is None, "a second worker must not get the key being processed"
    q.done("a")
    assert q.get(0) == "a", "the re-add during processing is processed once afterwards"
    q.done("a")
    assert q.get(0) is None


def test_done_without_a_readd_does_not_requeue() -> None:
    q: WorkQueue[str] = WorkQueue()
    q.add("a")
    q.done(str(q.get(0)))
    assert len(q) == 0


def test_add_after_waits_and_the_earliest_delay_wins() -> None:
    clock = Clock()
    q: WorkQueue[str] = WorkQueue(clock=clock)
    q.add_after("a", 30.0)
    q.add_after("a", 60.0)  # later: ignored
    q.add_after("a", 10.0)  # earlier: wins
    assert q.delayed() == {"a": 10.0}
    assert q.get(0) is None
    clock.now += 10.0
    assert q.get(0) == "a"
    assert q.delayed() == {}


def test_a_delay_of_zero_adds_at_once() -> None:
    q: WorkQueue[str] = WorkQueue()
    q.add_after("a", 0.0)
    assert q.get(0) == "a"


def test_delayed_entries_stay_bounded() -> None:
    clock = Clock()
    q: WorkQueue[str] = WorkQueue(clock=clock)
    for i in range(10_000):
        q.add_after("a", 10_000.0 - i)  # each one earlier than the last
    assert len(q._heap) <= 2 * len(q.delayed()) + 17


def test_a_blocked_get_wakes_for_a_delayed_key_and_for_shutdown() -> None:
    q: WorkQueue[str] = WorkQueue()
    got: list[str | None] = []
    worker = threading.Thread(target=lambda: got.append(q.get()))
    worker.start()
    q.add_after("a", 0.05)
    worker.join(5)
    assert got == ["a"]
    worker = threading.Thread(target=lambda: got.append(q.get()))
    worker.start()
    q.shutdown()
    worker.join(5)
    assert got == ["a", None]


def test_backoff_doubles_from_the_base_up_to_the_cap_with_bounded_jitter() -> None:
    exact = ExponentialBackoff[str](base=2.0, cap=120.0, jitter=0.1, random_fraction=lambda: 0.0)
    assert [exact.when("a") for _ in range(8)] == [2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 120.0, 120.0]
    assert exact.when("b") == 2.0, "per key"
    exact.forget("a")
    assert exact.when("a") == 2.0, "forget starts afresh"
    most = ExponentialBackoff[str](base=2.0, cap=120.0, jitter=0.1, random_fraction=lambda: 0.999)
    assert 2.0 < most.when("a") < 2.2


def test_rate_limited_retries_back_off_until_forgotten() -> None:
    clock = Clock()
    q: WorkQueue[str] = WorkQueue(ExponentialBackoff(random_fraction=lambda: 0.0), clock=clock)
    assert q.add_rate_limited("a") == 2.0
    assert q.add_rate_limited("a") == 4.0
    q.forget("a")
    assert q.add_rate_limited("a") == 2.0


def test_workers_never_process_one_key_concurrently_and_miss_no_readd() -> None:
    q: WorkQueue[int] = WorkQueue()
    active: set[int] = set()
    overlaps: list[int] = []
    last_seen_round: dict[int, int] = {}
    round_added: dict[int, int] = {}
    lock = threading.Lock()

    def work() -> None:
        while (key := q.get()) is not None:
            with lock:
                if key in active:
                    overlaps.append(key)
                active.add(key)
                seen = round_added[key]
            time.sleep(0.001)
            with lock:
                active.discard(key)
                last_seen_round[key] = max(last_seen_round.get(key, -1), seen)
            q.done(key)

    workers = [threading.Thread(target=work) for _ in range(8)]
    for w in workers:
        w.start()
    for r in range(200):
        for key in range(5):
            with lock:
                round_added[key] = r
            q.add(key)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(last_seen_round.get(k) != 199 for k in range(5)):
        time.sleep(0.01)
    q.shutdown()
    for w in workers:
        w.join(5)
    assert overlaps == []
    assert last_seen_round == dict.fromkeys(range(5), 199), "the last add of every key was processed"


def test_the_controller_runs_no_thread_per_experiment() -> None:
    kube = FakeKube()
    for i in range(300):
        kube.apply(manifest(f"mix-{i}"))
    reconciler = Reconciler(kube, trainer_image="trainer:test", metrics=Metrics(CollectorRegistry()))
    controller = Controller(reconciler, errors=reconciler.metrics.reconcile_errors, workers=2)
    before = threading.active_count()
    controller.start()
    for i in range(300):
        controller.enqueue("ns", f"mix-{i}")
    peak = threading.active_count()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(kube.jobs()) < 300:
        peak = max(peak, threading.active_count())
        time.sleep(0.01)
    controller.stop()
    assert len(kube.jobs()) == 300
    assert peak - before <= 2, f"{peak - before} threads for 300 experiments"
