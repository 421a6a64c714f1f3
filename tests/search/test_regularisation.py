"""The proposer's KL term towards the prior: what it keeps (the prior's ratios where the fit sees
no effect) and what it buys (a proposal nearer the true optimum when the trials are noisy and few,
as small proxies' are; the unregularised proposal chases the fit's errors to the edges)."""

from __future__ import annotations

import numpy as np
import pytest

from datamix.search.fit import fit_and_propose, kl_strength, within_observed
from datamix.search.proposer import KL_SMOOTHING, propose
from datamix.search.regression import LogLinearModel, fit
from datamix.search.simplex import Bounds
from tests.search.laws import LAWS, normalised, true_optimum
from tests.search.test_fit_and_propose import make_table, true_objective

NOISY = 0.02  # relative noise of a proxy's loss: ten times the other tests'
FEW = 16  # trials for 6 domains, as in examples/sweep.yaml
SEEDS = range(6)


def one_domain_model(d: int) -> LogLinearModel:
    """Every loss falls with domain 0's share and no other share changes any loss."""
    u = np.zeros((d, d))
    u[:, 0] = -2.0
    return LogLinearModel(c=np.full(d, 1.0), b=np.zeros(d), u=u, centre=np.zeros(d), weights=np.full(d, 1.0 / d))


def test_domains_the_fit_sees_no_effect_of_keep_the_prior_ratios_among_them() -> None:
    """The KL term's fixed point: shares (+ KL_SMOOTHING) of the domains without an effect stay in
    the prior's ratios; only the domain that helps moves, and not all the way."""
    d = 6
    prior = normalised([1.0, 2.0, 1.5, 0.8, 0.5, 0.2])
    bounds = Bounds.make(tuple(f"d{i}" for i in range(d)))
    model = one_domain_model(d)

    free = propose(model, bounds, prior, np.vstack([prior]), strength=0.0)
    held = propose(model, bounds, prior, np.vstack([prior]), strength=0.2)

    assert free.shares[0] >= 1.0 - 1e-9  # unregularised: everything on the one domain that helps
    assert 0.0 < held.shares[0] < 1.0
    assert held.shares[0] > prior[0]
    assert min(held.shares) > 0.0
    kept, reference = held.shares[1:] + KL_SMOOTHING, prior[1:] + KL_SMOOTHING
    np.testing.assert_allclose(kept / kept.sum(), reference / reference.sum(), rtol=1e-4)
    assert abs(held.shares.sum() - 1.0) <= 1e-12


def test_the_strength_is_the_out_of_fold_error() -> None:
    observed = np.array([2.0, 2.5, 3.0, 3.5])
    assert kl_strength(observed, observed) == 0.0
    assert kl_strength(observed + np.array([0.1, -0.1, 0.1, -0.1]), observed) == pytest.approx(0.1)


def test_with_few_noisy_trials_the_regularised_proposal_is_nearer_the_true_optimum() -> None:
    """Regret (true objective above the true optimum) over three law families x six seeds: the
    regularised proposal's mean and worst regret are below the unregularised one's, and its mean
    below the prior's (the search still pays)."""
    regret: dict[str, list[float]] = {"regularised": [], "unregularised": [], "prior": []}
    for family in sorted(LAWS):
        for seed in SEEDS:
            rng = np.random.default_rng(seed)
            law = LAWS[family].random(rng, 6)
            prior = normalised(rng.uniform(0.2, 3.0, 6))
            bounds = Bounds.make(tuple(f"d{i}" for i in range(6)))
            table = make_table(law, prior, bounds, FEW, seed, noise=NOISY)
            weights = np.full(6, 1.0 / 6)
            _, optimum = true_optimum(law, weights, bounds)

            result = fit_and_propose(table, prior=prior, seed=seed)
            model = fit("loglinear", table.shares, table.losses, weights)
            free = propose(model, within_observed(bounds, table.shares), prior, table.shares, seed, strength=0.0)
            assert bounds.contains(result.proposal.shares)
            for name, shares in (
                ("regularised", result.proposal.shares),
                ("unregularised", free.shares),
                ("prior", prior),
            ):
                regret[name].append(true_objective(law, shares, weights) - optimum)
    assert np.mean(regret["regularised"]) < np.mean(regret["unregularised"])
    assert max(regret["regularised"]) < max(regret["unregularised"])
    assert np.mean(regret["regularised"]) < np.mean(regret["prior"])
