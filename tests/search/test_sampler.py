"""The sampler: trial i's mixture is a pure function of (seed, i, prior, bounds), within the
bounds, summing to 1, and accepted by the run spec."""

from __future__ import annotations

import math

import numpy as np
import pytest

from datamix.errors import UserError
from datamix.experiment import build_run_spec
from datamix.search.sampler import trial_mixture, trial_mixtures
from datamix.search.simplex import Bounds
from datamix.search.sweep import ZERO_SHARE_WEIGHT, load_sweep
from tests.search.laws import normalised

DOMAINS = ("a", "b", "c", "d", "e", "f")
PRIOR = normalised([3.0, 1.5, 1.2, 0.8, 0.5, 0.3])


def test_trial_mixture_depends_on_seed_and_index_only() -> None:
    bounds = Bounds.make(DOMAINS)
    batch = trial_mixtures(11, 40, PRIOR, bounds)
    # Drawn alone, in reverse, long after other draws: the same rows, bit for bit.
    for i in reversed(range(40)):
        np.testing.assert_array_equal(trial_mixture(11, i, PRIOR, bounds), batch[i])
    assert not np.array_equal(trial_mixture(12, 5, PRIOR, bounds), batch[5])
    assert len({tuple(row) for row in batch}) == 40


def test_trial_mixtures_sum_to_one_and_respect_bounds() -> None:
    bounds = Bounds.make(DOMAINS, {"a": 0.1, "c": 0.05}, {"b": 0.2, "d": 0.0, "e": 0.5})
    rows = trial_mixtures(3, 300, PRIOR, bounds)
    for row in rows:
        assert abs(math.fsum(row) - 1.0) <= 1e-12
    assert rows[:, 0].min() >= 0.1 - 1e-12
    assert rows[:, 2].min() >= 0.05 - 1e-12
    assert rows[:, 1].max() <= 0.2 + 1e-12
    assert rows[:, 4].max() <= 0.5 + 1e-12
    assert np.all(rows[:, 3] == 0.0), "maxShare 0 holds a domain out of training exactly"
    assert rows.min() >= 0.0


def test_tight_bounds_still_give_a_feasible_mixture() -> None:
    # Rejection rarely succeeds here; the projection fallback must still land inside.
    bounds = Bounds.make(DOMAINS, {"f": 0.6, "e": 0.2}, {"a": 0.01})
    for i in range(50):
        row = trial_mixture(1, i, PRIOR, bounds)
        assert bounds.contains(row), row


def test_draws_spread_from_near_the_prior_to_far_from_it() -> None:
    rows = trial_mixtures(5, 400, PRIOR, Bounds.make(DOMAINS))
    distance = np.abs(rows - PRIOR).sum(axis=1)
    assert distance.min() < 0.15, "large concentrations stay near the prior"
    assert distance.max() > 1.0, "small concentrations reach sparse, extreme mixtures"


def test_infeasible_bounds_are_refused_with_the_field_named() -> None:
    with pytest.raises(UserError, match=r"minShare: the minimum shares sum to 1\.2"):
        Bounds.make(DOMAINS, {"a": 0.6, "b": 0.6})
    with pytest.raises(UserError, match=r"maxShare: the maximum shares sum to 0\.6"):
        Bounds.make(("a", "b"), None, {"a": 0.3, "b": 0.3})
    with pytest.raises(UserError, match="minShare: 'z' is not a domain"):
        Bounds.make(DOMAINS, {"z": 0.1})


def test_trial_experiments_are_valid_runs_with_the_trial_mixture() -> None:
    sweep = load_sweep("examples/sweep.yaml")
    for i in (0, 7, 15):
        manifest = sweep.trial_manifest(i)
        assert manifest["metadata"]["name"] == f"quickstart-sweep-t{i:03d}"
        spec = build_run_spec(manifest)
        np.testing.assert_allclose([d.share for d in spec.datasets], sweep.trial_shares(i), atol=1e-12)


def test_a_share_of_zero_becomes_the_smallest_weight_the_api_accepts() -> None:
    sweep = load_sweep("examples/sweep.yaml")
    shares = np.array([0.5, 0.5, 0.0, 0.0, 0.0, 0.0])
    weights = [d["weight"] for d in sweep.final_manifest(shares)["spec"]["datasets"]["mixture"]]
    assert weights[2:] == [ZERO_SHARE_WEIGHT] * 4
    spec = build_run_spec(sweep.final_manifest(shares))
    assert spec.datasets[0].share == pytest.approx(0.5, abs=1e-8)
