"""What /healthz reports (main.Health) and the resync loop's survival, without a cluster: the
loop against a fake API whose list fails in every way once, kopf's watch tasks as plain asyncio
tasks named the way kopf names them."""

from __future__ import annotations

import asyncio
from typing import Any

from datamix_operator.config import OperatorConfig
from datamix_operator.kube import KubeError
from datamix_operator.leader import Leadership
from datamix_operator.main import Health, resync_loop
from datamix_operator.reconcile import Request


class Lister:
    """The Reconciler's side the resync loop uses: its listing fails with each of `failures` in
    turn, then lists two experiments."""

    def __init__(self, failures: list[BaseException]) -> None:
        self.failures = list(failures)
        self.calls = 0

    def resync_requests(self, namespace: str | None) -> list[Request]:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return [Request(namespace or "", n, full=True) for n in ("a", "b")]


class Recorder:
    """The Controller's side the resync loop uses."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, bool]] = []

    def submit(self, request: Request) -> None:
        self.calls.append((request.namespace, request.name, request.full))

    def busy(self) -> bool:
        return False


class Standby(Leadership):
    def remaining(self) -> float:
        return 0.0


async def run_loop(lister: Lister, recorder: Recorder, leadership: Leadership, until: int) -> asyncio.Task[None]:
    config = OperatorConfig(namespaces=("ns",), resync_seconds=0.01)
    task = asyncio.create_task(resync_loop(config, recorder, lister, leadership, asyncio.Event()))  # type: ignore[arg-type]
    for _ in range(500):
        await asyncio.sleep(0.01)
        if lister.calls >= until or task.done():
            break
    return task


def test_the_resync_loop_survives_any_error_of_a_pass_and_says_so(caplog: Any) -> None:
    lister, recorder = Lister([KubeError(0, "unreachable"), RuntimeError("a bug"), ValueError("bad json")]), Recorder()

    async def scenario() -> bool:
        task = await run_loop(lister, recorder, Leadership(), until=5)
        alive = not task.done()
        task.cancel()
        return alive

    assert asyncio.run(scenario()), "the loop died"
    assert ("ns", "a", True) in recorder.calls
    assert "cannot list experiments in ns: 0: unreachable" in caplog.text
    assert "a bug" in caplog.text


def test_a_pass_that_raises_past_the_listing_is_logged_and_the_loop_goes_on(caplog: Any) -> None:
    class Exploding(Recorder):
        def submit(self, request: Request) -> None:
            super().submit(request)
            raise RuntimeError("submit blew up")

    lister, recorder = Lister([]), Exploding()

    async def scenario() -> bool:
        task = await run_loop(lister, recorder, Leadership(), until=3)
        alive = not task.done()
        task.cancel()
        return alive

    assert asyncio.run(scenario())
    assert lister.calls >= 3
    assert "resync pass failed; the resync loop goes on" in caplog.text


def test_a_standby_does_not_resync() -> None:
    lister, recorder = Lister([]), Recorder()

    async def scenario() -> None:
        task = await run_loop(lister, recorder, Standby(), until=1)
        task.cancel()

    asyncio.run(scenario())
    assert lister.calls == 0
    assert recorder.calls == []


def test_health_reports_a_dead_watch_but_not_one_kopf_stopped_on_purpose() -> None:
    async def scenario() -> tuple[list[str], list[str], list[str]]:
        health = Health(None)

        async def fails() -> None:
            await asyncio.sleep(0.01)
            raise RuntimeError("watch escalated")

        dies = asyncio.create_task(fails(), name="watcher for pytorchjobs.v1.kubeflow.org@ns")
        stopped = asyncio.create_task(asyncio.sleep(10), name="watcher for pods.v1@ns")
        lives = asyncio.create_task(asyncio.sleep(10), name="watcher for datamixtureexperiments.v1alpha1.datamix.io@ns")
        health.scan_watchers()
        before = health.problems()
        stopped.cancel()  # kopf cancels the watch of a resource whose CRD went away
        await asyncio.gather(dies, stopped, return_exceptions=True)
        health.scan_watchers()
        after = health.problems()
        # kopf starts the watch again (e.g. the CRD came back): healthy again
        again = asyncio.create_task(asyncio.sleep(10), name="watcher for pytorchjobs.v1.kubeflow.org@ns")
        await asyncio.sleep(0)
        health.scan_watchers()
        restored = health.problems()
        for task in (lives, again):
            task.cancel()
        return before, after, restored

    before, after, restored = asyncio.run(scenario())
    assert before == []
    assert after == ["watch pytorchjobs.v1.kubeflow.org@ns ended: RuntimeError('watch escalated')"]
    assert restored == []


def test_health_reports_a_dead_resync_loop() -> None:
    async def scenario() -> list[str]:
        health = Health(None)

        async def crash() -> None:
            raise RuntimeError("boom")

        health.tasks["resync loop"] = asyncio.create_task(crash())
        await asyncio.sleep(0.01)
        return health.problems()

    assert asyncio.run(scenario()) == ["the resync loop has stopped"]
