"""The proposal: the feasible mixture of least predicted objective.

Feasible: within `bounds`: on the simplex, within each domain's minShare/maxShare and, when the
domains' sizes and the final run's tokens are known, maxEpochs's caps (`epochs.Repetition`, which
lowers the upper bounds as maxShare does).

- loglinear: the objective sum_j w_j (c_j + exp(.)) is a sum of exponentials of affine functions
  of the shares, hence convex, and the feasible set is convex: projected gradient descent (with a
  backtracking step) from the best of the prior, the uniform mixture and the observed trials
  reaches the global minimum.
- lightgbm (piecewise constant, no useful gradient): RegMix's recipe, score many feasible
  Dirichlet samples around the prior and average the best of them (the mean of feasible points is
  feasible).

With a `strength` > 0 the minimised objective is the prediction plus strength x KL(proposal ||
prior) (Olmix's proposer has the same term, `kl_reg`): every nat the proposal moves away from the
prior, around which the trials were drawn, must buy `strength` of predicted improvement. A domain
whose effect the trials do not show keeps its prior share relative to the others instead of being
dropped for a gain inside the fit's error; the term is convex, so the loglinear descent still
reaches the global minimum. `fit.fit_and_propose` sets the strength from the fit's out-of-fold error.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from datamix.search.regression import LogLinearModel, Model
from datamix.search.sampler import trial_mixtures
from datamix.search.simplex import Bounds, project, uniform

DESCENT_STEPS = 5000
DESCENT_TOLERANCE = 1e-12
RANKED_SAMPLES = 20000  # RegMix scores 100k; 20k keeps the operator's fit under a second per 1k
RANKED_TOP = 128  # RegMix averages the top 128
RANKED_SEED_OFFSET = 1 << 20
RESTART_POOL = 2000
RESTARTS = 8  # ranking draws use trial indices no sweep reaches (trials <= 512)
# The KL term is taken of shares + this (and prior + this): its curvature, strength / share, would
# otherwise grow without bound near share 0 and hold the descent to tiny steps (a 512 x 84 fit
# ran 5000 steps and 12 s instead of 24 and 0.5 s); shares of 0.1% and below cost little more.
KL_SMOOTHING = 1e-3


@dataclass(frozen=True)
class Proposal:
    shares: np.ndarray
    predicted: float
    predicted_prior: float
    predicted_uniform: float


@dataclass(frozen=True)
class Regularised:
    """The model's prediction plus strength x KL(shares || prior), over the domains the prior
    gives a share (a domain at prior 0 has no reference to stay near); strength 0: the prediction."""

    model: Model
    prior: np.ndarray
    strength: float

    @property
    def regression(self) -> str:
        return self.model.regression

    def penalty(self, shares: np.ndarray) -> np.ndarray:
        r = np.atleast_2d(shares)
        if self.strength == 0:
            return np.zeros(len(r))
        held = self.prior > 0
        p = np.maximum(r[:, held], 0.0) + KL_SMOOTHING
        q = self.prior[held] + KL_SMOOTHING
        return np.asarray(self.strength * (p * np.log(p / q)).sum(axis=1))

    def predict(self, shares: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict(shares) + self.penalty(shares))

    def gradient(self, shares: np.ndarray) -> np.ndarray:
        """Of a loglinear model's prediction (the one the descent uses) plus the KL term."""
        r = np.atleast_2d(shares)
        assert isinstance(self.model, LogLinearModel)
        grad = np.array(self.model.gradient(r))
        if self.strength == 0:
            return grad
        held = self.prior > 0
        p = np.maximum(r[:, held], 0.0) + KL_SMOOTHING
        grad[:, held] += self.strength * (np.log(p / (self.prior[held] + KL_SMOOTHING)) + 1.0)
        return grad


def propose(
    model: Model, bounds: Bounds, prior: np.ndarray, trials: np.ndarray, seed: int = 0, strength: float = 0.0
) -> Proposal:
    """Minimise the model's predicted objective, plus `strength` x KL(. || prior), over `bounds`
    (prior and trials give starting points)."""
    objective = Regularised(model, prior, strength)
    if isinstance(model, LogLinearModel):
        starts = np.vstack([prior, uniform(len(prior)), trials])
        if model.quadratic:  # no longer convex: descend from the best of many feasible points
            starts = np.vstack([starts, trial_mixtures(seed + RANKED_SEED_OFFSET, RESTART_POOL, prior, bounds)])
            pool = project(starts, bounds)
            tops = pool[np.argsort(objective.predict(pool), kind="stable")[:RESTARTS]]
            ends = np.stack([_descend(objective, bounds, top[None, :]) for top in tops])
            shares = ends[int(np.argmin(objective.predict(ends)))]
        else:
            shares = _descend(objective, bounds, starts)
    else:
        shares = _rank(objective, bounds, prior, seed)
    return Proposal(
        shares=shares,
        predicted=float(model.predict(shares)[0]),
        predicted_prior=float(model.predict(prior)[0]),
        predicted_uniform=float(model.predict(uniform(len(prior)))[0]),
    )


def _descend(model: Regularised, bounds: Bounds, starts: np.ndarray) -> np.ndarray:
    candidates = project(starts, bounds)
    x = candidates[int(np.argmin(model.predict(candidates)))]
    value = float(model.predict(x)[0])
    step = 1.0
    for _ in range(DESCENT_STEPS):
        grad = model.gradient(x)[0]
        while True:  # backtracking: the projected step must decrease the objective enough
            candidate = project(x - step * grad, bounds)[0]
            new = float(model.predict(candidate)[0])
            moved = candidate - x
            if new <= value + grad @ moved + (moved @ moved) / (2 * step) or step < 1e-12:
                break
            step /= 2
        if value - new <= DESCENT_TOLERANCE * max(1.0, abs(value)):
            if new < value:
                x, value = candidate, new
            break
        x, value = candidate, new
        step *= 2  # let the step grow back where the curvature allows
    return np.asarray(x)


def _rank(model: Model, bounds: Bounds, prior: np.ndarray, seed: int) -> np.ndarray:
    samples = np.vstack(
        [
            trial_mixtures(seed + RANKED_SEED_OFFSET, RANKED_SAMPLES, prior, bounds),
            project(np.vstack([prior, uniform(len(prior))]), bounds),
        ]
    )
    scores = model.predict(samples)
    best = samples[np.argsort(scores, kind="stable")[:RANKED_TOP]]
    return np.asarray(project(best.mean(axis=0), bounds)[0])
