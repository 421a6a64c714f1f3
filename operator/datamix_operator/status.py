"""From observed objects to the experiment's status: pure functions, no API calls.

The reconciler observes the current run's PyTorchJob (and, once it has finished, its master pod),
turns them into a `RunState`, and `desired_status` turns that into the whole status document.
The document depends only on what was observed and on the previous status (for condition
transition times), never on the clock alone: reconciling an unchanged world yields an identical
document, so nothing is written (no churn for GitOps tools).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from datamix.experiment import RunPlan, mixture_shares, suspend_requested
from datamix.names import (
    CONDITION_TYPES,
    PYTORCHJOB_CONTAINER,
    TERMINAL_PHASES,
    Condition,
    JobCondition,
    Phase,
    Reason,
)
from datamix.runspec import NON_FINITE_LOSS_EXIT_CODE, TERMINATION_MESSAGE_LIMIT, RunResult, RunSpec, RunSpecError

MAX_PREVIOUS_RUNS = 16
MAX_MESSAGE = 1024
# Live-only progress fields: dropped when the run stops running (the rest stays as last read).
LIVE_ONLY_PROGRESS = ("tokensPerSecond", "estimatedCompletionTime")

_PHASE_SENTENCE = {
    Phase.PENDING: "The run is waiting for its pods",
    Phase.RUNNING: "The run is training",
    Phase.SUCCEEDED: "The run succeeded",
    Phase.FAILED: "The run failed",
    Phase.SUSPENDED: "The run is suspended",
}


@dataclass(frozen=True)
class Stall:
    """Why the operator cannot act: invalid input the schema could not catch, a missing CRD, or
    a child of the same name owned by something else."""

    reason: str
    message: str


@dataclass(frozen=True)
class RunState:
    """What a run's PyTorchJob (and master pod) say about it."""

    phase: str
    reason: str
    message: str
    restarting: bool = False
    restart_message: str = ""
    job_suspended: bool = False
    start_time: str | None = None
    completion_time: str | None = None
    result: RunResult | None = None
    result_problem: str | None = None  # why a finished run has no result


@dataclass(frozen=True)
class RunInfo:
    """What the status says about a run: its id, child names and, when known, its run spec."""

    id: str
    config_map: str
    job: str
    spec: RunSpec | None = None

    @classmethod
    def of(cls, plan: RunPlan) -> RunInfo:
        return cls(id=plan.id, config_map=plan.name, job=plan.name, spec=plan.spec)

    @property
    def target_samples(self) -> int | None:
        return self.spec.training.train_samples if self.spec else None

    @property
    def dataset_names(self) -> list[str]:
        return [d.name for d in self.spec.datasets] if self.spec else []


@dataclass(frozen=True)
class ProgressView:
    """The live part of status.progress (progress.py reads it from the trainer) and the verdict
    of the progress deadline, for one running run."""

    fields: Mapping[str, Any]  # status.progress fields besides targetSamples (empty: no reading yet)
    exceeded: bool = False
    deadline: int | None = None
    last_progress: str | None = None  # RFC 3339: when a step was last seen completing


@dataclass
class Observation:
    """Everything `desired_status` needs besides the experiment itself."""

    run: RunInfo | None
    state: RunState | None  # None: the run has no job (yet)
    stall: Stall | None = None
    previous_runs: list[dict[str, Any]] = field(default_factory=list)
    queue: str | None = None
    progress: ProgressView | None = None  # only while the run is Running
    recorded_progress: Mapping[str, Any] | None = None  # status.progress written earlier for this run


# ----------------------------------------------------------------------------------------------
# the job and its pods


