"""Fit and propose from a trials table: the work of `datamix sweep fit` and of a sweep's end."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import yaml

from datamix.errors import UserError
from datamix.search.epochs import Repetition
from datamix.search.proposer import Proposal, propose
from datamix.search.regression import DEFAULT_REGRESSION, REGRESSIONS, cross_validated_spearman, fit
from datamix.search.simplex import Bounds
from datamix.search.table import TrialTable, objective_weights

# How far past the trials a proposal may go: a domain's share at most this times its largest in a trial.
EXTRAPOLATION = 2.0


@dataclass(frozen=True)
class Fields:
    """How errors name each input: the manifest's field paths, or the command's flags."""

    objective: str
    regression: str
    min_share: str
    max_share: str
    max_epochs: str
    final_length: str  # where the final run's length is set


SWEEP_FIELDS = Fields(
    "spec.objective",
    "spec.regression",
    "spec.search.minShare",
    "spec.search.maxShare",
    "spec.search.maxEpochs",
    "spec.final.training",
)
FLAGS = Fields("--objective", "--regression", "--min-share", "--max-share", "--max-epochs", "--final-tokens")


@dataclass(frozen=True)
class FitResult:
    domains: tuple[str, ...]
    regression: str
    spearman: float
    trials: int
    proposal: Proposal
    observed: np.ndarray  # the trials' observed objective
    predicted_out_of_fold: np.ndarray  # each trial's objective predicted by a fit without it

    def mixture(self) -> list[dict[str, object]]:
        return [{"name": n, "share": float(s)} for n, s in zip(self.domains, self.proposal.shares, strict=True)]

    def to_yaml(self) -> str:
        doc = {
            "mixture": self.mixture(),
            "predictedObjective": round(self.proposal.predicted, 6),
            "predictedObjectivePrior": round(self.proposal.predicted_prior, 6),
            "predictedObjectiveUniform": round(self.proposal.predicted_uniform, 6),
            "fit": {"regression": self.regression, "spearman": round(self.spearman, 4), "trials": self.trials},
        }
        return yaml.safe_dump(doc, sort_keys=False)


def fit_and_propose(
    table: TrialTable,
    *,
    objective: Mapping[str, float] | None = None,
    regression: str = DEFAULT_REGRESSION,
    min_share: Mapping[str, float] | None = None,
    max_share: Mapping[str, float] | None = None,
    max_epochs: float | None = None,
    domain_tokens: Mapping[str, int] | None = None,
    final_tokens: int | None = None,
    prior: np.ndarray | None = None,
    seed: int = 0,
    fields: Fields | None = None,
) -> FitResult:
    """Fit `regression` to the table, measure it, and propose the best feasible mixture.

    `prior` defaults to the trials' mean mixture (a table carries no prior); `fields` names the inputs
    in errors (the manifest's fields, or the command's flags). With `max_epochs`, the domains' sizes
    (`domain_tokens`: tokens per epoch; a domain left out is not capped) and the final run's
    `final_tokens`, no domain is proposed a share that repeats it more than `max_epochs` times.
    The proposal pays `kl_strength` per nat of KL(proposal || prior) (`proposer`).
    """
    names = fields or SWEEP_FIELDS
    if regression not in REGRESSIONS:
        raise UserError(f"{names.regression}: {regression!r} is not one of {', '.join(REGRESSIONS)}")
    weights = objective_weights(table, dict(objective) if objective else None, names.objective)
    bounds = Bounds.make(table.domains, min_share, max_share, names.min_share, names.max_share)
    if max_epochs is not None and domain_tokens and final_tokens:
        repetition = Repetition(max_epochs, domain_tokens, final_tokens)
        bounds = repetition.bound(bounds, names.max_epochs, names.final_length)
    bounds = within_observed(bounds, table.shares)
    start = table.shares.mean(axis=0) if prior is None else prior
    model = fit(regression, table.shares, table.losses, weights)
    rho, out_of_fold = cross_validated_spearman(regression, table.shares, table.losses, weights, seed)
    observed = table.losses @ weights
    return FitResult(
        domains=table.domains,
        regression=regression,
        spearman=rho,
        trials=len(table.trials),
        proposal=propose(model, bounds, start, table.shares, seed, kl_strength(out_of_fold, observed)),
        observed=observed,
        predicted_out_of_fold=out_of_fold,
    )


def kl_strength(predicted_out_of_fold: np.ndarray, observed: np.ndarray) -> float:
    """The proposer's price of a nat of KL from the prior: the fit's out-of-fold RMSE of the
    objective. A predicted gain smaller than the fit's error on trials it did not see is no
    reason to leave the prior; a fit that predicts held-out trials exactly leaves the proposal free."""
    return float(np.sqrt(np.mean((predicted_out_of_fold - observed) ** 2)))


def within_observed(bounds: Bounds, shares: np.ndarray) -> Bounds:
    """The bounds with each domain's upper share lowered to `EXTRAPOLATION` times the largest
    any trial had.

    A fitted law is evidence only near where trials went: far beyond them it extrapolates (five
    trials fit by an exponential sent 95% of a demo mixture to a domain no trial gave 9%). The
    rows sum to 1, so the largest shares sum to at least 1 and the box always holds a mixture.
    """
    reach = np.minimum(1.0, EXTRAPOLATION * shares.max(axis=0))
    upper = np.maximum(np.minimum(bounds.upper, reach), bounds.lower)
    if upper.sum() < 1.0:  # trials from elsewhere that broke the bounds: no box fits both
        return bounds
    return Bounds(bounds.domains, bounds.lower, upper)


def parse_assignments(items: Sequence[str] | None, flag: str) -> dict[str, float]:
    """`NAME=X` flags as a map; a malformed item or a repeated name is a UserError naming the flag."""
    values: dict[str, float] = {}
    for item in items or ():
        name, sep, text = item.partition("=")
        if not sep or not name.strip():
            raise UserError(f"{flag}: {item!r} is not NAME=NUMBER")
        try:
            value = float(text)
        except ValueError:
            raise UserError(f"{flag}: {item!r}: {text!r} is not a number") from None
        if not math.isfinite(value):
            raise UserError(f"{flag}: {item!r}: the number must be finite")
        if name.strip() in values:
            raise UserError(f"{flag}: {name.strip()!r} is given twice; give it once")
        values[name.strip()] = value
    return values
