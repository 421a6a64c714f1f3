"""One level-based reconciliation of one DataMixtureSweep (no kopf here).

Every trigger (the sweep changed, one of its experiments changed, the resync, a fit finished, a
retry) calls `SweepReconciler.reconcile(namespace, name)`, which reads the world afresh:

1. read the sweep's settings (`SweepPlan`); input only the operator can judge -> Stalled/InvalidSpec;
2. list the experiments labelled with the sweep and owned by it: trials by index, the final run;
3. classify the trials: active (unfinished), succeeded (with every objective dataset's
   validation loss), failed (failed, or finished without those losses);
4. unless suspended or past maxFailedTrials, create the lowest missing trial indices while fewer
   than `parallelism` are active. Names are `<sweep>-tNNN` and mixtures a pure function of
   (seed, index): a restarted operator re-creates nothing (a 409 is adopted if it is ours);
5. when every trial has finished: the fit (off this thread, `Fitter`), then the proposal in the
   status, then with `spec.final` the experiment `<sweep>-final` with the proposed shares;
   with maxEpochs, the domains' sizes come from the trials' results (`epochTokens`), and as soon
   as they show that no mixture can meet the caps the sweep stops (MaxEpochsInfeasible) instead
   of training trials for a proposal that cannot be made;
6. write the status when it differs.

The proposal is recorded in the status, and the final run is created from the status, so a
restart neither refits a finished sweep nor proposes differently. Calls for one sweep are
serialised and errors retried with a backoff by the work queue (`controller.py`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from datamix.errors import UserError
from datamix.names import FINAL_TRIAL, LABEL_SWEEP, LABEL_TRIAL, MANAGED_BY
from datamix.search.epochs import merge_sizes
from datamix.sweep_schema import final_name, trial_name
from datamix_operator.kube import AlreadyExists, KubeError
from datamix_operator.reconcile import owned_by, utcnow
from datamix_operator.status import merge_patch, same
from datamix_operator.sweep.fit import FitRequest, FitResult, Fitter
from datamix_operator.sweep.kube import SweepApi
from datamix_operator.sweep.metrics import SweepMetrics
from datamix_operator.sweep.plan import (
    SweepPlan,
    epoch_tokens,
    experiment_shares,
    objective_of,
    validation_losses,
)

log = logging.getLogger("datamix_operator")

INVALID_SPEC = "InvalidSpec"
CHILD_CONFLICT = "ChildConflict"
MAX_EPOCHS_INFEASIBLE = "MaxEpochsInfeasible"
SHARE_DECIMALS = 6  # the proposal's shares in the status
RECORDED_SHARE_TOLERANCE = 10.0**-SHARE_DECIMALS  # a recorded share is within this of the fitted one


@dataclass
class Trials:
    """The sweep's trials as observed, by index."""

    experiments: dict[int, dict[str, Any]] = field(default_factory=dict)
    active: set[int] = field(default_factory=set)
    failed: set[int] = field(default_factory=set)
    # index -> (shares in plan.domains order, objective-dataset losses, objective)
    succeeded: dict[int, tuple[list[float], list[float], float]] = field(default_factory=dict)
    # dataset name -> tokens of one epoch, merged over every trial that reported them
    sizes: dict[str, int] = field(default_factory=dict)


def classify(plan: SweepPlan, experiments: Mapping[int, dict[str, Any]]) -> Trials:
    out = Trials(experiments=dict(experiments))
    out.sizes = merge_sizes(epoch_tokens(exp) for exp in experiments.values())
    loss_domains = list(plan.objective)
    for index, exp in experiments.items():
        phase = (exp.get("status") or {}).get("phase")
        if phase == "Succeeded":
            losses = validation_losses(exp)
            objective = objective_of(losses, plan.objective)
            if objective is None:
                out.failed.add(index)  # finished without the losses the objective needs
            else:
                out.succeeded[index] = (experiment_shares(exp, plan.domains), [losses[d] for d in loss_domains],
                                        objective)
        elif phase == "Failed" or _stalled_invalid(exp):
            out.failed.add(index)
        else:
            out.active.add(index)
    return out


