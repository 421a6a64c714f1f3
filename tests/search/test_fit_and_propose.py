"""The regression and the proposer against synthetic truth: trials from a known law (three
families, two outside the log-linear form), a proposal whose true objective is within 1% of the
true optimum and better than the uniform mixture, the prior and the best observed trial."""

from __future__ import annotations

import numpy as np
import pytest

from datamix.search.fit import fit_and_propose
from datamix.search.regression import cross_validated_spearman
from datamix.search.sampler import trial_mixtures
from datamix.search.simplex import Bounds, project, uniform
from datamix.search.table import TrialTable
from tests.search.laws import LAWS, normalised, true_optimum

NOISE = 0.002  # relative noise of an observed loss (seed-to-seed spread of a small proxy)


def make_table(
    law: object, prior: np.ndarray, bounds: Bounds, trials: int, seed: int, noise: float = NOISE
) -> TrialTable:
    rng = np.random.default_rng(seed + 100)
    shares = trial_mixtures(seed, trials, prior, bounds)
    losses = law.losses(shares) * (1 + rng.normal(0.0, noise, (trials, len(prior))))  # type: ignore[attr-defined]
    names = tuple(f"d{i}" for i in range(len(prior)))
    return TrialTable(tuple(f"t{i}" for i in range(trials)), names, shares, names, losses)


def true_objective(law: object, shares: np.ndarray, weights: np.ndarray) -> float:
    return float(law.losses(shares)[0] @ weights)  # type: ignore[attr-defined]


@pytest.mark.parametrize("family", sorted(LAWS))
@pytest.mark.parametrize(("seed", "domains", "trials"), [(0, 6, 32), (1, 6, 48), (2, 10, 96)])
def test_loglinear_proposal_is_within_one_percent_of_the_true_optimum(
    family: str, seed: int, domains: int, trials: int
) -> None:
    rng = np.random.default_rng(seed)
    law = LAWS[family].random(rng, domains)
    prior = normalised(rng.uniform(0.2, 3.0, domains))
    bounds = Bounds.make(tuple(f"d{i}" for i in range(domains)))
    table = make_table(law, prior, bounds, trials, seed)
    weights = np.full(domains, 1.0 / domains)

    result = fit_and_propose(table, prior=prior, seed=seed)
    _, optimum = true_optimum(law, weights, bounds)
    proposed = true_objective(law, result.proposal.shares, weights)
    assert proposed <= optimum * 1.01, f"proposal {proposed:.5f} vs optimum {optimum:.5f}"
    assert proposed < true_objective(law, uniform(domains), weights)
    assert proposed < true_objective(law, prior, weights)
    best_trial = min(true_objective(law, row, weights) for row in table.shares)
    assert proposed < best_trial
    assert bounds.contains(result.proposal.shares)


@pytest.mark.parametrize("family", sorted(LAWS))
def test_a_target_domain_held_at_share_zero_under_bounds(family: str) -> None:
    """Objective: domains 1 and 3 only, domain 1 never trained on (maxShare 0), domain 0 at
    least 5%, domain 2 at most 30%: the proposal respects every bound and is near the optimum."""
    rng = np.random.default_rng(7)
    law = LAWS[family].random(rng, 6)
    names = tuple(f"d{i}" for i in range(6))
    bounds = Bounds.make(names, {"d0": 0.05}, {"d1": 0.0, "d2": 0.3})
    prior = project(normalised(rng.uniform(0.2, 3.0, 6)), bounds)[0]
    table = make_table(law, prior, bounds, 48, 7)
    objective = {"d1": 1.0, "d3": 1.0}
    weights = np.array([0.0, 0.5, 0.0, 0.5, 0.0, 0.0])

    result = fit_and_propose(
        table, objective=objective, min_share={"d0": 0.05}, max_share={"d1": 0.0, "d2": 0.3}, prior=prior
    )
    assert bounds.contains(result.proposal.shares)
    assert result.proposal.shares[1] == 0.0
    _, optimum = true_optimum(law, weights, bounds)
    assert true_objective(law, result.proposal.shares, weights) <= optimum * 1.01
    assert true_objective(law, result.proposal.shares, weights) < true_objective(law, prior, weights)


def test_the_repetition_cap_bounds_a_small_domain() -> None:
    rng = np.random.default_rng(3)
    law = LAWS["mixing-law"].random(rng, 6)
    names = tuple(f"d{i}" for i in range(6))
    bounds = Bounds.make(names)
    table = make_table(law, uniform(6), bounds, 48, 3)
    free = fit_and_propose(table)
    small = names[int(np.argmax(free.proposal.shares))]  # the domain the objective wants most
    tokens = dict.fromkeys(names, 10_000_000)
    tokens[small] = 10_000  # 2 epochs of it are 20,000 tokens: 2% of a 1M-token final run
    capped = fit_and_propose(table, max_epochs=2, domain_tokens=tokens, final_tokens=1_000_000)
    assert capped.proposal.shares[names.index(small)] <= 0.02 + 1e-12
    assert abs(capped.proposal.shares.sum() - 1.0) <= 1e-12
    assert free.proposal.shares[names.index(small)] > 0.02


def test_prior_and_uniform_predictions_are_reported() -> None:
    rng = np.random.default_rng(4)
    law = LAWS["power-transfer"].random(rng, 6)
    prior = normalised(rng.uniform(0.2, 3.0, 6))
    table = make_table(law, prior, Bounds.make(tuple(f"d{i}" for i in range(6))), 40, 4)
    result = fit_and_propose(table, prior=prior)
    weights = np.full(6, 1 / 6)
    assert result.proposal.predicted_prior == pytest.approx(true_objective(law, prior, weights), rel=0.01)
    assert result.proposal.predicted_uniform == pytest.approx(true_objective(law, uniform(6), weights), rel=0.01)
    assert result.proposal.predicted < result.proposal.predicted_prior


def test_cross_validated_spearman_separates_signal_from_noise() -> None:
    rng = np.random.default_rng(5)
    law = LAWS["mixing-law"].random(rng, 6)
    bounds = Bounds.make(tuple(f"d{i}" for i in range(6)))
    table = make_table(law, uniform(6), bounds, 48, 5)
    weights = np.full(6, 1 / 6)
    rho, _ = cross_validated_spearman("loglinear", table.shares, table.losses, weights)
    assert rho > 0.9
    noise = 2.0 + rng.normal(0.0, 0.01, table.losses.shape)  # losses unrelated to the mixture
    rho_noise, _ = cross_validated_spearman("loglinear", table.shares, noise, weights)
    assert abs(rho_noise) < 0.5


def test_lightgbm_regression_fits_and_proposes_within_bounds() -> None:
    pytest.importorskip("lightgbm")
    rng = np.random.default_rng(6)
    law = LAWS["power-transfer"].random(rng, 6)
    names = tuple(f"d{i}" for i in range(6))
    bounds = Bounds.make(names, None, {"d2": 0.3})
    prior = project(normalised(rng.uniform(0.2, 3.0, 6)), bounds)[0]
    table = make_table(law, prior, bounds, 96, 6)
    weights = np.full(6, 1 / 6)
    result = fit_and_propose(table, regression="lightgbm", max_share={"d2": 0.3}, prior=prior)
    assert result.regression == "lightgbm"
    assert result.spearman > 0.7
    assert bounds.contains(result.proposal.shares)
    _, optimum = true_optimum(law, weights, bounds)
    assert true_objective(law, result.proposal.shares, weights) < true_objective(law, prior, weights)
    assert true_objective(law, result.proposal.shares, weights) <= optimum * 1.03
