"""Regressions from a mixture to the objective, and their cross-validated quality.

`loglinear` (the default, as in Olmix): each evaluated domain's loss follows the Data Mixing Law
of Ye et al. 2024 (yegcjs/mixinglaws), L_j(r) = c_j + k_j exp(sum_i t_ji r_i); on the simplex k_j
folds into t_j (sum r = 1), which is Olmix's `exp(log c) + exp(r . t)`. The upstream code fits
the c_j + t_j of each domain with L-BFGS from hundreds of random starts under torch. Here the fit
is exact for a given c_j (log(L_j - c_j) is linear in r: a ridge least-squares solve on one SVD
of the shares matrix shared by every domain and every c), and c_j is profiled over a grid below
the smallest observed loss, scored by the residual in loss units. The ridge strength is chosen
per domain and c by generalised cross-validation. No random starts, no torch; 512 trials x 84
domains fit in well under a second.

`lightgbm` (RegMix: gradient-boosted trees, learning rate 0.01, 1000 rounds) regresses the
objective itself, one model, as RegMix regresses its target loss; its prediction is piecewise
constant, so the proposer ranks sampled mixtures with it instead of descending its gradient.

Quality is the k-fold cross-validated Spearman rank correlation between predicted and observed
objective (RegMix and Olmix report Spearman's rho): ranking mixtures is what the search needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from datamix.errors import UserError

REGRESSIONS = ("loglinear", "lightgbm")
DEFAULT_REGRESSION = "loglinear"
CV_FOLDS = 5
# The irreducible-loss grid: c = min(L) - q x scale for q log-spaced over [Q_MIN, 1].
C_GRID = 48
Q_MIN = 1e-4
# Above this many domains the quadratic exponent (d(d+1)/2 more terms) is not tried: its fit would
# no longer be bounded by a second, and proxy counts that large are rare.
QUADRATIC_MAX_DOMAINS = 32
# Ridge strengths relative to the largest squared singular value of the centred shares.
RIDGE_GRID = np.geomspace(1e-10, 1.0, 21)
LIGHTGBM_ROUNDS = 1000  # RegMix
LIGHTGBM_PARAMS = {
    "objective": "regression",
    "learning_rate": 0.01,  # RegMix
    "num_leaves": 31,
    "verbosity": -1,
    "deterministic": True,
    "force_row_wise": True,
    "seed": 0,
    "num_threads": 1,  # the operator fits beside other work; one thread keeps the fit's cost bounded
}


class Model(Protocol):
    @property
    def regression(self) -> str:
        """The regression's name (`loglinear`, `lightgbm`)."""
        ...

    def predict(self, shares: np.ndarray) -> np.ndarray:
        """The predicted objective of each row of shares."""
        ...


@dataclass(frozen=True)
class LogLinearModel:
    """L_j(r) = c_j + exp(b_j + (r - mean) . u_j) per evaluated domain; objective = weights . L."""

    c: np.ndarray  # (m,) irreducible loss per evaluated domain
    b: np.ndarray  # (m,)
    u: np.ndarray  # (m, d)
    centre: np.ndarray  # (d,) mean shares of the fitted trials
    weights: np.ndarray  # (m,) objective weights, summing to 1
    quadratic: bool = False
    regression: str = "loglinear"

    def domain_losses(self, shares: np.ndarray) -> np.ndarray:
        x = exponent_features(shares, self.quadratic) - self.centre
        return np.asarray(self.c + np.exp(self.b + x @ self.u.T))

    def predict(self, shares: np.ndarray) -> np.ndarray:
        return np.asarray(self.domain_losses(shares) @ self.weights)

    def gradient(self, shares: np.ndarray) -> np.ndarray:
        """d objective / d shares, one row per row of shares."""
        r = np.atleast_2d(shares)
        x = exponent_features(r, self.quadratic) - self.centre
        scale = np.exp(self.b + x @ self.u.T) * self.weights  # (k, m)
        d = r.shape[1]
        grad = scale @ self.u[:, :d]
        if self.quadratic:
            i, j = np.triu_indices(d)
            q = scale @ self.u[:, d:]  # (k, pairs): d/dr_a of r_i r_j is r_j [a = i] + r_i [a = j]
            for a_idx, b_idx, col in ((i, j, q), (j, i, q)):
                np.add.at(grad.T, a_idx, (col * r[:, b_idx]).T)
        return np.asarray(grad)


