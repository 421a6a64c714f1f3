"""Trial mixtures: Dirichlet draws around the prior with a spread of concentrations (RegMix).

Trial i's mixture is a pure function of (seed, i, prior, bounds): its random stream is seeded
by the pair (seed, i) alone, so an operator that restarts, or draws trials in any order, gets
the same mixture for the same trial and never creates one twice.

RegMix (sail-sg/regmix, mixture_config/synthesize_mixture.py) draws Dirichlet(prior x s) with
the strength s from 15 log-spaced values between 0.1 and 5.0: small strengths give sparse,
extreme mixtures, large ones stay near the prior, and together they cover the simplex around
the prior. We draw s log-uniformly from the same range. RegMix rejects draws outside its bounds;
we reject up to `ATTEMPTS` draws from the trial's own stream and then project the last one onto
the bounds, so that tight bounds cost bounded time.
"""

from __future__ import annotations

import numpy as np

from datamix.search.simplex import Bounds, exact_sum, project

SAMPLERS = ("dirichlet",)
MIN_STRENGTH = 0.1
MAX_STRENGTH = 5.0
ATTEMPTS = 64
# numpy's Dirichlet needs every parameter > 0; a domain with a tiny prior is still drawn, rarely.
MIN_ALPHA = 1e-3


def trial_mixture(seed: int, index: int, prior: np.ndarray, bounds: Bounds, sampler: str = "dirichlet") -> np.ndarray:
    """The shares of trial `index` (0-based): within `bounds`, summing to 1."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}")
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(index)])
    # A domain pinned by its bounds (e.g. maxShare 0: an objective only) takes no part in the draw.
    free = bounds.upper > bounds.lower
    mass = 1.0 - float(bounds.lower[~free].sum())
    # Per-domain concentration prior_i x d x s: for a uniform prior, each domain's parameter spans
    # RegMix's 0.1 to 5.0 whatever the number of domains.
    alpha_base = prior[free] / prior[free].sum() * int(free.sum())
    draw = np.array(bounds.lower, dtype=float)
    for _ in range(ATTEMPTS):
        strength = np.exp(rng.uniform(np.log(MIN_STRENGTH), np.log(MAX_STRENGTH)))
        draw = np.array(bounds.lower, dtype=float)
        draw[free] = mass * rng.dirichlet(np.maximum(alpha_base * strength, MIN_ALPHA))
        if bounds.contains(draw):
            return np.asarray(exact_sum(draw, bounds)[0])
    return np.asarray(project(draw, bounds)[0])


def trial_mixtures(seed: int, count: int, prior: np.ndarray, bounds: Bounds) -> np.ndarray:
    """Trials 0..count-1, one row each (the same rows as `trial_mixture` one at a time)."""
    return (
        np.stack([trial_mixture(seed, i, prior, bounds) for i in range(count)]) if count else np.zeros((0, len(prior)))
    )
