"""The kopf wiring: every handler is one call into the `Controller` (controller.py), which queues
the experiment for the `Reconciler` (reconcile.py).

Triggers, all level-based (the reconciler reads the world afresh each time):
- any event of a DataMixtureExperiment (kopf lists them all at start-up: the "resume");
- any event of a PyTorchJob labelled by this operator (kopf ignores `status` in change
  detection, so event handlers, not on.update, see the training-operator's status);
- a finished master pod (its termination message carries the run result);
- a run's ConfigMap deleted (by hand: it is created again while its run goes on);
- a resync loop over all experiments every --resync-seconds: one LIST of experiments and one of
  their jobs per namespace, handed to each reconciliation as a snapshot (no GET or LIST per
  experiment; Reconciler.resync_requests).

Why no @kopf.timer: kopf puts a finalizer on every object that has a timer (to stop the timer on
deletion), and a finalizer with no operator running wedges `kubectl delete`. The children go
away through owner references, so the experiment needs no finalizer; the resync loop gives the
same safety net without one.

Only event handlers are registered, one per resource, so kopf stores no progress or diff-base
annotations on the experiments (the progress storage is still set to the project's `datamix.io/`
prefix) and needs no diff base at all (`NoDiffBase`). They are coroutines that only queue (short
locks, no I/O): kopf runs them on its event loop, without a hop through its thread pool for every
event.

With leader election (leader.py; on by default) every replica watches, but only the holder of the
Lease reconciles and resyncs: a standby's handlers queue nothing, and the first thing a new leader
does is a full resync. /healthz fails when a part that keeps experiments moving has died: a kopf
watch, the resync loop, the leader-election thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import socket
import time
from typing import Any

import kopf

from datamix import GROUP, PLURAL, VERSION
from datamix.names import (
    LABEL_MANAGED_BY,
    LABEL_SWEEP,
    MANAGED_BY,
    MASTER_REPLICA,
    REPLICA_TYPE_LABEL,
)
from datamix.sweep_schema import SWEEP_PLURAL
from datamix_operator.admission import Admission
from datamix_operator.config import OperatorConfig
from datamix_operator.controller import Controller, EventPoster
from datamix_operator.kube import ClientKube, load_client_configuration
from datamix_operator.leader import LeaderElector, Leadership
from datamix_operator.metrics import Metrics, serve
from datamix_operator.progress import ProgressTracker
from datamix_operator.reconcile import Reconciler
from datamix_operator.sweep.controller import SweepController
from datamix_operator.sweep.fit import Fitter
from datamix_operator.sweep.kube import SweepClient
from datamix_operator.sweep.metrics import SweepMetrics
from datamix_operator.sweep.reconcile import SweepReconciler

log = logging.getLogger("datamix_operator")


class NoDiffBase(kopf.DiffBaseStorage):
    """kopf's change detection, for on.create/update/resume handlers: this operator registers none
    (tests/operator/test_operator_main.py holds it to that), yet kopf deep-copies every watched
    object on every event to diff it against the last handled state, which nobody reads: a quarter
    of the operator's CPU in a burst of new experiments (py-spy, benchmarks/operator/bench_scale.py).
    Nothing is built, fetched or stored."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        raise AssertionError("no change-detecting kopf handler is registered")


def operator_settings(config: OperatorConfig) -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = NoDiffBase()
    settings.persistence.finalizer = f"{GROUP}/kopf-finalizer"
    settings.posting.reporting_component = MANAGED_BY
    settings.posting.level = logging.WARNING
    settings.execution.max_workers = config.workers
    settings.peering.standalone = True
    settings.peering.clusterwide = config.clusterwide
    # Watch only what the operator made, filtered by the API server: the operator's jobs, and of
    # all the pods in the namespace only its master pods.
    ours = f"{LABEL_MANAGED_BY}={MANAGED_BY}"
    job_api = config.job_api
    settings.watching.label_selectors[job_api.group, job_api.version, job_api.plural] = ours
    settings.watching.label_selectors["v1", "pods"] = f"{ours},{REPLICA_TYPE_LABEL}={MASTER_REPLICA}"
    settings.watching.label_selectors["v1", "configmaps"] = ours
    return settings


