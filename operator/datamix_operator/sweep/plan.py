"""A DataMixtureSweep's settings read once, and the experiments it creates (pure, no API calls).

Trial i is `<sweep>-t<NNN>` with the mixture `sampler.trial_mixture(seed, i, ...)`: a pure
function of the spec and i, so an operator that restarts recreates nothing and changes nothing.
Both the trials and `<sweep>-final` are the spec's `experiment` with the weights replaced (and,
for the final run, model/training/resources from `final`), owned by the sweep and labelled with
it. Defaults of the spec live in `datamix.sweep_schema`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from datamix import API_VERSION, KIND
from datamix.errors import UserError
from datamix.names import FINAL_TRIAL, LABEL_MANAGED_BY, LABEL_PART_OF, LABEL_SWEEP, LABEL_TRIAL, MANAGED_BY, PART_OF
from datamix.sweep_schema import (
    DEFAULT_MAX_FAILED_TRIALS,
    DEFAULT_PARALLELISM,
    DEFAULT_REGRESSION,
    DEFAULT_SAMPLER,
    DEFAULT_SEED,
    SWEEP_KIND,
    final_name,
    trial_name,
)

# Shares written into the trials' weights: enough digits that the realised mixture is the
# sampled one, few enough to keep 128 domains x 512 trials readable.
SHARE_DIGITS = 12


@dataclass(frozen=True)
class SweepPlan:
    name: str
    namespace: str
    uid: str
    domains: tuple[str, ...]
    prior: tuple[float, ...]  # normalised weights of spec.experiment
    objective: dict[str, float]  # dataset name -> weight, summing to 1
    min_share: dict[str, float]
    max_share: dict[str, float]
    trials: int
    parallelism: int
    seed: int
    sampler: str
    regression: str
    max_failed: int
    max_epochs: float | None
    suspend: bool
    final: dict[str, Any] | None

    @classmethod
    def read(cls, sweep: Mapping[str, Any]) -> SweepPlan:
        """The sweep's settings with defaults applied; what only the operator can check is a UserError."""
        meta = sweep["metadata"]
        spec = sweep["spec"]
        search = spec["search"]
        mixture = spec["experiment"]["datasets"]["mixture"]
        domains = tuple(d["name"] for d in mixture)
        weights = [float(d["weight"]) for d in mixture]
        total = math.fsum(weights)
        objective = {k: float(v) for k, v in (spec.get("objective") or {}).items() if v > 0}
        if not objective:
            objective = {d["name"]: 1.0 for d in mixture if d.get("validationPath")}
        norm = math.fsum(objective.values())
        if not objective or norm <= 0:
            raise UserError("spec.objective: no dataset to minimise the loss of; give one a validationPath")
        return cls(
            name=meta["name"],
            namespace=meta.get("namespace", ""),
            uid=meta.get("uid", ""),
            domains=domains,
            prior=tuple(w / total for w in weights),
            objective={k: float(v) / norm for k, v in objective.items()},
            min_share=dict(search.get("minShare") or {}),
            max_share=dict(search.get("maxShare") or {}),
            trials=int(search["trials"]),
            parallelism=int(search.get("parallelism", DEFAULT_PARALLELISM)),
            seed=int(search.get("seed", DEFAULT_SEED)),
            sampler=str(search.get("sampler", DEFAULT_SAMPLER)),
            regression=str(spec.get("regression", DEFAULT_REGRESSION)),
            max_failed=int(search.get("maxFailedTrials", DEFAULT_MAX_FAILED_TRIALS)),
            max_epochs=float(search["maxEpochs"]) if "maxEpochs" in search else None,
            suspend=bool(spec.get("suspend", False)),
            final=copy.deepcopy(spec["final"]) if "final" in spec else None,
        )


def owner_reference(sweep: Mapping[str, Any]) -> dict[str, Any]:
    meta = sweep["metadata"]
    return {"apiVersion": API_VERSION, "kind": SWEEP_KIND, "name": meta["name"], "uid": meta["uid"],
            "controller": True, "blockOwnerDeletion": True}


def _experiment(sweep: Mapping[str, Any], name: str, shares: Sequence[float], labels: dict[str, str],
                replace: Mapping[str, Any] | None = None) -> dict[str, Any]:
    spec = copy.deepcopy(sweep["spec"]["experiment"])
    spec.update(copy.deepcopy(dict(replace or {})))
    mixture = []
    for dataset, share in zip(spec["datasets"]["mixture"], shares, strict=True):
        if share > 0:  # a dataset held at share 0 is left out of training (weights must be > 0)
            mixture.append({**dataset, "weight": float(f"{share:.{SHARE_DIGITS}g}")})
    spec["datasets"]["mixture"] = mixture
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": name,
            "namespace": sweep["metadata"]["namespace"],
            "labels": {LABEL_MANAGED_BY: MANAGED_BY, LABEL_PART_OF: PART_OF,
                       LABEL_SWEEP: sweep["metadata"]["name"], **labels},
            "ownerReferences": [owner_reference(sweep)],
        },
        "spec": spec,
    }


def trial_experiment(sweep: Mapping[str, Any], index: int, shares: Sequence[float]) -> dict[str, Any]:
    return _experiment(sweep, trial_name(sweep["metadata"]["name"], index), shares,
                       {LABEL_TRIAL: str(index)})


def final_experiment(sweep: Mapping[str, Any], shares: Sequence[float]) -> dict[str, Any]:
    replace = copy.deepcopy(sweep["spec"].get("final") or {})
    queue = sweep["spec"]["experiment"]["resources"].get("queueName")
    if queue and "resources" in replace:
        replace["resources"].setdefault("queueName", queue)  # the trials' Kueue queue, unless final names one
    return _experiment(sweep, final_name(sweep["metadata"]["name"]), shares, {LABEL_TRIAL: FINAL_TRIAL},
                       replace=replace)


def experiment_shares(exp: Mapping[str, Any], domains: Sequence[str]) -> list[float]:
    """An experiment's normalised weights in the order of `domains` (0 for datasets it leaves out)."""
    weights = {d["name"]: float(d["weight"]) for d in exp["spec"]["datasets"]["mixture"]}
    total = math.fsum(weights.values())
    return [weights.get(name, 0.0) / total for name in domains]


def validation_losses(exp: Mapping[str, Any]) -> dict[str, float]:
    """Per-dataset final validation loss from an experiment's status.result."""
    datasets = ((exp.get("status") or {}).get("result") or {}).get("datasets") or []
    out = {}
    for d in datasets:
        loss = d.get("validationLoss")
        if isinstance(loss, int | float) and math.isfinite(loss):
            out[d["name"]] = float(loss)
    return out


def objective_of(losses: Mapping[str, float], objective: Mapping[str, float]) -> float | None:
    """The weighted objective, or None when a dataset of the objective has no loss."""
    if any(name not in losses for name in objective):
        return None
    return math.fsum(w * losses[name] for name, w in objective.items())
