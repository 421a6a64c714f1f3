"""One level-based reconciliation of one DataMixtureExperiment (no kopf, no threads here).

`Reconciler.reconcile(namespace, name)` reads the world afresh and moves it one step towards the
spec; it is the state machine of docs/operator.md, one method per step:

1. plan the current run (`plan_run`: id, child names, run spec) and render its children, once per
   generation; input only the operator can check -> Stalled/InvalidSpec;
2. find the experiment's jobs (a missing PyTorchJob CRD -> Stalled/PyTorchJobCRDMissing, retried);
3. create-or-get the ConfigMap and the job (409 AlreadyExists is success once the owner UID
   matches), create a running run's ConfigMap again if it was deleted, then apply a change of
   spec.suspend;
4. observe the job (and, once it finished, its master pod's termination message);
5. write the status if and only if it differs, post Events for the transitions;
6. retire jobs of earlier runs: their state is in status.previousRuns by now, so delete them.

What triggers a reconciliation, and that one experiment is never reconciled twice at once, is the
controller's business (controller.py, on a work queue); `on_experiment` and `on_job` only decide
whether an event asks for one.
"""

from __future__ import annotations

import copy
import datetime
import itertools
import json
import logging
import os
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from datamix import API_VERSION, KIND
from datamix.errors import UserError
from datamix.experiment import RUN_ID_SCHEME, RunPlan, plan_run, queue_name
from datamix.names import (
    ANNOTATION_SUSPEND,
    JOB_NAME_LABEL,
    LABEL_EXPERIMENT,
    LABEL_MANAGED_BY,
    LABEL_RUN,
    LABEL_RUN_ID_SCHEME,
    MANAGED_BY,
    MASTER_REPLICA,
    REPLICA_TYPE_LABEL,
    TERMINAL_PHASES,
    JobCondition,
    Phase,
    Reason,
)
from datamix.runspec import RUN_SPEC_KEY, RunSpec, RunSpecError
from datamix_operator.admission import Admission, Refused
from datamix_operator.kube import AlreadyExists, KubeApi, KubeError, ResourceMissing, without_managed_fields
from datamix_operator.metrics import Metrics
from datamix_operator.progress import ProgressTracker
from datamix_operator.render import DEFAULT_TRAINER_IMAGE, render_configmap, render_pytorchjob
from datamix_operator.status import (
    Observation,
    ProgressView,
    RunInfo,
    RunState,
    Stall,
    desired_status,
    job_condition,
    merge_patch,
    merge_previous_runs,
    run_state,
    run_summary,
    same,
    transitions,
)

log = logging.getLogger("datamix_operator")

# Fault injection for the restart tests: the process exits (as if killed) at the named point.
CRASH_ENV = "DATAMIX_OPERATOR_CRASH_AT"
CRASH_POINTS = ("configmap-created", "job-created", "status-written", "run-recorded")


def utcnow() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def crash_point(name: str) -> None:
    if name in (os.environ.get(CRASH_ENV) or "").split(","):
        log.error("crash point %s reached (%s): exiting", name, CRASH_ENV)
        logging.shutdown()
        os._exit(137)


def crd_missing(err: ResourceMissing) -> Stall:
    return Stall(
        Reason.CRD_MISSING,
        f"{err.args[0].split(': ', 1)[-1]}: install the Kubeflow training-operator (its PyTorchJob CRD); "
        "the operator retries",
    )


def owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    return any(
        ref.get("uid") == uid and ref.get("controller")
        for ref in (obj.get("metadata") or {}).get("ownerReferences") or []
    )


def run_id_scheme(obj: Mapping[str, Any]) -> str:
    """The run-id scheme a child was made with (unlabelled: made before the label, same scheme)."""
    return str((obj["metadata"].get("labels") or {}).get(LABEL_RUN_ID_SCHEME, RUN_ID_SCHEME))


def experiment_selector(name: str) -> str:
    return f"{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_EXPERIMENT}={name}"


# Every experiment's children at once (the resync lists them once per namespace).
ALL_EXPERIMENTS_SELECTOR = f"{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_EXPERIMENT}"


class Conflict(Exception):
    """A child of the run's name exists but belongs to another owner (e.g. a deleted experiment
    of the same name whose children the garbage collector has not removed yet)."""


@dataclass(frozen=True)
class PlannedRun:
    """An experiment generation's current run: its plan, and the admission's verdict on the
    children rendered from it. The children are rendered again when needed (a millisecond), not
    kept: at 1000 experiments they would be most of the operator's memory."""

    version: tuple[str, int]  # (uid, generation): the spec, and so the plan, changes only with these
    plan: RunPlan
    trainer_image: str
    refused: Refused | None = None  # by the cluster's policy or the children's size

    @property
    def configmap(self) -> dict[str, Any]:
        return render_configmap(self.plan)

    @property
    def job(self) -> dict[str, Any]:
        return render_pytorchjob(self.plan, trainer_image_default=self.trainer_image)