def connection_info(cfg: Any) -> kopf.ConnectionInfo:
    """kopf's credentials from the same client configuration the reconciler uses."""
    header = cfg.get_api_key_with_prefix("BearerToken") or cfg.get_api_key_with_prefix("authorization")
    parts = header.split(" ", 1) if header else []
    scheme, token = (None, None) if not parts else (None, parts[0]) if len(parts) == 1 else (parts[0], parts[1])
    return kopf.ConnectionInfo(
        server=cfg.host,
        ca_path=cfg.ssl_ca_cert,
        insecure=not cfg.verify_ssl,
        username=cfg.username or None,
        password=cfg.password or None,
        scheme=scheme,
        token=token,
        certificate_path=cfg.cert_file,
        private_key_path=cfg.key_file,
    )


class Health:
    """The parts that keep experiments moving, for /healthz: the resync loop, the
    leader-election thread and kopf's watch streams (each resource x namespace)."""

    WATCHER = "watcher for "  # kopf's name of a watch-stream task (kopf/_core/reactor/orchestration.py)

    def __init__(self, elector: LeaderElector | None) -> None:
        self.elector = elector
        self.tasks: dict[str, asyncio.Task[None]] = {}  # ours: resync, watch monitor
        self.watchers: dict[str, asyncio.Task[Any]] = {}  # kopf's, as last seen alive
        self.dead_watchers: dict[str, str] = {}

    def scan_watchers(self) -> None:
        """Note kopf's watch-stream tasks; one that ended by itself (kopf cancels the ones it stops
        on purpose, e.g. when a CRD goes away) and was not replaced is dead."""
        alive = {t.get_name(): t for t in asyncio.all_tasks() if t.get_name().startswith(self.WATCHER)}
        for name, task in list(self.watchers.items()):
            if name in alive or not task.done():
                continue
            del self.watchers[name]
            if not task.cancelled():
                err = task.exception()
                self.dead_watchers[name] = f"{name[len(self.WATCHER):]} ended: {err!r}" if err else "ended"
                log.error("the %s has died (%s): /healthz now fails", name, err)
        for name, task in alive.items():
            self.watchers[name] = task
            self.dead_watchers.pop(name, None)

    def problems(self) -> list[str]:
        out = [f"the {name} has stopped" for name, task in self.tasks.items() if task.done()]
        if self.elector is not None and not self.elector.alive():
            out.append(f"leader election has stopped ({self.elector.failed!r})")
        out += [f"watch {what}" for what in self.dead_watchers.values()]
        return out


async def watch_monitor(health: Health, interval: float = 2.0) -> None:
    while True:
        health.scan_watchers()
        await asyncio.sleep(interval)