@dataclass(frozen=True)
class LightGBMModel:
    booster: object
    regression: str = "lightgbm"

    def predict(self, shares: np.ndarray) -> np.ndarray:
        return np.asarray(self.booster.predict(np.atleast_2d(shares)), dtype=float)  # type: ignore[attr-defined]


def fit(regression: str, shares: np.ndarray, losses: np.ndarray, weights: np.ndarray) -> Model:
    """Fit `regression` to trials (rows of shares, rows of per-domain losses) for the weighted objective."""
    if regression == "loglinear":
        return fit_loglinear_selected(shares, losses, weights)
    if regression == "lightgbm":
        return fit_lightgbm(shares, losses @ weights)
    raise UserError(f"regression: {regression!r} is not one of {', '.join(REGRESSIONS)}")


def fit_loglinear_selected(shares: np.ndarray, losses: np.ndarray, weights: np.ndarray) -> LogLinearModel:
    """The linear exponent (the Data Mixing Law), or the quadratic one where it predicts the
    objective better out of fold (Olmix's log-nonlinear law adds such terms): a loss that rises
    again past some share, or domains that interact, is outside the linear law's reach."""
    n, d = shares.shape
    if d > QUADRATIC_MAX_DOMAINS or n < 2 * CV_FOLDS:
        return fit_loglinear(shares, losses, weights)
    order = np.random.default_rng(0).permutation(n)
    errors = {}
    for quadratic in (False, True):
        predicted = np.empty(n)
        for k in range(CV_FOLDS):
            held = order[k::CV_FOLDS]
            train = np.setdiff1d(order, held)
            predicted[held] = fit_loglinear(shares[train], losses[train], weights, quadratic).predict(shares[held])
        errors[quadratic] = float(((predicted - losses @ weights) ** 2).mean())
    return fit_loglinear(shares, losses, weights, quadratic=errors[True] < errors[False])


def fit_loglinear(
    shares: np.ndarray, losses: np.ndarray, weights: np.ndarray, quadratic: bool = False
) -> LogLinearModel:
    n = shares.shape[0]
    used = weights > 0  # only domains that enter the objective need a law
    y = losses[:, used]  # (n, m)
    features = exponent_features(shares, quadratic)
    centre = features.mean(axis=0)
    u_mat, s, vt = np.linalg.svd(features - centre, full_matrices=False)
    keep = s > s.max() * 1e-12 if s.size and s.max() > 0 else np.zeros_like(s, dtype=bool)
    u_mat, s, vt = u_mat[:, keep], s[keep], vt[keep]
    lam = RIDGE_GRID * (s.max() ** 2 if s.size else 1.0)  # (L,)
    shrink = s[None, :] ** 2 / (s[None, :] ** 2 + lam[:, None])  # (L, r)

    y_min = y.min(axis=0)
    scale = np.maximum(np.maximum(y_min, np.ptp(y, axis=0)), 1e-12)
    q = np.geomspace(Q_MIN, 1.0, C_GRID)
    c_grid = y_min[None, :] - q[:, None] * scale[None, :]  # (G, m), every c below every observed loss
    z = np.log(y[None, :, :] - c_grid[:, None, :])  # (G, n, m)
    z_mean = z.mean(axis=1)  # (G, m)
    zc = z - z_mean[:, None, :]
    p = u_mat.T @ zc  # (G, r, m) coordinates of z in the span of the features
    total = (zc**2).sum(axis=1)  # (G, m)
    # Residual sum of squares and GCV score per ridge strength (L), c (G) and domain (m).
    rss = total[None] - np.tensordot(2 * shrink - shrink**2, p**2, axes=([1], [1]))  # (L, G, m)
    dof = 1.0 + shrink.sum(axis=1)  # (L,), the intercept included
    gcv = n * np.maximum(rss, 0) / np.maximum(n - dof, 0.5)[:, None, None] ** 2
    best_l = gcv.argmin(axis=0)  # (G, m)
    f = shrink[best_l]  # (G, m, r)
    z_hat = z_mean[:, None, :] + u_mat @ (f.transpose(0, 2, 1) * p)  # (G, n, m)
    y_hat = c_grid[:, None, :] + np.exp(z_hat)
    loss_rss = ((y_hat - y[None]) ** 2).sum(axis=1)  # (G, m)
    best_g = loss_rss.argmin(axis=0)  # (m,)
    cols = np.arange(y.shape[1])
    coef = f[best_g, cols] * p[best_g, :, cols] / s[None, :]  # (m, r)

    m_all = losses.shape[1]
    c = np.zeros(m_all)
    b = np.zeros(m_all)
    u = np.zeros((m_all, features.shape[1]))
    c[used] = c_grid[best_g, cols]
    b[used] = z_mean[best_g, cols]
    u[used] = coef @ vt
    return LogLinearModel(c=c, b=b, u=u, centre=centre, weights=weights, quadratic=quadratic)


