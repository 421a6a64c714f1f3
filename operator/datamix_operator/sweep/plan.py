"""A DataMixtureSweep as the operator sees it: the search engine's reading of the manifest
(`datamix.search.sweep.Sweep`: defaults, bounds, trial mixtures, the trial and final experiments)
plus what the operator adds to the experiments it creates (namespace, owner reference, its own
labels). Pure: no API calls.

Trial i is `<sweep>-t<NNN>` with `Sweep.trial_shares(i)`, a pure function of the spec and i, so an
operator that restarts recreates nothing and changes nothing; `datamix sweep run` trains the very
same experiments locally.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from datamix.names import LABEL_MANAGED_BY, LABEL_PART_OF, MANAGED_BY, PART_OF
from datamix.search.sweep import Sweep, parse_sweep
from datamix.sweep_schema import SWEEP_KIND


@dataclass(frozen=True)
class SweepPlan:
    sweep: Sweep
    uid: str
    namespace: str
    objective: dict[str, float]  # dataset name -> weight > 0, summing to 1

    @classmethod
    def read(cls, manifest: Mapping[str, Any]) -> SweepPlan:
        """The sweep's settings; what only the operator can judge is a UserError naming the field."""
        sweep = parse_sweep(dict(manifest))
        if sweep.search.max_epochs is not None:
            sweep.final_tokens()  # the final run's length must plan (maxEpochs divides by it)
        weights = {k: float(v) for k, v in (sweep.objective or {}).items() if v > 0}
        if not weights:  # the default: the mean over every dataset with validation data
            weights = {d["name"]: 1.0 for d in sweep.experiment["datasets"]["mixture"] if d.get("validationPath")}
        total = math.fsum(weights.values())
        meta = manifest["metadata"]
        return cls(sweep=sweep, uid=meta.get("uid", ""), namespace=meta.get("namespace", ""),
                   objective={k: v / total for k, v in weights.items()})

    @property
    def name(self) -> str:
        return self.sweep.name

    @property
    def domains(self) -> tuple[str, ...]:
        return self.sweep.domains

    @property
    def prior(self) -> list[float]:
        return [float(p) for p in self.sweep.prior]

    @property
    def trials(self) -> int:
        return self.sweep.search.trials

    @property
    def parallelism(self) -> int:
        return self.sweep.search.parallelism

    @property
    def max_failed(self) -> int:
        return self.sweep.search.max_failed_trials

    @property
    def suspend(self) -> bool:
        return self.sweep.suspend

    @property
    def regression(self) -> str:
        return self.sweep.regression

    @property
    def has_final(self) -> bool:
        return self.sweep.final is not None

    def trial_shares(self, index: int) -> list[float]:
        return [float(s) for s in self.sweep.trial_shares(index)]

    def trial_experiment(self, index: int) -> dict[str, Any]:
        return self._owned(self.sweep.trial_manifest(index))

    def final_experiment(self, shares: Sequence[float]) -> dict[str, Any]:
        import numpy as np

        manifest = self.sweep.final_manifest(np.asarray(shares, dtype=float))
        queue = self.sweep.experiment["resources"].get("queueName")
        if queue and "resources" in (self.sweep.final or {}):
            manifest["spec"]["resources"].setdefault("queueName", queue)  # the trials' Kueue queue
        return self._owned(manifest)

    def _owned(self, manifest: dict[str, Any]) -> dict[str, Any]:
        meta = manifest["metadata"]
        meta["namespace"] = self.namespace
        meta["labels"] = {LABEL_MANAGED_BY: MANAGED_BY, LABEL_PART_OF: PART_OF, **meta["labels"]}
        meta["ownerReferences"] = [{"apiVersion": manifest["apiVersion"], "kind": SWEEP_KIND, "name": self.name,
                                    "uid": self.uid, "controller": True, "blockOwnerDeletion": True}]
        return manifest


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


def epoch_tokens(exp: Mapping[str, Any]) -> dict[str, int]:
    """Per-dataset tokens of one epoch (`epochTokens`) from an experiment's status.result; a
    dataset without a whole non-negative number there is of unknown size."""
    datasets = ((exp.get("status") or {}).get("result") or {}).get("datasets") or []
    out = {}
    for d in datasets:
        size = d.get("epochTokens")
        if isinstance(size, int) and not isinstance(size, bool) and size >= 0 and isinstance(d.get("name"), str):
            out[d["name"]] = size
    return out


def objective_of(losses: Mapping[str, float], objective: Mapping[str, float]) -> float | None:
    """The weighted objective, or None when a dataset of the objective has no loss."""
    if any(name not in losses for name in objective):
        return None
    return math.fsum(w * losses[name] for name, w in objective.items())