class Wakeup:
    """Wakes the resync loop early, from any thread (the leader-election thread, on acquiring)."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.event: asyncio.Event | None = None
        self.pending = False  # set before the loop runs: the first pass starts at once

    def bind(self) -> asyncio.Event:
        self.loop, self.event = asyncio.get_running_loop(), asyncio.Event()
        if self.pending:
            self.event.set()
        return self.event

    def __call__(self) -> None:
        self.pending = True
        if self.loop is not None and self.event is not None:
            self.loop.call_soon_threadsafe(self.event.set)


def build_registry(
    config: OperatorConfig,
    reconciler: Reconciler,
    controller: Controller,
    leadership: Leadership,
    health: Health,
    wakeup: Wakeup,
    progress: ProgressTracker | None = None,
    sweeps: SweepController | None = None,
) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    job_api = config.job_api
    ours = {LABEL_MANAGED_BY: MANAGED_BY}
    acting = leadership.is_leader

    @kopf.on.login(id="login", registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return connection_info(load_client_configuration())

    @kopf.on.startup(id="startup", registry=registry)
    async def startup(**_: Any) -> None:
        health.tasks["resync loop"] = asyncio.create_task(
            resync_loop(config, controller, reconciler, leadership, wakeup.bind(), sweeps), name="datamix resync"
        )
        health.tasks["watch monitor"] = asyncio.create_task(watch_monitor(health), name="datamix watch monitor")

    @kopf.on.cleanup(id="cleanup", registry=registry)
    async def cleanup(**_: Any) -> None:
        if health.elector is not None:
            health.elector.stop()  # no write from here on; the Lease is released once kopf stopped
        controller.stop()
        if sweeps is not None:
            sweeps.stop()
        for task in health.tasks.values():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @kopf.on.probe(id="healthy", registry=registry, errors=kopf.ErrorsMode.PERMANENT)
    def healthy(**_: Any) -> str:
        problems = health.problems()
        if problems:
            raise kopf.PermanentError("; ".join(problems))
        return "leader" if acting() else "standby"

    # One handler per resource: kopf's CPU per event grows with the handlers it invokes.
    @kopf.on.event(GROUP, VERSION, PLURAL, id="dmx", registry=registry)
    async def experiment_event(type: str, body: kopf.Body, namespace: str | None, name: str, **_: Any) -> None:
        if namespace is None or not acting():
            return
        deleted = type == "DELETED"
        if deleted:
            controller.forget(namespace, name)
        controller.submit(
            reconciler.on_experiment(namespace, name, body.metadata.get("resourceVersion"), deleted=deleted, body=body)
        )
        labels = body.metadata.labels
        if sweeps is not None and LABEL_SWEEP in labels:  # a sweep's trial or final run
            sweeps.on_experiment(namespace, dict(labels))

    @kopf.on.event(job_api.group, job_api.version, job_api.plural, id="job", labels=ours, registry=registry)
    async def job_event(type: str, body: kopf.Body, namespace: str | None, **_: Any) -> None:
        if namespace is None or not acting():
            return
        controller.submit(reconciler.on_job(namespace, dict(body), deleted=(type == "DELETED")))

    @kopf.on.event("", "v1", "configmaps", id="configmap", labels=ours, registry=registry)
    async def configmap_event(type: str, body: kopf.Body, namespace: str | None, **_: Any) -> None:
        if namespace is not None and acting():
            controller.submit(reconciler.on_configmap(namespace, dict(body), deleted=(type == "DELETED")))

    if sweeps is not None:

        @kopf.on.event(GROUP, VERSION, SWEEP_PLURAL, id="dms", registry=registry)
        async def sweep_event(type: str, namespace: str | None, name: str, **_: Any) -> None:
            if namespace is None or not acting():
                return
            sweeps.on_sweep(namespace, name, deleted=(type == "DELETED"))

    @kopf.on.event("", "v1", "pods", id="pod", labels={**ours, REPLICA_TYPE_LABEL: MASTER_REPLICA}, registry=registry)
    async def master_pod_event(type: str, body: kopf.Body, namespace: str | None, **_: Any) -> None:
        if progress is not None:
            progress.observe_pod(body, deleted=(type == "DELETED"))  # where it answers, on a standby too
        finished = (body.get("status") or {}).get("phase") in ("Succeeded", "Failed")  # the pod's phase
        if namespace is not None and finished:
            controller.submit(reconciler.on_master_pod(namespace, body))

    return registry


async def resync_loop(
    config: OperatorConfig,
    controller: Controller,
    reconciler: Reconciler,
    leadership: Leadership,
    wake: asyncio.Event,
    sweeps: SweepController | None = None,
) -> None:
    """On the leader: queue every experiment and sweep every `resync_seconds`, whatever the
    watches delivered, and at once on becoming leader. Survives any error of a pass."""
    loop = asyncio.get_running_loop()
    with concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="resync") as pool:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), config.resync_seconds)
            wake.clear()
            if not leadership.is_leader():
                continue
            started = time.monotonic()
            try:
                count = await resync_pass(config, controller, reconciler, loop, pool, sweeps)
                # The pass ends when the queue has worked off what it queued (or the next is due).
                while controller.busy() and time.monotonic() < started + config.resync_seconds:
                    await asyncio.sleep(0.1)
                log.info("resync pass: %d experiments in %.2f s", count, time.monotonic() - started)
            except Exception:
                log.exception("resync pass failed; the resync loop goes on")


async def resync_pass(
    config: OperatorConfig,
    controller: Controller,
    reconciler: Reconciler,
    loop: asyncio.AbstractEventLoop,
    pool: concurrent.futures.Executor,
    sweeps: SweepController | None = None,
) -> int:
    """Queue every experiment (with the snapshot the reconciler listed) and sweep; returns how
    many experiments."""
    count = 0
    for namespace in config.namespaces or (None,):
        try:
            requests = await loop.run_in_executor(pool, reconciler.resync_requests, namespace)
        except Exception as err:
            log.warning("resync: cannot list experiments in %s: %s", namespace or "all namespaces", err)
            continue
        for request in requests:
            controller.submit(request)
        count += len(requests)
        if sweeps is None:
            continue
        try:
            swept = await loop.run_in_executor(pool, sweeps.reconciler.kube.list_sweeps, namespace)
        except Exception as err:
            log.debug("resync: cannot list sweeps in %s: %s", namespace or "all namespaces", err)
            continue
        for item in swept:
            meta = item.get("metadata") or {}
            sweeps.enqueue(meta["namespace"], meta["name"])
    return count


def run(config: OperatorConfig) -> None:
    """Run the operator in this process until SIGINT/SIGTERM."""
    kopf.configure(
        verbose=config.verbose,
        log_format=kopf.LogFormat.JSON if config.log_format == "json" else kopf.LogFormat.FULL,
    )
    if not config.verbose:
        # kopf logs every handled event at INFO, and aiohttp every liveness probe.
        for noisy in ("kopf.objects", "aiohttp.access"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    wakeup = Wakeup()
    elector: LeaderElector | None = None
    leadership = Leadership()
    reconciler: Reconciler | None = None

    def started_leading() -> None:
        if reconciler is not None:
            reconciler.reset()
        wakeup()  # a full resync, at once

    if config.lease is not None:
        # Its own client and connection pool: renewals never queue behind reconciliations.
        elector = LeaderElector(ClientKube(job_api=config.job_api, pool_size=2), config.lease,
                                on_started_leading=started_leading)
        leadership = elector
    kube = ClientKube(job_api=config.job_api, pool_size=max(32, config.workers * 2), fence=leadership.remaining)
    metrics = Metrics()
    progress = None
    if config.progress_interval > 0:
        progress = ProgressTracker(
            interval=config.progress_interval, workers=config.progress_workers, metrics=metrics
        )
    reconciler = Reconciler(
        kube,
        trainer_image=config.trainer_image,
        metrics=metrics,
        crd_retry_seconds=config.crd_retry_seconds,
        post_event=EventPoster(kube).post,
        instance=os.environ.get("POD_NAME") or socket.gethostname(),
        progress=progress,
        admission=Admission(config.policy),
    )
    controller = Controller(reconciler, errors=metrics.reconcile_errors, workers=config.workers,
                            acting=leadership.is_leader)
    controller.start()
    if config.policy is None:
        log.warning("no --policy: the operator does not check the DataMix policy (docs/security.md)")
    if progress is not None:
        progress.on_change = lambda namespace, name: controller.enqueue(namespace, name)
        progress.start()
    if config.metrics_port:
        serve(config.metrics_port, config.bind_address)
    sweeps = SweepController(SweepReconciler(SweepClient(kube), Fitter(), metrics=SweepMetrics(),
                                             post_event=reconciler.post_event, instance=reconciler.instance))
    sweeps.start()
    health = Health(elector)
    registry = build_registry(config, reconciler, controller, leadership, health, wakeup, progress, sweeps)
    scope = "all namespaces" if config.clusterwide else ", ".join(config.namespaces)
    election = (f"leader election on Lease {config.lease.namespace}/{config.lease.name} as {config.lease.identity}"
                if config.lease else "no leader election")
    log.info("datamix operator: watching %s; API server %s; PyTorchJobs at %s; %s", scope, kube.host,
             config.job_api.api_version, election)
    liveness = f"http://{config.bind_address}:{config.liveness_port}/healthz" if config.liveness_port else None
    if elector is not None:
        elector.start()
    try:
        kopf.run(
            registry=registry,
            settings=operator_settings(config),
            standalone=True,
            clusterwide=config.clusterwide,
            namespaces=list(config.namespaces),
            liveness_endpoint=liveness,
        )
    finally:
        if elector is not None:
            elector.release()  # stop acting, then hand the Lease to a standby at once
