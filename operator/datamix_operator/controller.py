"""Runs a reconciler from a work queue (no kopf here).

The watch handlers, the resync loop and the progress tracker only queue an object
(`Controller.submit` of a `Request`, e.g. from `Reconciler.on_experiment` / `on_job`); `workers`
threads take objects from the queue and reconcile them. The queue hands an object to one worker at
a time, coalesces the triggers that arrive meanwhile into one more reconciliation afterwards, and
retries a failed reconciliation after the object's backoff (2 s, doubling, at most 120 s, with
jitter); the retry a situation asks for (a missing CRD, a conflicting child) comes back from
`reconcile` as a delay. Any reconciler with that `reconcile` can be run so (experiments; sweeps).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from datamix_operator.kube import KubeApi, KubeError, NotFound, NotLeader
from datamix_operator.reconcile import Conflict, Request, Snapshot
from datamix_operator.workqueue import ExponentialBackoff, WorkQueue

log = logging.getLogger("datamix_operator")

Key = tuple[str, str]  # (namespace, name) of the reconciled object


class Reconcilable(Protocol):
    def reconcile(
        self,
        namespace: str,
        name: str,
        full: bool = False,
        new: dict[str, Any] | None = None,
        snapshot: Snapshot | None = None,
    ) -> float | None:
        """One pass over one object; the delay of a retry it asks for; raises on errors."""
        ...


class ErrorCounter(Protocol):
    def inc(self) -> None: ...


@dataclass
class _Asked:
    """What the triggers queued for one object asked for, merged."""

    full: bool = False
    body: dict[str, Any] | None = None
    snapshot: Snapshot | None = None  # the newest (the reconciler checks it is still current)


class Controller:
    def __init__(
        self,
        reconciler: Reconcilable,
        *,
        errors: ErrorCounter | None = None,
        workers: int = 1,
        queue: WorkQueue[Key] | None = None,
        kind: str = "experiment",
        acting: Callable[[], bool] = lambda: True,
    ) -> None:
        self.reconciler = reconciler
        self.acting = acting  # False while another process holds the leader Lease (leader.py)
        self.errors = errors
        self.workers = workers
        self.kind = kind  # for the log
        self.queue: WorkQueue[Key] = queue if queue is not None else WorkQueue(ExponentialBackoff())
        self._asked: dict[Key, _Asked] = {}
        self._asked_lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    # -- triggers

    def enqueue(self, namespace: str, name: str, *, full: bool = False) -> None:
        self.submit(Request(namespace, name, full=full))

    def submit(self, request: Request | None) -> None:
        if request is None or not self.acting():
            return  # a standby queues nothing: taking the Lease over starts with a full resync
        key = (request.namespace, request.name)
        with self._asked_lock:
            asked = self._asked.setdefault(key, _Asked())
            asked.full = asked.full or request.full
            if request.body is not None:
                asked.body = request.body
            if request.snapshot is not None:
                asked.snapshot = request.snapshot
        self.queue.add(key, urgent=request.body is not None)  # a new experiment: its job first

    def forget(self, namespace: str, name: str) -> None:
        """The object is gone: its next failure (if it comes back) starts from the base delay."""
        self.queue.forget((namespace, name))

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
        if not self.acting():
            return
        try:
            retry = self.reconciler.reconcile(namespace, name, full=asked.full, new=asked.body, snapshot=asked.snapshot)
        except NotLeader as err:  # the Lease was lost mid-way: the new leader takes it from here
            log.info("reconciling %s %s/%s stopped: %s", self.kind, namespace, name, err)
            return
        except Exception as err:
            if self.errors is not None:
                self.errors.inc()
            delay = self.queue.add_rate_limited(key)
            if isinstance(err, KubeError | Conflict):
                log.warning("reconciling %s %s/%s failed (retry in %.0fs): %s", self.kind, namespace, name, delay, err)
            else:
                log.exception("reconciling %s %s/%s failed (retry in %.0fs)", self.kind, namespace, name, delay)
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

    def busy(self) -> bool:
        """Whether objects wait for a worker or are being reconciled (delayed retries aside)."""
        return self.queue.busy()

    def _work(self) -> None:
        while self.process_next():
            pass


class EventPoster:
    """Posts Events from a background thread, so that reconciliations do not wait for them.

    Like client-go's EventCorrelator, the same event (object, type, reason, message) posted again
    within `window` seconds of its last posting is counted on the Event already there (a PATCH of
    `count` and `lastTimestamp`) instead of creating another: an experiment that keeps hitting the
    same problem gets one Event with a count, not one per reconciliation. The last `max_keys`
    events are remembered (least recently posted forgotten first)."""

    def __init__(
        self,
        kube: KubeApi,
        max_queue: int = 10000,
        *,
        window: float = 600.0,
        max_keys: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kube = kube
        self.window = window
        self.max_keys = max_keys
        self.clock = clock
        self._posted: OrderedDict[tuple[str, ...], _Posted] = OrderedDict()  # only the poster thread
        self.queue: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue(max_queue)
        self.thread = threading.Thread(target=self._run, name="event-poster", daemon=True)
        self.thread.start()

    def post(self, namespace: str, body: dict[str, Any]) -> None:
        try:
            self.queue.put_nowait((namespace, body))
        except queue.Full:
            log.warning("event queue full: dropped event %s", body.get("reason"))

    def flush(self) -> None:
        """Wait until every event queued so far is posted (tests)."""
        self.queue.join()

    def _run(self) -> None:
        while True:
            namespace, body = self.queue.get()
            try:
                self._post(namespace, body)
            except KubeError as err:
                log.warning("could not post event %s in %s: %s", body.get("reason"), namespace, err)
            finally:
                self.queue.task_done()

    def _post(self, namespace: str, body: dict[str, Any]) -> None:
        obj = body.get("involvedObject") or {}
        key = (namespace, obj.get("uid", ""), obj.get("name", ""), body.get("type", ""), body.get("reason", ""),
               body.get("message", ""))
        now = self.clock()
        seen = self._posted.get(key)
        if seen is not None and now - seen.at <= self.window:
            patch = {"count": seen.count + 1, "lastTimestamp": body.get("lastTimestamp")}
            try:
                self.kube.patch_event(namespace, seen.name, patch)
                seen.count, seen.at = seen.count + 1, now
                self._posted.move_to_end(key)
                return
            except NotFound:
                pass  # expired (the API server keeps Events for an hour): post it anew
            except KubeError as err:  # e.g. no RBAC for patch: one Event per posting, as before
                log.debug("could not count event %s on %s: %s", body.get("reason"), seen.name, err)
        created = self.kube.create_event(namespace, body)
        name = (created.get("metadata") or {}).get("name")
        if name:
            self._posted[key] = _Posted(name, int(body.get("count") or 1), now)
            self._posted.move_to_end(key)
            while len(self._posted) > self.max_keys:
                self._posted.popitem(last=False)


@dataclass
class _Posted:
    """An Event this process posted: its name, its count so far, when it was last posted."""

    name: str
    count: int
    at: float