def _stalled_invalid(exp: Mapping[str, Any]) -> bool:
    """A trial the experiment operator refuses (its input is invalid) never finishes: a failure."""
    return any(c.get("type") == "Stalled" and c.get("status") == "True" and c.get("reason") == INVALID_SPEC
               for c in (exp.get("status") or {}).get("conditions") or [])


def fit_request(plan: SweepPlan, trials: Trials) -> FitRequest:
    order = sorted(trials.succeeded)
    search = plan.sweep.search
    return FitRequest(
        trials=[trial_name(plan.name, i) for i in order],
        domains=list(plan.domains),
        shares=[trials.succeeded[i][0] for i in order],
        loss_domains=list(plan.objective),
        losses=[trials.succeeded[i][1] for i in order],
        objective=plan.objective,
        prior=plan.prior,
        min_share=dict(search.min_share or {}),
        max_share=dict(search.max_share or {}),
        regression=plan.regression,
        seed=search.seed,
        **_repetition_request(plan, trials),
    )


def _repetition_request(plan: SweepPlan, trials: Trials) -> dict[str, Any]:
    repetition = plan.sweep.repetition(trials.sizes)
    if repetition is None:
        return {}
    return {"max_epochs": repetition.max_epochs, "epoch_tokens": dict(repetition.sizes),
            "final_tokens": repetition.final_tokens}


def infeasible_epochs(plan: SweepPlan, trials: Trials) -> str | None:
    """Why maxEpochs's caps leave no mixture, from the sizes known so far (more sizes only add
    caps, so a sweep infeasible now stays so), or None."""
    try:
        plan.sweep.repetition_bounds(trials.sizes)
    except UserError as err:
        return str(err)
    return None


def unknown_sizes_note(plan: SweepPlan, trials: Trials) -> str:
    """What the status says when maxEpochs could not cap some domains."""
    repetition = plan.sweep.repetition(trials.sizes)
    if plan.sweep.search.max_epochs is None:
        return ""
    unknown = repetition.unknown(plan.domains) if repetition else list(plan.domains)
    if not unknown:
        return ""
    return (f"; maxEpochs not applied to {', '.join(unknown)}: no trial reported their size (epochTokens: a trainer "
            "image older than it, or a result cut to fit the termination message)")