def job_condition(job: Mapping[str, Any] | None, ctype: str) -> dict[str, Any] | None:
    """The job's condition of type `ctype` if its status is True."""
    for cond in ((job or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == ctype and cond.get("status") == "True":
            return dict(cond)
    return None


def master_container_state(pod: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The `terminated` state of the master pod's trainer container (current or last)."""
    if not pod:
        return None
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    for cs in statuses:
        if cs.get("name") != PYTORCHJOB_CONTAINER and len(statuses) > 1:
            continue
        terminated = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated")
        if terminated:
            return dict(terminated)
    return None


def read_result(pod: Mapping[str, Any] | None, run_id: str | None = None) -> tuple[RunResult | None, str | None]:
    """The run result from the master pod's termination message, or why there is none. With
    `run_id`, a result of any other run is refused."""
    if not pod:
        return None, "the master pod is gone"
    terminated = master_container_state(pod)
    if terminated is None:
        return None, "the master container has not terminated"
    message = (terminated.get("message") or "").strip()
    if not message:
        return None, "the master container left no termination message"
    if len(message.encode()) > TERMINATION_MESSAGE_LIMIT:
        return None, f"the termination message is over {TERMINATION_MESSAGE_LIMIT} bytes"
    try:
        result = RunResult.decode(message)
    except RunSpecError as err:
        return None, f"the termination message is not a run result ({_clip(str(err))})"
    if run_id is not None and result.run != run_id:
        return None, f"the result is for run {result.run[:16]!r}, not for this run ({run_id})"
    return result, None


def run_state(
    job: Mapping[str, Any], master_pod: Mapping[str, Any] | None = None, run_id: str | None = None
) -> RunState:
    """Interpret a PyTorchJob's conditions (training-operator v1: Created, Running, Restarting,
    Succeeded, Failed, Suspended) and, for a finished job, its master pod."""
    name = job.get("metadata", {}).get("name", "?")
    status = job.get("status") or {}
    start, completion = status.get("startTime"), status.get("completionTime")
    failed = job_condition(job, JobCondition.FAILED)
    if failed:
        message = f"PyTorchJob {name} failed"
        if failed.get("reason"):
            message += f" ({failed['reason']})"
        if failed.get("message"):
            message += f": {failed['message']}"
        terminated = master_container_state(master_pod)
        reason = Reason.JOB_FAILED
        if terminated and terminated.get("exitCode") == NON_FINITE_LOSS_EXIT_CODE:
            reason = Reason.NON_FINITE_LOSS
        if terminated and terminated.get("exitCode"):
            message += f"; the master exited with code {terminated['exitCode']}"
            if terminated.get("reason"):
                message += f" ({terminated['reason']})"
            # FallbackToLogsOnError: a failed trainer's last log lines are its termination message.
            last_words = (terminated.get("message") or "").strip().splitlines()[-3:]
            if last_words:
                message += ": " + " / ".join(line.strip() for line in last_words)
        return RunState(Phase.FAILED, reason, _clip(message), start_time=start, completion_time=completion)
    if job_condition(job, JobCondition.SUCCEEDED):
        result, problem = read_result(master_pod, run_id)
        message = f"PyTorchJob {name} succeeded"
        if result is not None and result.train_loss is not None:
            message += f" (loss {format_loss(result.train_loss)})"
        if problem:
            message += f"; no run result: {problem}"
        return RunState(
            Phase.SUCCEEDED,
            Reason.JOB_SUCCEEDED,
            message,
            start_time=start,
            completion_time=completion,
            result=result,
            result_problem=problem,
        )
    suspended = job_condition(job, JobCondition.SUSPENDED)
    if suspended:
        return RunState(
            Phase.SUSPENDED, Reason.SUSPENDED, f"PyTorchJob {name} is suspended", job_suspended=True, start_time=start
        )
    restarting = job_condition(job, JobCondition.RESTARTING)
    if restarting:
        detail = restarting.get("message") or "a replica is restarting"
        return RunState(
            Phase.RUNNING,
            Reason.JOB_RESTARTING,
            f"PyTorchJob {name} is restarting: {detail}",
            restarting=True,
            restart_message=_clip(str(detail)),
            start_time=start,
        )
    if job_condition(job, JobCondition.RUNNING):
        return RunState(Phase.RUNNING, Reason.JOB_RUNNING, f"PyTorchJob {name} is running", start_time=start)
    return RunState(Phase.PENDING, Reason.JOB_PENDING, f"PyTorchJob {name} is waiting for its pods", start_time=start)


def is_terminal(state: RunState | None) -> bool:
    return state is not None and state.phase in TERMINAL_PHASES


# ----------------------------------------------------------------------------------------------
# the status document


def format_loss(loss: float) -> str:
    return f"{loss:.4g}"


def normalised_mixture(spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The mixture of a spec that could not be planned (shares of what it says, if they make one)."""
    mixture = ((spec.get("datasets") or {}).get("mixture")) or []
    try:
        shares = mixture_shares(mixture)
    except (RunSpecError, KeyError, TypeError, ValueError):
        return []
    return [{"name": d["name"], "share": s} for d, s in zip(mixture, shares, strict=True)]


def result_status(result: RunResult, names: Sequence[str]) -> dict[str, Any]:
    """status.result: per-dataset lists mapped to the run spec's dataset names."""
    out: dict[str, Any] = {
        "steps": result.steps,
        "consumedSamples": result.consumed_samples,
        "wallSeconds": result.wall_seconds,
    }
    if result.train_loss is not None:
        out["trainLoss"] = result.train_loss
    if result.mean_validation_loss is not None:
        out["meanValidationLoss"] = result.mean_validation_loss
    # A list left out of the termination message (RunResult.encode) is empty: its fields are absent.
    if result.tokens or result.validation_loss or result.epoch_tokens:
        shares = result.realised_shares
        datasets: list[dict[str, Any]] = []
        for i, name in enumerate(names):
            entry: dict[str, Any] = {"name": name}
            if i < len(result.validation_loss) and result.validation_loss[i] is not None:
                entry["validationLoss"] = result.validation_loss[i]
            if i < len(result.tokens):
                entry["tokens"] = result.tokens[i]
                entry["share"] = shares[i]
            if i < len(result.epoch_tokens):
                entry["epochTokens"] = result.epoch_tokens[i]
            datasets.append(entry)
        out["datasets"] = datasets
    return out


def run_summary(run: RunInfo, state: RunState | None, *, retired: bool = False) -> dict[str, Any]:
    """status.run (and an entry of status.previousRuns)."""
    out: dict[str, Any] = {"id": run.id, "configMap": run.config_map, "job": run.job}
    if state is None:
        out.update(phase=Phase.PENDING, reason=Reason.NOT_CREATED)
        return out
    out["phase"] = state.phase
    out["reason"] = Reason.SUPERSEDED if retired and state.phase not in TERMINAL_PHASES else state.reason
    if state.start_time:
        out["startTime"] = state.start_time
    if state.completion_time:
        out["completionTime"] = state.completion_time
    if state.result is not None:
        if state.result.train_loss is not None:
            out["trainLoss"] = state.result.train_loss
        if state.result.mean_validation_loss is not None:
            out["meanValidationLoss"] = state.result.mean_validation_loss
    return out


def merge_previous_runs(old: Sequence[Mapping[str, Any]], retired: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Newest first, one entry per run id, at most MAX_PREVIOUS_RUNS."""
    out = [dict(r) for r in retired]
    seen = {r.get("id") for r in out}
    out.extend(dict(r) for r in old if r.get("id") not in seen)
    return out[:MAX_PREVIOUS_RUNS]


def experiment_phase(obs: Observation, suspend: bool) -> tuple[str, str, str]:
    """(phase, reason, message) of the experiment."""
    state = obs.state
    if state is None:
        if obs.stall:
            return Phase.PENDING, obs.stall.reason, obs.stall.message
        return Phase.PENDING, Reason.JOB_PENDING, "Creating the run's PyTorchJob"
    if state.phase == Phase.SUSPENDED and not suspend:
        queue = f" {obs.queue}" if obs.queue else ""
        return Phase.PENDING, Reason.JOB_QUEUED, f"Waiting for the job to be admitted (queue{queue})"
    if suspend and state.phase == Phase.SUSPENDED:
        return Phase.SUSPENDED, Reason.SUSPENDED, "spec.suspend is true: the run's pods were removed"
    return state.phase, state.reason, state.message


def desired_conditions(obs: Observation, phase: str, reason: str, message: str) -> dict[str, tuple[str, str, str]]:
    """type -> (status, reason, message) for every condition type."""
    state = obs.state
    summary = _PHASE_SENTENCE[phase]
    conds: dict[str, tuple[str, str, str]] = {}
    if state is not None and obs.run is not None:
        created = f"Created PyTorchJob {obs.run.job} for run {obs.run.id}"
        conds[Condition.CREATED] = ("True", Reason.JOB_CREATED, created)
    elif obs.stall is not None:
        conds[Condition.CREATED] = ("False", obs.stall.reason, obs.stall.message)
    else:
        conds[Condition.CREATED] = ("False", Reason.NOT_CREATED, "The run's PyTorchJob does not exist yet")
    running = phase == Phase.RUNNING and not (state and state.restarting)
    conds[Condition.RUNNING] = ("True", reason, message) if running else ("False", reason, summary)
    if state is not None and state.restarting:
        conds[Condition.RESTARTING] = ("True", Reason.JOB_RESTARTING, state.restart_message or message)
    else:
        conds[Condition.RESTARTING] = ("False", reason, summary)
    conds[Condition.PROGRESSING] = progressing_condition(obs, phase, running, reason, summary)
    conds[Condition.SUCCEEDED] = ("True", reason, message) if phase == Phase.SUCCEEDED else ("False", reason, summary)
    conds[Condition.FAILED] = ("True", reason, message) if phase == Phase.FAILED else ("False", reason, summary)
    conds[Condition.SUSPENDED] = ("True", reason, message) if phase == Phase.SUSPENDED else ("False", reason, summary)
    if obs.stall is not None:
        conds[Condition.STALLED] = ("True", obs.stall.reason, obs.stall.message)
    else:
        conds[Condition.STALLED] = ("False", Reason.AS_EXPECTED, "The operator can reconcile the experiment")
    return conds


def progressing_condition(
    obs: Observation, phase: str, running: bool, reason: str, summary: str
) -> tuple[str, str, str]:
    """Progressing: True while training steps complete; False with ProgressDeadlineExceeded when
    none completed within spec.progressDeadlineSeconds (the run keeps running)."""
    view = obs.progress
    if not running or view is None:
        return ("False", reason, summary)
    if view.exceeded:
        since = f" (last at {view.last_progress})" if view.last_progress else ""
        return (
            "False",
            Reason.PROGRESS_DEADLINE_EXCEEDED,
            f"No training step completed within progressDeadlineSeconds ({view.deadline}s){since}; "
            "the run is not stopped: check its pods and logs",
        )
    fields = view.fields
    if "consumedSamples" in fields:
        target = f" of {obs.run.target_samples}" if obs.run is not None and obs.run.target_samples else ""
        return ("True", Reason.STEPS_COMPLETING, f"Training: {fields['consumedSamples']}{target} samples consumed")
    return ("True", reason, "The run is training (no reading of its metrics yet)")


def merge_conditions(
    old: Sequence[Mapping[str, Any]],
    desired: Mapping[str, tuple[str, str, str]],
    generation: int,
    now: str,
) -> list[dict[str, Any]]:
    """Conditions keyed by type; lastTransitionTime moves only when the status flips."""
    by_type = {c.get("type"): c for c in old}
    out: list[dict[str, Any]] = []
    for ctype in CONDITION_TYPES:
        status, reason, message = desired[ctype]
        prev = by_type.get(ctype)
        if prev is not None and prev.get("status") == status and prev.get("lastTransitionTime"):
            since = prev["lastTransitionTime"]
        else:
            since = now
        out.append(
            {
                "type": ctype,
                "status": status,
                "reason": reason,
                "message": _clip(message),
                "lastTransitionTime": since,
                "observedGeneration": generation,
            }
        )
    return out


def progress_status(obs: Observation, target: int | None) -> dict[str, Any]:
    """status.progress: the result's count once the run finished; the live reading while it
    runs; what was last read (less the rate and the estimate) in between."""
    state = obs.state
    out: dict[str, Any] = {}
    if state is not None and state.result is not None:
        out.update({k: v for k, v in (obs.recorded_progress or {}).items() if k not in LIVE_ONLY_PROGRESS})
        consumed = state.result.consumed_samples
        out["consumedSamples"] = consumed
        out["percent"] = min(100, math.floor(100 * consumed / target)) if target else 100
        if state.result.train_loss is not None:
            out["trainLoss"] = state.result.train_loss
        if state.result.mean_validation_loss is not None:
            out["meanValidationLoss"] = state.result.mean_validation_loss
            out["validationStep"] = state.result.steps
    elif obs.progress is not None:
        out.update(obs.progress.fields)
    elif obs.recorded_progress:
        out.update({k: v for k, v in obs.recorded_progress.items() if k not in LIVE_ONLY_PROGRESS})
    if target is not None:
        out["targetSamples"] = target
    elif not out:
        return {}
    return out


def desired_status(experiment: Mapping[str, Any], obs: Observation, now: str) -> dict[str, Any]:
    """The whole status document of an experiment for what was observed."""
    meta = experiment.get("metadata") or {}
    spec = experiment.get("spec") or {}
    old = experiment.get("status") or {}
    generation = int(meta.get("generation") or 0)
    suspend = suspend_requested(experiment)
    resources = spec.get("resources") or {}
    phase, reason, message = experiment_phase(obs, suspend)

    status: dict[str, Any] = {
        "observedGeneration": generation,
        "phase": phase,
        "shape": f"{resources.get('nodes', 0)}x{resources.get('gpusPerNode', 0)}",
    }
    state = obs.state
    run = obs.run
    if run is not None and run.spec is not None:
        status["mixture"] = [{"name": d.name, "share": d.share} for d in run.spec.datasets]
    else:
        mixture = normalised_mixture(spec)
        if mixture:
            status["mixture"] = mixture
    if run is not None:
        status["run"] = run_summary(run, state)
    if state is not None and state.start_time:
        status["startTime"] = state.start_time
    if state is not None and state.completion_time:
        status["completionTime"] = state.completion_time
    target = run.target_samples if run is not None else None
    progress = progress_status(obs, target)
    if progress:
        status["progress"] = progress
    if state is not None and state.result is not None:
        status["result"] = result_status(state.result, run.dataset_names if run else [])
        if state.result.train_loss is not None:
            status["loss"] = format_loss(state.result.train_loss)
    elif isinstance(progress.get("trainLoss"), int | float):
        status["loss"] = format_loss(progress["trainLoss"])
    if obs.previous_runs:
        status["previousRuns"] = [dict(r) for r in obs.previous_runs[:MAX_PREVIOUS_RUNS]]
    desired = desired_conditions(obs, phase, reason, message)
    status["conditions"] = merge_conditions(old.get("conditions") or [], desired, generation, now)
    return status


# ----------------------------------------------------------------------------------------------
# comparing and patching


def same(a: Any, b: Any) -> bool:
    """Equality as the API server sees it: 2 == 2.0, dict order irrelevant."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    return bool(a == b)


def merge_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """An RFC 7386 JSON merge patch turning `old` into `new` (lists are replaced whole)."""
    patch: dict[str, Any] = {}
    for key in old:
        if key not in new:
            patch[key] = None
    for key, value in new.items():
        before = old.get(key)
        if key in old and same(before, value):
            continue
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            patch[key] = merge_patch(before, value)
        else:
            patch[key] = value
    return patch


@dataclass(frozen=True)
class Transition:
    """An Event to post: something a person would want to see in `kubectl describe`."""

    type: str  # Normal | Warning
    reason: str
    message: str


_WARNING_TYPES = frozenset({Condition.FAILED, Condition.STALLED, Condition.RESTARTING})


def transitions(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Transition]:
    """Events for the conditions that became True (or changed reason while True) and for a
    new run replacing the old one."""
    out: list[Transition] = []
    old_run = (old.get("run") or {}).get("id")
    new_run = (new.get("run") or {}).get("id")
    if old_run and new_run and old_run != new_run:
        message = f"Run {new_run} replaces run {old_run}: the run-defining spec changed"
        out.append(Transition("Normal", Reason.RUN_STARTED, message))
    before = {c.get("type"): c for c in old.get("conditions") or []}
    for cond in new.get("conditions") or []:
        if cond["type"] == Condition.PROGRESSING:
            # Only the deadline is news; Progressing True with Running is the JobRunning event.
            was = (before.get(Condition.PROGRESSING) or {}).get("reason")
            if cond["reason"] == Reason.PROGRESS_DEADLINE_EXCEEDED and was != Reason.PROGRESS_DEADLINE_EXCEEDED:
                out.append(Transition("Warning", Reason.PROGRESS_DEADLINE_EXCEEDED, cond["message"]))
            elif cond["status"] == "True" and was == Reason.PROGRESS_DEADLINE_EXCEEDED:
                resumed = f"Training steps complete again: {cond['message']}"
                out.append(Transition("Normal", Reason.PROGRESS_RESUMED, resumed))
            continue
        if cond["status"] != "True":
            if cond["type"] == Condition.SUSPENDED and (before.get(Condition.SUSPENDED) or {}).get("status") == "True":
                out.append(Transition("Normal", Reason.RESUMED, "spec.suspend is false: the run resumes"))
            continue
        prev = before.get(cond["type"])
        if prev and prev.get("status") == "True" and prev.get("reason") == cond["reason"]:
            continue
        kind = "Warning" if cond["type"] in _WARNING_TYPES else "Normal"
        out.append(Transition(kind, cond["reason"], cond["message"]))
    return out


def _clip(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 3] + "..."
