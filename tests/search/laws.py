"""Synthetic ground-truth laws (mixture -> per-domain validation loss) for testing the search.

Three families: the Data Mixing Law itself (what `loglinear` fits), an inverse-power law with
cross-domain transfer, and a convex quadratic (both outside that family). All are convex in the
shares, so projected gradient descent on the true law finds the true optimum to compare with.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from datamix.search.simplex import Bounds, project


@dataclass(frozen=True)
class MixingLaw:
    """L_j(r) = c_j + exp(t_j . r): Ye et al.'s law, with self-help and some transfer."""

    c: np.ndarray
    t: np.ndarray  # (m, d)

    @classmethod
    def random(cls, rng: np.random.Generator, d: int) -> MixingLaw:
        t = rng.uniform(-0.6, 0.3, (d, d))
        np.fill_diagonal(t, rng.uniform(-3.0, -1.0, d))
        return cls(c=rng.uniform(1.0, 3.0, d), t=t + rng.uniform(0.0, 1.0, (d, 1)))

    def losses(self, r: np.ndarray) -> np.ndarray:
        return self.c + np.exp(np.atleast_2d(r) @ self.t.T)

    def gradient(self, r: np.ndarray, w: np.ndarray) -> np.ndarray:
        return (np.exp(np.atleast_2d(r) @ self.t.T) * w) @ self.t


@dataclass(frozen=True)
class PowerTransferLaw:
    """L_j(r) = a_j + b_j (eps + sum_k M_jk r_k)^(-alpha_j): a domain helps itself (M_jj = 1)
    and others (M_jk in [0, 0.4]); diminishing returns of a different shape than exp."""

    a: np.ndarray
    b: np.ndarray
    alpha: np.ndarray
    m: np.ndarray
    eps: float = 0.05

    @classmethod
    def random(cls, rng: np.random.Generator, d: int) -> PowerTransferLaw:
        m = rng.uniform(0.0, 0.4, (d, d))
        np.fill_diagonal(m, 1.0)
        return cls(a=rng.uniform(1.0, 3.0, d), b=rng.uniform(0.1, 0.6, d), alpha=rng.uniform(0.2, 0.6, d), m=m)

    def losses(self, r: np.ndarray) -> np.ndarray:
        return self.a + self.b * (self.eps + np.atleast_2d(r) @ self.m.T) ** (-self.alpha)

    def gradient(self, r: np.ndarray, w: np.ndarray) -> np.ndarray:
        base = self.eps + np.atleast_2d(r) @ self.m.T
        return (-self.alpha * self.b * base ** (-self.alpha - 1) * w) @ self.m


def normalised(weights: object) -> np.ndarray:
    """Weights as shares (a prior for the tests)."""
    w = np.asarray(weights, dtype=float)
    return np.asarray(w / w.sum())


def true_optimum(
    law: MixingLaw | PowerTransferLaw | QuadraticLaw, w: np.ndarray, bounds: Bounds
) -> tuple[np.ndarray, float]:
    """The law's minimum of w . L over the bounds (projected gradient descent; convex laws)."""
    x = project(np.full(len(w), 1.0 / len(w)), bounds)[0]
    value = float(law.losses(x)[0] @ w)
    step = 0.1
    for _ in range(20000):
        grad = law.gradient(x, w)[0]
        candidate = project(x - step * grad, bounds)[0]
        new = float(law.losses(candidate)[0] @ w)
        if new > value:
            step /= 2
            if step < 1e-14:
                break
            continue
        if value - new < 1e-14:
            x, value = candidate, new
            break
        x, value = candidate, new
        step *= 1.5
    return x, value


@dataclass(frozen=True)
class QuadraticLaw:
    """L_j(r) = a_j + r' Q_j r - g_j . r / 2 with Q_j positive semi-definite: losses that rise again
    past some share and domains that interact, outside the linear-exponent family."""

    a: np.ndarray
    q: np.ndarray  # (m, d, d)
    g: np.ndarray  # (m, d)

    @classmethod
    def random(cls, rng: np.random.Generator, d: int) -> QuadraticLaw:
        roots = rng.normal(0.0, 1.0, (d, d, d))
        q = np.einsum("mik,mjk->mij", roots, roots) / d
        return cls(a=rng.uniform(1.0, 3.0, d), q=q, g=rng.uniform(0.5, 2.0, (d, d)))

    def losses(self, r: np.ndarray) -> np.ndarray:
        r = np.atleast_2d(r)
        return self.a + np.einsum("ni,mij,nj->nm", r, self.q, r) - 0.5 * r @ self.g.T

    def gradient(self, r: np.ndarray, w: np.ndarray) -> np.ndarray:
        r = np.atleast_2d(r)
        return 2 * np.einsum("m,ni,mij->nj", w, r, self.q) - 0.5 * (w @ self.g)[None, :]


LAWS = {"mixing-law": MixingLaw, "power-transfer": PowerTransferLaw, "quadratic": QuadraticLaw}