class SweepReconciler:
    def __init__(
        self,
        kube: SweepApi,
        fitter: Fitter,
        *,
        metrics: SweepMetrics | None = None,
        clock: Callable[[], str] = utcnow,
        schedule: Callable[[str, str, float], None] | None = None,
        post_event: Callable[[str, dict[str, Any]], None] | None = None,
        instance: str = "datamix-operator",
    ) -> None:
        self.kube = kube
        self.fitter = fitter
        self.metrics = metrics or SweepMetrics()
        self.clock = clock
        # How a finished fit asks for the next reconciliation (the controller's queue sets it).
        self.schedule: Callable[[str, str, float], None] = schedule or (lambda namespace, name, delay: None)
        self.post_event = post_event or self._post_event_now
        self.instance = instance

    def forget(self, namespace: str, name: str) -> None:
        """The sweep is gone: drop its fit results and its metrics."""
        self.fitter.forget(f"{namespace}/{name}")
        self.metrics.observe(namespace, name, None)

    def reconcile(self, namespace: str, name: str) -> float | None:
        """One step towards the spec; returns the delay of a retry the situation asks for. Errors
        propagate: the caller (SweepController's work queue) retries with a backoff."""
        sweep = self.kube.get_sweep(namespace, name)
        if sweep is None:
            self.forget(namespace, name)
            return None
        meta = sweep["metadata"]
        if meta.get("deletionTimestamp"):
            return None  # the garbage collector removes the trials (owner references)
        old: dict[str, Any] = sweep.get("status") or {}
        try:
            plan = SweepPlan.read(sweep)
        except UserError as err:
            return self._write(sweep, old, self._stalled(sweep, old, INVALID_SPEC, str(err)))

        # 2./3. what exists
        trial_exps: dict[int, dict[str, Any]] = {}
        final: dict[str, Any] | None = None
        for exp in self.kube.list_experiments_labelled(namespace, f"{LABEL_SWEEP}={name}"):
            if not owned_by(exp, meta["uid"]):
                continue
            trial = (exp["metadata"].get("labels") or {}).get(LABEL_TRIAL) or ""
            if trial == FINAL_TRIAL:
                final = exp
            elif trial.isdigit():
                trial_exps[int(trial)] = exp
        trials = classify(plan, trial_exps)
        too_many_failed = len(trials.failed) > plan.max_failed

        infeasible = infeasible_epochs(plan, trials) if final is None else None

        # 4. create trials up to the parallelism
        conflict: str | None = None
        if not too_many_failed and not plan.suspend and infeasible is None:
            room = plan.parallelism - len(trials.active)
            missing = [i for i in range(plan.trials) if i not in trials.experiments]
            for index in missing[: max(room, 0)]:
                created = self._create(namespace, plan.trial_experiment(index), meta["uid"])
                if created is None:
                    conflict = f"experiment {trial_name(name, index)} exists and is not this sweep's; " \
                               "delete it or rename the sweep"
                    break
                trials.experiments[index] = created
                trials.active.add(index)

        # 5. the fit, the proposal, the final run
        all_finished = len(trials.experiments) == plan.trials and not trials.active
        new = self._status(sweep, plan, trials, old)
        if conflict is not None:
            new = self._stalled(sweep, old, CHILD_CONFLICT, conflict, base=new)
            return self._write(sweep, old, new) or 10.0
        if too_many_failed:
            self._phase(new, "Failed", "TooManyFailedTrials",
                        f"{len(trials.failed)} trials failed, more than maxFailedTrials ({plan.max_failed})")
        elif infeasible is not None:
            # Recoverable by a shorter spec.final.training (the message says so): a Stalled condition too.
            self._phase(new, "Failed", MAX_EPOCHS_INFEASIBLE, infeasible)
            new = self._stalled(sweep, old, MAX_EPOCHS_INFEASIBLE, infeasible, base=new)
        elif not all_finished:
            if plan.suspend:
                self._phase(new, "Suspended", "Suspended",
                            f"spec.suspend: no new trials; {len(trials.active)} still running")
            else:
                self._phase(new, "Running" if trials.experiments else "Pending", "TrialsRunning",
                            f"{len(trials.succeeded) + len(trials.failed)} of {plan.trials} trials finished, "
                            f"{len(trials.active)} running")
        else:
            self._after_trials(sweep, plan, trials, old, new, final)
        return self._write(sweep, old, new, {trial_name(name, i): t[2] for i, t in trials.succeeded.items()})

    def _after_trials(self, sweep: dict[str, Any], plan: SweepPlan, trials: Trials, old: Mapping[str, Any],
                      new: dict[str, Any], final: dict[str, Any] | None) -> None:
        namespace, name = plan.namespace, plan.name
        proposal = old.get("proposal")
        if proposal and old.get("fit") and (final is not None or not self._over_repeated(plan, trials, proposal)):
            new["proposal"], new["fit"] = proposal, old["fit"]  # recorded: never refit a finished sweep
        else:
            result = self.fitter.result(f"{namespace}/{name}", fit_request(plan, trials),
                                        lambda: self.schedule(namespace, name, 0.0))
            if result is None:
                self._phase(new, "Fitting", "Fitting",
                            f"fitting {plan.regression} to {len(trials.succeeded)} trials")
                return
            if result.error is not None or result.shares is None:
                self._phase(new, "Failed", "FitFailed", result.error or "the fit gave no proposal")
                return
            self.metrics.fit_seconds.observe(result.seconds)
            new["fit"], new["proposal"] = self._fit_status(plan, result)
            proposal = new["proposal"]
        shares_by_name = {m["name"]: m["share"] for m in proposal["mixture"]}
        shares = [shares_by_name.get(d, 0.0) for d in plan.domains]
        if plan.has_final and final is None and plan.suspend:
            self._phase(new, "Suspended", "Suspended", "spec.suspend: the final run waits for spec.suspend: false")
            return
        if plan.has_final and final is None:
            final = self._create(namespace, plan.final_experiment(shares), plan.uid)
            if final is None:
                self._stalled(sweep, old, CHILD_CONFLICT,
                              f"experiment {final_name(name)} exists and is not this sweep's; delete it", base=new)
                self._phase(new, "Running", CHILD_CONFLICT, "the final run cannot be created")
                return
            self._event(sweep, "Normal", "FinalCreated", f"Created {final_name(name)} with the proposed mixture")
        if final is None:
            self._phase(new, "Succeeded", "Proposed", self._proposal_message(new) + unknown_sizes_note(plan, trials))
            return
        final_phase = (final.get("status") or {}).get("phase") or "Pending"
        record: dict[str, Any] = {"experiment": final["metadata"]["name"], "phase": final_phase}
        if "predictedObjective" in proposal:
            record["predictedObjective"] = proposal["predictedObjective"]
        observed = objective_of(validation_losses(final), plan.objective)
        if observed is not None:
            record["observedObjective"] = observed
        new["final"] = record
        if final_phase == "Succeeded":
            self._phase(new, "Succeeded", "FinalSucceeded",
                        self._proposal_message(new) + unknown_sizes_note(plan, trials))
        elif final_phase == "Failed":
            self._phase(new, "Failed", "FinalFailed", f"the final run {final['metadata']['name']} failed")
        else:
            self._phase(new, "Running", "FinalRunning", f"the final run {final['metadata']['name']} is {final_phase}")

    @staticmethod
    def _over_repeated(plan: SweepPlan, trials: Trials, proposal: Mapping[str, Any]) -> bool:
        """A recorded proposal that repeats a domain more than maxEpochs allows the final run as it
        is now (spec.final added or lengthened after the fit): it is refitted before the final
        run is created."""
        repetition = plan.sweep.repetition(trials.sizes)
        if repetition is None:
            return False
        shares = {m["name"]: m["share"] for m in proposal.get("mixture") or []}
        recorded = [shares.get(d, 0.0) for d in plan.domains]
        return bool(repetition.exceeded(plan.domains, recorded, tolerance=RECORDED_SHARE_TOLERANCE))

    # ------------------------------------------------------------------------------------------
    # status

    def _status(self, sweep: Mapping[str, Any], plan: SweepPlan, trials: Trials,
                old: Mapping[str, Any]) -> dict[str, Any]:
        finished = len(trials.succeeded) + len(trials.failed)
        status: dict[str, Any] = {
            "observedGeneration": sweep["metadata"].get("generation", 0),
            "trials": {"total": plan.trials, "created": len(trials.experiments), "active": len(trials.active),
                       "succeeded": len(trials.succeeded), "failed": len(trials.failed),
                       "done": f"{finished}/{plan.trials}"},
        }
        if trials.succeeded:
            index = min(trials.succeeded, key=lambda i: (trials.succeeded[i][2], i))
            status["best"] = {"trial": trial_name(plan.name, index), "objective": trials.succeeded[index][2]}
        if trials.experiments:
            status["startTime"] = old.get("startTime") or self.clock()
        return status

    @staticmethod
    def _fit_status(plan: SweepPlan, result: FitResult) -> tuple[dict[str, Any], dict[str, Any]]:
        fit: dict[str, Any] = {"regression": plan.regression, "trials": result.trials,
                               "seconds": round(result.seconds, 3)}
        if result.spearman is not None:
            fit["spearman"] = round(result.spearman, 4)
        assert result.shares is not None
        proposal: dict[str, Any] = {
            "mixture": [{"name": d, "share": round(s, SHARE_DECIMALS)}
                        for d, s in zip(plan.domains, result.shares, strict=True)],
        }
        for key, value in (("predictedObjective", result.predicted),
                           ("priorPredictedObjective", result.predicted_prior),
                           ("uniformPredictedObjective", result.predicted_uniform)):
            if value is not None:
                proposal[key] = value
        return fit, proposal

    @staticmethod
    def _proposal_message(status: Mapping[str, Any]) -> str:
        proposal = status.get("proposal") or {}
        fit = status.get("fit") or {}
        parts = [f"proposed mixture predicted {proposal.get('predictedObjective', float('nan')):.4g}"]
        if "priorPredictedObjective" in proposal:
            parts.append(f"prior {proposal['priorPredictedObjective']:.4g}")
        if "uniformPredictedObjective" in proposal:
            parts.append(f"uniform {proposal['uniformPredictedObjective']:.4g}")
        if "spearman" in fit:
            parts.append(f"fit Spearman {fit['spearman']:.3f}")
        return ", ".join(parts)

    def _phase(self, status: dict[str, Any], phase: str, reason: str, message: str) -> None:
        status["phase"], status["reason"], status["message"] = phase, reason, message[:4096]

    def _stalled(self, sweep: Mapping[str, Any], old: Mapping[str, Any], reason: str, message: str,
                 base: dict[str, Any] | None = None) -> dict[str, Any]:
        status = base if base is not None else {"observedGeneration": sweep["metadata"].get("generation", 0)}
        if "phase" not in status:
            self._phase(status, old.get("phase") or "Pending", reason, message)
        before = {c.get("type"): c for c in old.get("conditions") or []}.get("Stalled") or {}
        unchanged = before.get("status") == "True" and before.get("reason") == reason
        status["conditions"] = [{
            "type": "Stalled", "status": "True", "reason": reason, "message": message[:4096],
            "lastTransitionTime": before.get("lastTransitionTime") if unchanged else self.clock(),
            "observedGeneration": sweep["metadata"].get("generation", 0),
        }]
        return status

    def _write(self, sweep: dict[str, Any], old: Mapping[str, Any], new: dict[str, Any],
               objectives: dict[str, float] | None = None) -> float | None:
        meta = sweep["metadata"]
        if new.get("phase") in ("Succeeded", "Failed"):
            kept = old.get("completionTime") if old.get("phase") == new["phase"] else None
            new["completionTime"] = kept or self.clock()
        if not same(old, new):
            self.kube.patch_sweep_status(meta["namespace"], meta["name"], {"status": merge_patch(old, new)})
            if new.get("phase") != old.get("phase") and new.get("phase") in ("Fitting", "Succeeded", "Failed"):
                kind = "Warning" if new["phase"] == "Failed" else "Normal"
                self._event(sweep, kind, new.get("reason") or new["phase"], new.get("message") or "")
        self._observe(meta["namespace"], meta["name"], new, objectives or {})
        return None

    def _observe(self, namespace: str, name: str, status: Mapping[str, Any], objectives: dict[str, float]) -> None:
        counts = status.get("trials") or {}
        proposal = status.get("proposal") or {}
        predicted = {m: proposal[k] for m, k in (("proposal", "predictedObjective"),
                                                  ("prior", "priorPredictedObjective"),
                                                  ("uniform", "uniformPredictedObjective")) if k in proposal}
        self.metrics.observe(
            namespace, name, status.get("phase", "Pending"),
            counts={"pending": counts.get("total", 0) - counts.get("created", 0), "active": counts.get("active", 0),
                    "succeeded": counts.get("succeeded", 0), "failed": counts.get("failed", 0)},
            objectives=objectives,
            best=(status.get("best") or {}).get("objective"),
            predicted=predicted,
            spearman=(status.get("fit") or {}).get("spearman"),
        )

    # ------------------------------------------------------------------------------------------
    # children and events

    def _create(self, namespace: str, body: dict[str, Any], uid: str) -> dict[str, Any] | None:
        """Create-or-adopt an experiment of the sweep; None when the name is someone else's."""
        try:
            created = self.kube.create_experiment(namespace, body)
            log.info("sweep %s: created experiment %s/%s", body["metadata"]["labels"][LABEL_SWEEP], namespace,
                     body["metadata"]["name"])
            return created
        except AlreadyExists:
            existing = self.kube.get_experiment(namespace, body["metadata"]["name"])
            if existing is None or not owned_by(existing, uid):
                return None
            return existing

    def _event(self, sweep: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        meta = sweep["metadata"]
        now = self.clock()
        self.post_event(meta["namespace"], {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": sweep["apiVersion"], "kind": sweep["kind"], "name": meta["name"],
                               "namespace": meta["namespace"], "uid": meta["uid"]},
            "type": type_, "reason": reason, "message": message[:1024],
            "source": {"component": MANAGED_BY}, "reportingComponent": MANAGED_BY,
            "reportingInstance": self.instance, "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        })

    def _post_event_now(self, namespace: str, body: dict[str, Any]) -> None:
        try:
            self.kube.create_event(namespace, body)
        except KubeError as err:
            log.warning("could not post event %s in %s: %s", body.get("reason"), namespace, err)
