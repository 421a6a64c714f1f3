"""Runs the sweep reconciler from its own work queue (the experiments' `WorkQueue` semantics: one
worker per sweep, coalesced triggers, per-sweep backoff), so that sweeps never wait behind
experiments nor the other way round. No kopf here.

Triggers only enqueue: a sweep's own events, any event of an experiment labelled with a sweep
(its trials and final run), the resync, and the end of a fit (`SweepReconciler.schedule`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping

from datamix.names import LABEL_SWEEP
from datamix_operator.kube import KubeError
from datamix_operator.sweep.reconcile import SweepReconciler
from datamix_operator.workqueue import ExponentialBackoff, WorkQueue

log = logging.getLogger("datamix_operator")

Key = tuple[str, str]  # (namespace, name) of a sweep
DEFAULT_SWEEP_WORKERS = 2


class SweepController:
    def __init__(self, reconciler: SweepReconciler, *, workers: int = DEFAULT_SWEEP_WORKERS,
                 queue: WorkQueue[Key] | None = None) -> None:
        self.reconciler = reconciler
        self.workers = workers
        self.queue: WorkQueue[Key] = queue if queue is not None else WorkQueue(ExponentialBackoff())
        reconciler.schedule = lambda namespace, name, delay: self.queue.add_after((namespace, name), delay)
        self._threads: list[threading.Thread] = []

    # -- triggers

    def on_sweep(self, namespace: str, name: str, deleted: bool = False) -> None:
        if deleted:
            self.queue.forget((namespace, name))
            self.reconciler.forget(namespace, name)
            return
        self.queue.add((namespace, name))

    def on_experiment(self, namespace: str, labels: Mapping[str, str]) -> None:
        sweep = labels.get(LABEL_SWEEP)
        if sweep:
            self.queue.add((namespace, sweep))

    def enqueue(self, namespace: str, name: str) -> None:
        self.queue.add((namespace, name))

    # -- workers

    def process_next(self, timeout: float | None = None) -> bool:
        key = self.queue.get(timeout)
        if key is None:
            return False
        namespace, name = key
        try:
            retry = self.reconciler.reconcile(namespace, name)
        except Exception as err:
            delay = self.queue.add_rate_limited(key)
            if isinstance(err, KubeError):
                log.warning("reconciling sweep %s/%s failed (retry in %.0fs): %s", namespace, name, delay, err)
            else:
                log.exception("reconciling sweep %s/%s failed (retry in %.0fs)", namespace, name, delay)
        else:
            self.queue.forget(key)
            if retry is not None:
                self.queue.add_after(key, retry)
        finally:
            self.queue.done(key)
        return True

    def start(self) -> None:
        for i in range(self.workers):
            thread = threading.Thread(target=self._work, name=f"sweep-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self.queue.shutdown()

    def _work(self) -> None:
        while self.process_next():
            pass
