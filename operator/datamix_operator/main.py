"""The kopf wiring: every handler is one call into the `Controller` (controller.py), which queues
the experiment for the `Reconciler` (reconcile.py).

Triggers, all level-based (the reconciler reads the world afresh each time):
- any event of a DataMixtureExperiment (kopf lists them all at start-up: the "resume");
- any event of a PyTorchJob labelled by this operator (kopf ignores `status` in change
  detection, so event handlers, not on.update, see the training-operator's status);
- a finished master pod (its termination message carries the run result);
- a resync loop over all experiments every --resync-seconds.

Why no @kopf.timer: kopf puts a finalizer on every object that has a timer (to stop the timer on
deletion), and a finalizer with no operator running wedges `kubectl delete`. The children go
away through owner references, so the experiment needs no finalizer; the resync loop gives the
same safety net without one.

Only event handlers are registered, so kopf stores no progress or diff-base annotations on the
experiments; the storages are still set to the project's `datamix.io/` prefix.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import socket
from typing import Any

import kopf

from datamix import GROUP, PLURAL, VERSION
from datamix.names import (
    LABEL_EXPERIMENT,
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
from datamix_operator.kube import ClientKube, KubeError, load_client_configuration
from datamix_operator.metrics import Metrics, serve
from datamix_operator.progress import ProgressTracker
from datamix_operator.reconcile import Reconciler
from datamix_operator.sweep.controller import SweepController
from datamix_operator.sweep.fit import Fitter
from datamix_operator.sweep.kube import SweepClient
from datamix_operator.sweep.metrics import SweepMetrics
from datamix_operator.sweep.reconcile import SweepReconciler

log = logging.getLogger("datamix_operator")


def operator_settings(config: OperatorConfig) -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
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


def build_registry(
    config: OperatorConfig,
    reconciler: Reconciler,
    controller: Controller,
    kube: ClientKube,
    progress: ProgressTracker | None = None,
    sweeps: SweepController | None = None,
) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    job_api = config.job_api
    ours = {LABEL_MANAGED_BY: MANAGED_BY}

    @kopf.on.login(id="login", registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return connection_info(load_client_configuration())

    @kopf.on.startup(id="startup", registry=registry)
    async def startup(memo: kopf.Memo, **_: Any) -> None:
        memo["resync"] = asyncio.create_task(resync_loop(config, controller, kube, sweeps), name="datamix resync")

    @kopf.on.cleanup(id="cleanup", registry=registry)
    async def cleanup(memo: kopf.Memo, **_: Any) -> None:
        controller.stop()
        if sweeps is not None:
            sweeps.stop()
        task = memo.get("resync")
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @kopf.on.event(GROUP, VERSION, PLURAL, id="dmx", registry=registry)
    def experiment_event(type: str, body: kopf.Body, namespace: str | None, name: str, **_: Any) -> None:
        if namespace is None:
            return
        deleted = type == "DELETED"
        if deleted:
            controller.forget(namespace, name)
        controller.submit(
            reconciler.on_experiment(namespace, name, body.metadata.get("resourceVersion"), deleted=deleted, body=body)
        )

    @kopf.on.event(job_api.group, job_api.version, job_api.plural, id="job", labels=ours, registry=registry)
    def job_event(type: str, body: kopf.Body, namespace: str | None, **_: Any) -> None:
        if namespace is None:
            return
        controller.submit(reconciler.on_job(namespace, dict(body), deleted=(type == "DELETED")))

    if sweeps is not None:
        sweep_handlers(registry, sweeps)

    def master_finished(body: kopf.Body, **_: Any) -> bool:
        return (body.get("status") or {}).get("phase") in ("Succeeded", "Failed")  # the pod's phase

    @kopf.on.event(
        "", "v1", "pods", id="pod", labels={**ours, REPLICA_TYPE_LABEL: MASTER_REPLICA}, when=master_finished,
        registry=registry,
    )
    def pod_event(body: kopf.Body, namespace: str | None, **_: Any) -> None:
        experiment = body.metadata.labels.get(LABEL_EXPERIMENT)
        if experiment and namespace:
            controller.enqueue(namespace, experiment)

    if progress is not None:

        @kopf.on.event(
            "", "v1", "pods", id="master", labels={**ours, REPLICA_TYPE_LABEL: MASTER_REPLICA}, registry=registry
        )
        def master_event(type: str, body: kopf.Body, **_: Any) -> None:
            progress.observe_pod(body, deleted=(type == "DELETED"))

    return registry


def sweep_handlers(registry: kopf.OperatorRegistry, sweeps: SweepController) -> None:
    @kopf.on.event(GROUP, VERSION, SWEEP_PLURAL, id="dms", registry=registry)
    def sweep_event(type: str, namespace: str | None, name: str, **_: Any) -> None:
        if namespace is None:
            return
        sweeps.on_sweep(namespace, name, deleted=(type == "DELETED"))

    # The same watch as experiment_event (kopf watches a resource once): trials and final runs.
    @kopf.on.event(GROUP, VERSION, PLURAL, id="dmx-sweep", labels={LABEL_SWEEP: kopf.PRESENT}, registry=registry)
    def sweep_experiment_event(body: kopf.Body, namespace: str | None, **_: Any) -> None:
        if namespace is not None:
            sweeps.on_experiment(namespace, dict(body.metadata.labels))


async def resync_loop(config: OperatorConfig, controller: Controller, kube: ClientKube,
                      sweeps: SweepController | None = None) -> None:
    """Reconcile every experiment and sweep every `resync_seconds`, whatever the watches delivered."""
    loop = asyncio.get_running_loop()
    with concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="resync") as pool:
        while True:
            await asyncio.sleep(config.resync_seconds)
            for namespace in config.namespaces or (None,):
                try:
                    items = await loop.run_in_executor(pool, kube.list_experiments, namespace)
                except KubeError as err:
                    log.warning("resync: cannot list experiments in %s: %s", namespace or "all namespaces", err)
                    continue
                for item in items:
                    meta = item.get("metadata") or {}
                    controller.enqueue(meta["namespace"], meta["name"], full=True)
                if sweeps is None:
                    continue
                try:
                    swept = await loop.run_in_executor(pool, sweeps.reconciler.kube.list_sweeps, namespace)
                except KubeError as err:  # e.g. the sweep CRD is not installed
                    log.debug("resync: cannot list sweeps in %s: %s", namespace or "all namespaces", err)
                    continue
                for item in swept:
                    meta = item.get("metadata") or {}
                    sweeps.enqueue(meta["namespace"], meta["name"])


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
    kube = ClientKube(job_api=config.job_api, pool_size=max(32, config.workers * 2))
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
    controller = Controller(reconciler, errors=metrics.reconcile_errors, workers=config.workers)
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
    registry = build_registry(config, reconciler, controller, kube, progress, sweeps)
    scope = "all namespaces" if config.clusterwide else ", ".join(config.namespaces)
    log.info("datamix operator: watching %s; API server %s; PyTorchJobs at %s", scope, kube.host,
             config.job_api.api_version)
    liveness = f"http://{config.bind_address}:{config.liveness_port}/healthz" if config.liveness_port else None
    kopf.run(
        registry=registry,
        settings=operator_settings(config),
        standalone=True,
        clusterwide=config.clusterwide,
        namespaces=list(config.namespaces),
        liveness_endpoint=liveness,
    )