@dataclass(frozen=True)
class Snapshot:
    """An experiment and its jobs as the resync listed them (one LIST per resource type and
    namespace for all experiments). Used instead of a GET and a LIST only if nothing about the
    experiment was seen (a watch event, a reconciliation) since `mark`, taken before the LISTs:
    then the LISTs are at least as fresh as a GET would be."""

    body: dict[str, Any]
    jobs: list[dict[str, Any]] | None  # the jobs labelled with the experiment (None: not listed)
    mark: int  # Reconciler.mark() before the LISTs


@dataclass(frozen=True)
class Request:
    """A trigger's ask to reconcile one experiment."""

    namespace: str
    name: str
    full: bool = False  # also look for jobs of earlier runs (a job not of the current run, the resync)
    body: dict[str, Any] | None = None  # a just-created experiment's body (saves the GET)
    snapshot: Snapshot | None = None  # the resync's (saves the GET and the LIST)


@dataclass
class Pass:
    """What one reconciliation of one experiment has found so far."""

    namespace: str
    name: str
    exp: dict[str, Any]
    full: bool
    listed_jobs: list[dict[str, Any]] | None = None  # the resync's snapshot of the experiment's jobs
    stall: Stall | None = None
    retry: float | None = None  # the delay of a retry the situation asks for
    planned: PlannedRun | None = None  # the current run (None: the spec is invalid)
    run: RunInfo | None = None  # the run the status follows: the planned one, else the last valid one
    jobs: dict[str, dict[str, Any]] | None = None  # the experiment's jobs by name (None: cannot tell)
    live: dict[str, Any] | None = None  # the followed run's job
    state: RunState | None = None
    stale: list[dict[str, Any]] = field(default_factory=list)  # jobs of earlier runs
    created: bool = False  # this pass created the run's job

    @property
    def uid(self) -> str:
        return str(self.exp["metadata"]["uid"])

    @property
    def old_status(self) -> dict[str, Any]:
        return self.exp.get("status") or {}

    @property
    def old_run(self) -> dict[str, Any]:
        return self.old_status.get("run") or {}

    @property
    def recorded(self) -> bool:
        """The status already follows the current run."""
        return self.run is not None and self.old_run.get("id") == self.run.id

    @property
    def finished(self) -> bool:
        """The current run's end (and result) is recorded: it is never run again."""
        return self.recorded and self.old_run.get("phase") in TERMINAL_PHASES


