"""Runs the reconciler from a work queue (no kopf here).

The watch handlers, the resync loop and the progress tracker only enqueue an experiment
(`Controller.on_experiment`, `on_job`, `enqueue`); `workers` threads take experiments from the
queue and reconcile them. The queue hands an experiment to one worker at a time, coalesces the
triggers that arrive meanwhile into one more reconciliation afterwards, and retries a failed
reconciliation after the experiment's backoff (2 s, doubling, at most 120 s, with jitter); the
retry a situation asks for (a missing CRD, a conflicting child) comes back as a delay.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from datamix_operator.kube import KubeApi, KubeError
from datamix_operator.reconcile import Conflict, Reconciler, Request
from datamix_operator.workqueue import ExponentialBackoff, WorkQueue

log = logging.getLogger("datamix_operator")

Key = tuple[str, str]  # (namespace, name) of an experiment


@dataclass
class _Asked:
    """What the triggers queued for one experiment asked for, merged."""

    full: bool = False
    body: dict[str, Any] | None = None


class Controller:
    def __init__(self, reconciler: Reconciler, *, workers: int = 1, queue: WorkQueue[Key] | None = None) -> None:
        self.reconciler = reconciler
        self.workers = workers
        self.queue: WorkQueue[Key] = queue if queue is not None else WorkQueue(ExponentialBackoff())
        self._asked: dict[Key, _Asked] = {}
        self._asked_lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    # -- triggers

    def on_experiment(
        self,
        namespace: str,
        name: str,
        resource_version: str | None,
        deleted: bool = False,
        body: Mapping[str, Any] | None = None,
    ) -> None:
        if deleted:
            self.queue.forget((namespace, name))
        self.submit(self.reconciler.on_experiment(namespace, name, resource_version, deleted=deleted, body=body))

    def on_job(self, namespace: str, job: Mapping[str, Any], deleted: bool = False) -> None:
        self.submit(self.reconciler.on_job(namespace, job, deleted=deleted))

    def enqueue(self, namespace: str, name: str, *, full: bool = False) -> None:
        self.submit(Request(namespace, name, full=full))

    def submit(self, request: Request | None) -> None:
        if request is None:
            return
        key = (request.namespace, request.name)
        with self._asked_lock:
            asked = self._asked.setdefault(key, _Asked())
            asked.full = asked.full or request.full
            if request.body is not None:
                asked.body = request.body
        self.queue.add(key)

    # -- workers

    def process_next(self, timeout: float | None = None) -> bool:
        """Take one experiment from the queue and reconcile it; False if there was none in time."""
        key = self.queue.get(timeout)
        if key is None:
            return False
        try:
            with self._asked_lock:
                asked = self._asked.pop(key, None) or _Asked()
            self._reconcile(key, asked)
        finally:
            self.queue.done(key)
        return True

    def _reconcile(self, key: Key, asked: _Asked) -> None:
        namespace, name = key
        try:
            retry = self.reconciler.reconcile(namespace, name, full=asked.full, new=asked.body)
        except Exception as err:
            self.reconciler.metrics.reconcile_errors.inc()
            delay = self.queue.add_rate_limited(key)
            if isinstance(err, KubeError | Conflict):
                log.warning("reconciling %s/%s failed (retry in %.0fs): %s", namespace, name, delay, err)
            else:
                log.exception("reconciling %s/%s failed (retry in %.0fs)", namespace, name, delay)
            return
        self.queue.forget(key)
        if retry is not None:
            self.queue.add_after(key, retry)

    def start(self) -> None:
        for i in range(self.workers):
            thread = threading.Thread(target=self._work, name=f"reconcile-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self.queue.shutdown()

    def _work(self) -> None:
        while self.process_next():
            pass


class EventPoster:
    """Posts Events from a background thread, so that reconciliations do not wait for them."""

    def __init__(self, kube: KubeApi, max_queue: int = 10000) -> None:
        self.kube = kube
        self.queue: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue(max_queue)
        self.thread = threading.Thread(target=self._run, name="event-poster", daemon=True)
        self.thread.start()

    def post(self, namespace: str, body: dict[str, Any]) -> None:
        try:
            self.queue.put_nowait((namespace, body))
        except queue.Full:
            log.warning("event queue full: dropped event %s", body.get("reason"))

    def _run(self) -> None:
        while True:
            namespace, body = self.queue.get()
            try:
                self.kube.create_event(namespace, body)
            except KubeError as err:
                log.warning("could not post event %s in %s: %s", body.get("reason"), namespace, err)