def exponent_features(shares: np.ndarray, quadratic: bool) -> np.ndarray:
    """The exponent's inputs: the shares, and with `quadratic` every product r_i r_j (i <= j)."""
    r = np.atleast_2d(shares)
    if not quadratic:
        return r
    i, j = np.triu_indices(r.shape[1])
    return np.hstack([r, r[:, i] * r[:, j]])


def lightgbm_module() -> Any:
    try:
        import lightgbm
    except ImportError:
        raise UserError(
            "regression: lightgbm is not installed here; install the extra (`pip install 'datamix[search]'`) "
            "or use regression loglinear"
        ) from None
    return lightgbm


def fit_lightgbm(shares: np.ndarray, objective: np.ndarray) -> LightGBMModel:
    lightgbm = lightgbm_module()
    n = shares.shape[0]
    # lightgbm's default of 20 samples per leaf would leave a few dozen trials unsplit.
    params = {**LIGHTGBM_PARAMS, "min_data_in_leaf": max(2, min(20, n // 8)), "min_data_in_bin": 1}
    booster = lightgbm.train(params, lightgbm.Dataset(shares, objective, params=params), LIGHTGBM_ROUNDS)
    return LightGBMModel(booster=booster)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (ties get their mean rank); 0 when either side is constant."""
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = float(np.sqrt((ra**2).sum() * (rb**2).sum()))
    return float((ra * rb).sum() / denominator) if denominator > 0 else 0.0


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x), dtype=float)
    values = np.asarray(x)[order]
    start = 0
    for i in range(1, len(x) + 1):  # average the ranks of each run of ties
        if i == len(x) or values[i] != values[start]:
            ranks[order[start:i]] = (start + i - 1) / 2.0
            start = i
    return ranks


def cross_validated_spearman(
    regression: str, shares: np.ndarray, losses: np.ndarray, weights: np.ndarray, seed: int = 0
) -> tuple[float, np.ndarray]:
    """k-fold (k = min(5, trials)) out-of-fold predictions of the objective, and their Spearman
    correlation with the observed objective. Folds are a seeded shuffle: the same for a re-run."""
    n = shares.shape[0]
    folds = min(CV_FOLDS, n)
    order = np.random.default_rng([int(seed) & 0xFFFFFFFF, 1]).permutation(n)
    predicted = np.empty(n)
    for k in range(folds):
        held = order[k::folds]
        train = np.setdiff1d(order, held)
        model = fit(regression, shares[train], losses[train], weights)
        predicted[held] = model.predict(shares[held])
    return spearman(predicted, losses @ weights), predicted