class Reconciler:
    def __init__(
        self,
        kube: KubeApi,
        *,
        trainer_image: str = DEFAULT_TRAINER_IMAGE,
        metrics: Metrics | None = None,
        clock: Callable[[], str] = utcnow,
        crd_retry_seconds: float = 30.0,
        instance: str = "datamix-operator",
        post_event: Callable[[str, dict[str, Any]], None] | None = None,
        progress: ProgressTracker | None = None,
        admission: Admission | None = None,
    ) -> None:
        self.kube = kube
        self.admission = admission or Admission(None)
        self.trainer_image = trainer_image
        self.metrics = metrics or Metrics()
        self.clock = clock
        self.crd_retry_seconds = crd_retry_seconds
        self.instance = instance
        self.post_event = post_event or self._post_event_now
        self.progress = progress
        # What this process remembers of each experiment; all of it is dropped by `forget`.
        self._written: dict[tuple[str, str], str] = {}  # resourceVersion our last status patch produced
        self._listed: set[tuple[str, str]] = set()  # experiments whose jobs this process listed
        self._planned: dict[tuple[str, str], PlannedRun] = {}
        self._configmap_gone: set[tuple[str, str]] = set()  # experiments whose running run's ConfigMap was deleted
        self._recorded_runs: dict[tuple[str, str], RunInfo] = {}  # the run a status records, read back
        # When anything about an experiment was last seen (an event, a reconciliation), on one
        # counter with `mark`: a resync snapshot older than that is not used.
        self._seq = itertools.count(1)
        self._touched: dict[tuple[str, str], int] = {}
        # The newest body the watch delivered of each experiment and job (jobs trimmed to what the
        # reconciliation reads): used instead of a GET once the watch has delivered the echo of
        # this process's own last write of the object (until then a GET is needed). Experiments
        # are kept as compact JSON without managedFields: a tenth of the parsed object's memory,
        # and parsing it is a faster private copy than a deep copy.
        self._bodies: dict[tuple[str, str], str] = {}
        self._jobs: dict[tuple[str, str], dict[str, Any]] = {}
        self._created: dict[tuple[str, str], dict[str, Any]] = {}  # experiment -> the job just created
        self._echo_due: dict[tuple[str, str, str], str] = {}  # (kind, ns, name) -> rv our last write produced
        # ... and of each job.
        self._job_seen: dict[tuple[str, str], str] = {}
        self._masters: dict[str, dict[str, Any] | None] = {}  # finished job uid -> its master pod (None: none)

    # ------------------------------------------------------------------------------------------
    # which events ask for a reconciliation

    def on_experiment(
        self,
        namespace: str,
        name: str,
        resource_version: str | None,
        deleted: bool = False,
        body: Mapping[str, Any] | None = None,
    ) -> Request | None:
        key = (namespace, name)
        self._touch(key)
        if deleted:
            self.forget(namespace, name)
            return None
        if body is not None:
            self._bodies[key] = _compact(body)
            self._seen_echo("dmx", namespace, name, resource_version)
        if resource_version and self._written.get(key) == resource_version:
            return None  # the echo of our own status write
        # A new experiment (no status, never written by us): the event's body is as fresh as a
        # GET would be, and saves a round trip on the way to its job (kopf's; copied when used).
        fresh = body is not None and not body.get("status") and key not in self._written
        return Request(namespace, name, body=dict(body) if fresh and body is not None else None)

    def on_job(self, namespace: str, job: Mapping[str, Any], deleted: bool = False) -> Request | None:
        meta = job.get("metadata") or {}
        experiment = (meta.get("labels") or {}).get(LABEL_EXPERIMENT)
        if not experiment:
            return None
        self._touch((namespace, experiment))
        key = (namespace, meta.get("name", ""))
        if deleted:
            self._jobs.pop(key, None)
        else:
            self._jobs[key] = _trimmed_job(job)
            self._seen_echo("job", *key, meta.get("resourceVersion"))
        seen = _job_fingerprint(job)
        if not deleted and self._job_seen.get(key) == seen:
            return None  # e.g. our own annotation patch: nothing the status depends on changed
        if deleted:
            self._job_seen.pop(key, None)
            self._masters.pop(meta.get("uid", ""), None)
        else:
            self._job_seen[key] = seen
        planned = self._planned.get((namespace, experiment))
        current_job = planned.plan.name if planned is not None else None
        # a job that is not the current run's: look for all of them (retire what is stale)
        return Request(namespace, experiment, full=not deleted and meta.get("name") != current_job)

    def on_configmap(self, namespace: str, configmap: Mapping[str, Any], deleted: bool) -> Request | None:
        """A run's ConfigMap deleted by someone else while its run goes on: the pods of a restart
        would not start without it, so the reconciliation creates it again."""
        meta = configmap.get("metadata") or {}
        experiment = (meta.get("labels") or {}).get(LABEL_EXPERIMENT)
        if not deleted or not experiment:
            return None
        planned = self._planned.get((namespace, experiment))
        if planned is not None and planned.plan.name != meta.get("name"):
            return None  # an earlier run's, retired by us
        self._configmap_gone.add((namespace, experiment))
        self._touch((namespace, experiment))
        return Request(namespace, experiment)

    def on_master_pod(self, namespace: str, pod: Mapping[str, Any]) -> Request | None:
        """A finished master pod: its job's result may be readable now."""
        meta = pod.get("metadata") or {}
        experiment = (meta.get("labels") or {}).get(LABEL_EXPERIMENT)
        if not experiment:
            return None
        self._touch((namespace, experiment))
        for ref in meta.get("ownerReferences") or []:
            if self._masters.get(ref.get("uid", ""), False) is None:
                del self._masters[ref["uid"]]  # read it, no longer "no master pod"
        return Request(namespace, experiment)

    def _seen_echo(self, kind: str, namespace: str, name: str, resource_version: str | None) -> None:
        due = self._echo_due.get((kind, namespace, name))
        if due is not None and due == resource_version:
            del self._echo_due[(kind, namespace, name)]  # the watch has caught up with our write

    def _wrote(self, kind: str, namespace: str, obj: Mapping[str, Any]) -> None:
        """This process wrote `obj` (the API server's answer): its watch cache is behind until the
        echo of the write arrives."""
        meta = obj.get("metadata") or {}
        self._echo_due[(kind, namespace, meta.get("name", ""))] = str(meta.get("resourceVersion", ""))

    def _watched(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The object as the watch delivered it, if that is at least as new as our last write (an
        experiment: a private copy)."""
        if (kind, namespace, name) in self._echo_due:
            return None
        if kind != "dmx":
            return self._jobs.get((namespace, name))
        text = self._bodies.get((namespace, name))
        return json.loads(text) if text is not None else None

    def mark(self) -> int:
        """Now, on the counter of `_touch`: taken before the resync's LISTs (see Snapshot)."""
        return next(self._seq)

    def _touch(self, key: tuple[str, str]) -> None:
        self._touched[key] = next(self._seq)

    def resync_requests(self, namespace: str | None) -> list[Request]:
        """A full reconciliation of every experiment in `namespace` (None: all), each with a
        snapshot of the experiment and its jobs: one LIST of experiments and one of jobs in all,
        instead of a GET and a LIST per experiment (each such LIST makes the API server scan
        every job of the namespace)."""
        mark = self.mark()
        experiments = self.kube.list_experiments(namespace)
        jobs: dict[tuple[str, str], list[dict[str, Any]]] | None = defaultdict(list)
        try:
            for job in self.kube.list_jobs(namespace, ALL_EXPERIMENTS_SELECTOR):
                meta = job["metadata"]
                # as listed: private, and already without pod templates (kube.without_replica_specs)
                jobs[meta["namespace"], meta["labels"][LABEL_EXPERIMENT]].append(job)  # type: ignore[index]
        except KubeError as err:  # e.g. the CRD is missing: each reconciliation finds out itself
            log.debug("resync: cannot list PyTorchJobs in %s: %s", namespace or "all namespaces", err)
            jobs = None
        out = []
        for exp in experiments:
            exp.setdefault("apiVersion", API_VERSION)  # a LIST's items may omit them
            exp.setdefault("kind", KIND)
            key = (exp["metadata"]["namespace"], exp["metadata"]["name"])
            listed = jobs.get(key, []) if jobs is not None else None
            out.append(Request(*key, full=True, snapshot=Snapshot(exp, listed, mark)))
        return out

    def reset(self) -> None:
        """Forget what this process learnt about the children: after a gap in leadership another
        process may have acted, so the next reconciliation of each experiment lists its jobs (and
        a standby's handlers kept no watch cache)."""
        self._listed.clear()
        self._job_seen.clear()
        self._bodies.clear()
        self._jobs.clear()
        self._echo_due.clear()

    def forget(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        self._written.pop(key, None)
        self._listed.discard(key)
        self._planned.pop(key, None)
        self._configmap_gone.discard(key)
        self._recorded_runs.pop(key, None)
        self._touched.pop(key, None)
        self._bodies.pop(key, None)
        self._created.pop(key, None)
        self._echo_due.pop(("dmx", namespace, name), None)
        if self.progress is not None:
            self.progress.untrack(namespace, name)
        self.metrics.observe_phase(namespace, name, None)

    # ------------------------------------------------------------------------------------------
    # the reconciliation

    def reconcile(
        self,
        namespace: str,
        name: str,
        full: bool = False,
        new: dict[str, Any] | None = None,
        snapshot: Snapshot | None = None,
    ) -> float | None:
        """Reconcile one experiment; returns the delay of a retry the situation asks for (None:
        none); an error propagates (the controller retries with backoff). `full` also looks for jobs
        of earlier runs; `new`: the body of a just-created experiment (instead of a GET);
        `snapshot`: the resync's (instead of a GET and a LIST, if still current)."""
        started = time.monotonic()
        key: tuple[str, str] | None = (namespace, name)
        try:
            if snapshot is not None and self._touched.get((namespace, name), 0) > snapshot.mark:
                snapshot = None  # something happened since the resync's LISTs: read afresh
            exp = copy.deepcopy(new) if new is not None and (namespace, name) not in self._written else None
            exp = snapshot.body if snapshot is not None else exp
            exp = exp if exp is not None else self._watched("dmx", namespace, name)
            exp = exp if exp is not None else self.kube.get_experiment(namespace, name)
            if exp is None:
                self.forget(namespace, name)
                key = None
                return None
            if exp["metadata"].get("deletionTimestamp"):
                return None  # the garbage collector removes the children (owner references)
            p = Pass(namespace, name, exp, full, listed_jobs=snapshot.jobs if snapshot is not None else None)
            self._plan_current_run(p)  # 1
            self._find_jobs(p)  # 2
            self._ensure_children(p)  # 3
            if p.created and new is not None and p.stall is None and p.live is not None:
                # A new experiment's job is there: its status follows in a reconciliation queued
                # behind the other new experiments' (a burst gets its jobs first).
                self._created[(namespace, name)] = _trimmed_job(p.live)
                return 0.0
            self._observe_run(p)  # 4
            self._write_status(p)  # 5
            self._retire_earlier_runs(p)  # 6
            return p.retry
        finally:
            if key is not None:
                self._touch(key)  # what it wrote is newer than any snapshot listed before
            self.metrics.reconcile_duration.observe(time.monotonic() - started)

    def _plan_current_run(self, p: Pass) -> None:
        """1. The current run as the spec defines it."""
        try:
            planned = self._plan(p.namespace, p.exp)
            if planned.refused is not None:
                p.stall = Stall(planned.refused.reason, str(planned.refused))
                return
            p.planned = planned
            p.run = RunInfo.of(planned.plan)
        except (UserError, RunSpecError) as err:
            p.stall = Stall(Reason.INVALID_SPEC, str(err))

    def _find_jobs(self, p: Pass) -> None:
        """2. The jobs that exist (ours: labelled and owned by this experiment). Listing them all
        finds jobs of earlier runs; it is needed only when the run changed, after a restart of the
        operator, and in the resync (whose snapshot has them). Otherwise a GET of the current run's
        job is enough (a LIST makes the API server filter every job of the namespace)."""
        key = (p.namespace, p.name)
        recorded_run = p.old_run.get("id")
        must_list = (
            p.full
            or p.run is None
            or (recorded_run is not None and recorded_run != p.run.id)
            or (bool(p.old_status) and key not in self._listed)
        )
        if not p.old_status:
            self._listed.add(key)  # a new experiment: no earlier runs to look for
        try:
            if p.listed_jobs is not None:
                p.jobs = {j["metadata"]["name"]: j for j in p.listed_jobs if owned_by(j, p.uid)}
                self._listed.add(key)
            elif must_list:
                p.jobs = {
                    j["metadata"]["name"]: j
                    for j in self.kube.list_jobs(p.namespace, experiment_selector(p.name))
                    if owned_by(j, p.uid)
                }
                self._listed.add(key)
            elif not p.old_status:
                # A new experiment: create right away (409 AlreadyExists -> adopt); or the status
                # follows the job the reconciliation before created (reconcile: step 3).
                created = self._created.pop(key, None)
                p.jobs = {created["metadata"]["name"]: created} if created is not None else {}
            else:
                assert p.run is not None
                current = self._watched("job", p.namespace, p.run.job)
                current = current if current is not None else self.kube.get_job(p.namespace, p.run.job)
                p.jobs = {p.run.job: current} if current is not None and owned_by(current, p.uid) else {}
        except ResourceMissing as err:
            p.jobs = None
            p.stall = p.stall or crd_missing(err)
            p.retry = self.crd_retry_seconds
        foreign = {n: scheme for n, j in (p.jobs or {}).items() if (scheme := run_id_scheme(j)) != RUN_ID_SCHEME}
        if foreign:
            named = min(foreign)
            # Another version's operator made them: its ids are not comparable with ours, so
            # neither retire them nor start a second run beside them (its deletion wakes us).
            p.jobs = None
            p.stall = p.stall or Stall(
                Reason.UNKNOWN_RUN_ID_SCHEME,
                f"PyTorchJob {named} was made with run-id scheme {foreign[named]!r}, which this operator "
                f"(scheme {RUN_ID_SCHEME!r}) does not know; it is left alone. Run the operator version that made "
                "it, or delete the job to start this operator's run",
            )
        if p.planned is None and p.old_run:
            p.run = self._recorded_run(p.namespace, p.name, p.old_run)  # keep following the last valid run

    def _ensure_children(self, p: Pass) -> None:
        """3. Create-or-get the current run's children, apply spec.suspend."""
        if p.jobs is None or p.run is None:
            return
        p.live = p.jobs.get(p.run.job)
        if p.planned is None:
            return
        if p.live is None and p.finished:
            return  # its job was deleted (by hand, or with the PyTorchJob CRD): the status keeps the result
        if p.live is None:
            created_before = p.recorded and any(
                c.get("type") == "Created" and c.get("status") == "True" for c in p.old_status.get("conditions") or []
            )
            try:
                p.live = self._create_children(p.namespace, p.exp, p.planned)
                p.created = True
                if created_before:
                    self._event(p.exp, "Warning", Reason.JOB_RECREATED,
                                f"PyTorchJob {p.run.job} was deleted while its run was going; created again, it "
                                "resumes from the run's newest checkpoint")
            except ResourceMissing as err:
                p.stall = crd_missing(err)
                p.retry = self.crd_retry_seconds
            except Conflict as err:
                p.stall = Stall(Reason.CHILD_CONFLICT, str(err))
                p.retry = 10.0
        elif not p.finished and (p.namespace, p.name) in self._configmap_gone:
            self._restore_configmap(p)
        if p.live is not None:
            p.live = self._apply_suspend(p.namespace, p.planned.plan, p.live)

    def _observe_run(self, p: Pass) -> None:
        """4. The followed run's state, and the jobs of earlier runs."""
        p.state = self._observe(p.namespace, p.live, p.exp) if p.live is not None else None
        if p.jobs is not None and p.planned is not None:
            p.stale = [j for n, j in p.jobs.items() if p.run is None or n != p.run.job]

    def _write_status(self, p: Pass) -> None:
        """5. The status, written only when it changed; Events for its transitions."""
        if p.live is None and p.finished:
            self.metrics.observe_phase(p.namespace, p.name, p.old_status.get("phase"))
            return  # a finished run whose job is gone: what was recorded stays
        run, state, old_status, old_run = p.run, p.state, p.old_status, p.old_run
        carried = None
        finished_unread = state is not None and state.result is None and state.phase in TERMINAL_PHASES
        if finished_unread and run is not None and old_run.get("id") == run.id and old_status.get("result"):
            carried = old_status  # the master pod is gone; keep what was read from it
        retired = [self._retired_summary(p.namespace, j) for j in _newest_first(p.stale)]
        if (
            p.planned is not None
            and run is not None
            and old_run.get("id")
            and old_run["id"] != run.id
            and old_run["id"] not in {r["id"] for r in retired}
        ):
            retired.append(_as_retired(old_run))  # its job is gone already: record it as last seen
        previous = merge_previous_runs(old_status.get("previousRuns") or [], retired)
        recorded = old_status.get("progress") if run is not None and old_run.get("id") == run.id else None
        view = self._progress(p.namespace, p.exp, run, state, p.live, recorded)
        obs = Observation(
            run=run,
            state=state,
            stall=p.stall,
            previous_runs=previous,
            queue=queue_name(p.exp),
            progress=view,
            recorded_progress=recorded,
        )
        new_status = desired_status(p.exp, obs, self.clock())
        if carried is not None:
            for field_name in ("result", "loss", "progress"):
                if field_name in carried:
                    new_status[field_name] = carried[field_name]
        if not same(old_status, new_status):
            patch = {"status": merge_patch(old_status, new_status)}
            written = self.kube.patch_experiment_status(p.namespace, p.name, patch)
            self._written[(p.namespace, p.name)] = (written.get("metadata") or {}).get("resourceVersion", "")
            self._wrote("dmx", p.namespace, written)
            crash_point("status-written")
            self._count_and_announce(p.exp, old_status, new_status)
        self.metrics.observe_phase(p.namespace, p.name, new_status["phase"])

    def _retire_earlier_runs(self, p: Pass) -> None:
        """6. Delete the jobs (and ConfigMaps) of earlier runs, recorded in status.previousRuns."""
        if p.stale:
            crash_point("run-recorded")
            for job in p.stale:
                job_name = job["metadata"]["name"]
                self.kube.delete_job(p.namespace, job_name)
                self.kube.delete_configmap(p.namespace, job_name)
                self._event(p.exp, "Normal", Reason.RUN_RETIRED, f"Deleted PyTorchJob {job_name} of an earlier run")
        # A new experiment (first generation, no status yet) has no earlier runs: no LIST.
        new = not p.old_status and int(p.exp["metadata"].get("generation") or 1) <= 1
        if p.planned is not None and p.run is not None and (p.stale or (p.old_run.get("id") != p.run.id and not new)):
            for cm in self.kube.list_configmaps(p.namespace, experiment_selector(p.name)):
                cm_name = cm["metadata"]["name"]
                if cm_name != p.run.config_map and owned_by(cm, p.uid) and run_id_scheme(cm) == RUN_ID_SCHEME:
                    self.kube.delete_configmap(p.namespace, cm_name)

    # ------------------------------------------------------------------------------------------
    # steps

    def _plan(self, namespace: str, exp: dict[str, Any]) -> PlannedRun:
        """The current run, planned and admitted once per experiment UID and generation."""
        meta = exp["metadata"]
        version = (meta["uid"], int(meta.get("generation") or 0))
        planned = self._planned.get((namespace, meta["name"]))
        if planned is None or planned.version != version:
            planned = PlannedRun(version, plan_run(exp, namespace), self.trainer_image)
            try:
                # The cluster's policy and the children's size, before anything is created.
                self.admission.check(namespace, exp, (planned.configmap, planned.job))
            except Refused as err:
                planned = PlannedRun(version, planned.plan, self.trainer_image, refused=err)
            self._planned[(namespace, meta["name"])] = planned
        return planned

    def _create_children(self, namespace: str, exp: dict[str, Any], planned: PlannedRun) -> dict[str, Any]:
        uid = exp["metadata"]["uid"]
        self._create_configmap(namespace, uid, planned)
        crash_point("configmap-created")
        job = planned.job
        job_name = job["metadata"]["name"]
        try:
            live = self.kube.create_job(namespace, job)
            self._wrote("job", namespace, live)
            # its ADDED event tells nothing new: no reconciliation for it
            self._job_seen[(namespace, job_name)] = _job_fingerprint(live)
            self.metrics.runs_created.inc()
            log.info("created PyTorchJob %s/%s", namespace, job_name)
        except AlreadyExists:
            # Created by an earlier incarnation of the operator whose list missed it.
            found = self.kube.get_job(namespace, job_name)
            if found is None or not owned_by(found, uid):
                raise Conflict(
                    f"PyTorchJob {job_name} exists and is not this experiment's; waiting for it to be deleted"
                ) from None
            live = found
        crash_point("job-created")
        return live

    def _create_configmap(self, namespace: str, uid: str, planned: PlannedRun) -> bool:
        """Create-or-get the run's ConfigMap; True if this call created it."""
        configmap = planned.configmap
        self._configmap_gone.discard((namespace, planned.plan.owner.name))
        try:
            self.kube.create_configmap(namespace, configmap)
            return True
        except AlreadyExists:
            existing = self.kube.get_configmap(namespace, configmap["metadata"]["name"])
            if existing is not None and not owned_by(existing, uid):
                raise Conflict(
                    f"ConfigMap {configmap['metadata']['name']} exists and is not this experiment's; "
                    "waiting for it to be deleted"
                ) from None
            return False

    def _restore_configmap(self, p: Pass) -> None:
        """The running run's ConfigMap was deleted: the same rendering again, byte-identical."""
        assert p.planned is not None and p.run is not None
        try:
            if self._create_configmap(p.namespace, p.uid, p.planned):
                self._event(p.exp, "Warning", Reason.CONFIGMAP_RECREATED,
                            f"ConfigMap {p.run.config_map} was deleted while its run was going; created again, "
                            "identical")
        except Conflict as err:
            p.stall = Stall(Reason.CHILD_CONFLICT, str(err))
            p.retry = 10.0

    def _apply_suspend(self, namespace: str, plan: RunPlan, job: dict[str, Any]) -> dict[str, Any]:
        """Act on a change of spec.suspend. With a Kueue queue, runPolicy.suspend is Kueue's: the
        operator sets it only when the user's spec.suspend turns true, and never undoes Kueue."""
        if job_condition(job, JobCondition.SUCCEEDED) or job_condition(job, JobCondition.FAILED):
            return job
        want = plan.suspend
        queue = plan.queue
        recorded = (job["metadata"].get("annotations") or {}).get(ANNOTATION_SUSPEND)
        actual = bool(((job.get("spec") or {}).get("runPolicy") or {}).get("suspend", False))
        patch: dict[str, Any] = {}
        if recorded != ("true" if want else "false"):
            patch["metadata"] = {"annotations": {ANNOTATION_SUSPEND: "true" if want else "false"}}
            if want or not queue:
                patch["spec"] = {"runPolicy": {"suspend": want}}
        elif not queue and actual != want:
            patch["spec"] = {"runPolicy": {"suspend": want}}
        if not patch:
            return job
        log.info("PyTorchJob %s/%s: suspend=%s", namespace, job["metadata"]["name"], want)
        patched = self.kube.patch_job(namespace, job["metadata"]["name"], patch)
        self._wrote("job", namespace, patched)
        return patched

    def _observe(self, namespace: str, job: dict[str, Any], exp: Mapping[str, Any] | None = None) -> RunState:
        terminal = bool(job_condition(job, JobCondition.SUCCEEDED) or job_condition(job, JobCondition.FAILED))
        pod = None
        if terminal:
            uid = job["metadata"].get("uid", "")
            if uid in self._masters:
                pod = self._masters[uid]
            else:  # read once; a master pod that finishes later clears a None (on_master_pod)
                pod = self._masters[uid] = self._master_pod(namespace, job, exp)
        run_id = (job["metadata"].get("labels") or {}).get(LABEL_RUN)
        return run_state(job, pod, run_id=run_id)

    def _master_pod(
        self, namespace: str, job: Mapping[str, Any], exp: Mapping[str, Any] | None
    ) -> dict[str, Any] | None:
        """The job's newest master pod. Labels alone prove nothing (anyone who may create a pod can
        copy them): only a pod the job itself owns may report the run's result."""
        job_name, job_uid = job["metadata"]["name"], job["metadata"].get("uid", "")
        pods = self.kube.list_pods(namespace, f"{JOB_NAME_LABEL}={job_name},{REPLICA_TYPE_LABEL}={MASTER_REPLICA}")
        owned = [p for p in pods if owned_by(p, job_uid)]
        foreign = sorted((p.get("metadata") or {}).get("name", "?") for p in pods if not owned_by(p, job_uid))
        if foreign and exp is not None:
            self._event(
                exp,
                "Warning",
                Reason.FOREIGN_POD,
                f"ignored pod(s) {', '.join(foreign)}: labelled as the master of {job_name} but not owned by it",
            )
        if not owned:
            return None
        # The newest incarnation holds the final termination message.
        return max(owned, key=lambda p: (p.get("metadata") or {}).get("creationTimestamp") or "")

    def _progress(
        self,
        namespace: str,
        exp: Mapping[str, Any],
        run: RunInfo | None,
        state: RunState | None,
        job: Mapping[str, Any] | None,
        recorded: Mapping[str, Any] | None,
    ) -> ProgressView | None:
        """Hand a Running run to the progress tracker (any other: take it back); its view."""
        if self.progress is None:
            return None
        name = exp["metadata"]["name"]
        if run is None or state is None or job is None or state.phase != Phase.RUNNING:
            self.progress.untrack(namespace, name)
            return None
        deadline = exp["spec"].get("progressDeadlineSeconds")
        return self.progress.track(
            namespace,
            name,
            run.id,
            run.job,
            deadline=int(deadline) if deadline else None,
            target_samples=run.target_samples,
            job_uid=(job.get("metadata") or {}).get("uid", ""),
            recorded=recorded,
            started=state.start_time,
        )

    def _retired_summary(self, namespace: str, job: dict[str, Any]) -> dict[str, Any]:
        name = job["metadata"]["name"]
        run_id = (job["metadata"].get("labels") or {}).get(LABEL_RUN, name.rsplit("-", 1)[-1])
        info = RunInfo(id=run_id, config_map=name, job=name)
        return run_summary(info, self._observe(namespace, job), retired=True)

    def _recorded_run(self, namespace: str, name: str, recorded: Mapping[str, Any]) -> RunInfo | None:
        """The run the status records, while the spec is invalid: the plan this process made of it,
        else (after a restart) the run spec in its ConfigMap."""
        if not recorded.get("id") or not recorded.get("job"):
            return None
        planned = self._planned.get((namespace, name))
        if planned is not None and planned.plan.id == recorded["id"]:
            return RunInfo.of(planned.plan)
        known = self._recorded_runs.get((namespace, name))
        if known is not None and known.id == recorded["id"]:
            return known
        spec = None
        cm = self.kube.get_configmap(namespace, recorded.get("configMap") or recorded["job"])
        if cm is not None:
            try:
                spec = RunSpec.from_json((cm.get("data") or {}).get(RUN_SPEC_KEY, ""))
            except RunSpecError:
                spec = None
        info = RunInfo(recorded["id"], recorded.get("configMap") or recorded["job"], recorded["job"], spec)
        if cm is not None:
            self._recorded_runs[(namespace, name)] = info
        return info

    def _count_and_announce(self, exp: dict[str, Any], old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
        for t in transitions(old, new):
            if t.reason == Reason.JOB_SUCCEEDED:
                self.metrics.runs_succeeded.inc()
            elif t.reason in (Reason.JOB_FAILED, Reason.NON_FINITE_LOSS):
                self.metrics.runs_failed.inc()
            self._event(exp, t.type, t.reason, t.message)

    def _event(self, exp: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        meta = exp["metadata"]
        now = self.clock()
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": exp["apiVersion"],
                "kind": exp["kind"],
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": MANAGED_BY},
            "reportingComponent": MANAGED_BY,
            "reportingInstance": self.instance,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        self.post_event(meta["namespace"], body)

    def _post_event_now(self, namespace: str, body: dict[str, Any]) -> None:
        try:
            self.kube.create_event(namespace, body)
        except KubeError as err:  # events are auxiliary; conditions carry the same information
            log.warning("could not post event %s in %s: %s", body.get("reason"), namespace, err)


def _compact(obj: Mapping[str, Any]) -> str:
    """`obj` as compact JSON, without metadata.managedFields (`obj` itself is left as it is)."""
    meta = without_managed_fields(dict(obj.get("metadata") or {}))
    return json.dumps({**obj, "metadata": meta}, separators=(",", ":"))


def _trimmed_job(job: Mapping[str, Any]) -> dict[str, Any]:
    """What the reconciliation reads of a job (not its pod templates, the bulk of it)."""
    meta = job.get("metadata") or {}
    keep = ("name", "namespace", "uid", "resourceVersion", "labels", "annotations", "ownerReferences",
            "creationTimestamp", "deletionTimestamp")
    out: dict[str, Any] = {"metadata": copy.deepcopy({k: meta[k] for k in keep if k in meta})}
    run_policy = (job.get("spec") or {}).get("runPolicy")
    if run_policy is not None:
        out["spec"] = {"runPolicy": copy.deepcopy(run_policy)}
    if job.get("status") is not None:
        out["status"] = copy.deepcopy(job["status"])
    return out


def _job_fingerprint(job: Mapping[str, Any]) -> str:
    """What of a job the experiment's status depends on (a change of anything else, e.g. our own
    annotation, asks for no reconciliation)."""
    return json.dumps([job.get("status") or None, (job.get("metadata") or {}).get("deletionTimestamp")],
                      sort_keys=True)


def _newest_first(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(jobs, key=lambda j: j["metadata"].get("creationTimestamp") or "", reverse=True)


def _as_retired(run: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(run)
    if out.get("phase") not in TERMINAL_PHASES:
        out["reason"] = Reason.SUPERSEDED
    return out
