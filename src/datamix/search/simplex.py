"""The feasible mixtures: shares on the simplex between per-domain lower and upper bounds.

One home for the bounds rule (`Bounds.make`) and for projecting a point onto the feasible set,
which the sampler and the proposer both use.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from datamix.errors import UserError

# Shares are compared with this slack: a bound met within it is met.
SHARE_TOLERANCE = 1e-9


@dataclass(frozen=True)
class Bounds:
    """Per-domain share bounds, in the order of `domains`; feasible: sum(lower) <= 1 <= sum(upper)."""

    domains: tuple[str, ...]
    lower: np.ndarray
    upper: np.ndarray

    @classmethod
    def make(
        cls,
        domains: Sequence[str],
        min_share: Mapping[str, float] | None = None,
        max_share: Mapping[str, float] | None = None,
        field_min: str = "minShare",
        field_max: str = "maxShare",
    ) -> Bounds:
        """Bounds from per-domain maps (absent domains: 0 and 1); every problem is a UserError."""
        index = {name: i for i, name in enumerate(domains)}
        lower = np.zeros(len(domains))
        upper = np.ones(len(domains))
        for field, given, target in ((field_min, min_share, lower), (field_max, max_share, upper)):
            for name, value in (given or {}).items():
                if name not in index:
                    raise UserError(f"{field}: {name!r} is not a domain of the mixture ({', '.join(domains)})")
                if not (isinstance(value, int | float) and math.isfinite(value) and 0.0 <= value <= 1.0):
                    raise UserError(f"{field}: {name}={value!r}; a share must be a number from 0 to 1")
                target[index[name]] = float(value)
        for i, name in enumerate(domains):
            if lower[i] > upper[i]:
                raise UserError(
                    f"{field_min}: {name}={lower[i]:g} is above {field_max} {upper[i]:g}; lower one of them"
                )
        if lower.sum() > 1.0 + SHARE_TOLERANCE:
            raise UserError(f"{field_min}: the minimum shares sum to {lower.sum():g}, above 1; lower them")
        if upper.sum() < 1.0 - SHARE_TOLERANCE:
            raise UserError(f"{field_max}: the maximum shares sum to {upper.sum():g}, below 1; raise them")
        return cls(tuple(domains), lower, upper)

    def tightened(self, upper: np.ndarray, why: str) -> Bounds:
        """These bounds with the upper bounds lowered to `upper` where lower; `why` names the cap."""
        capped = np.minimum(self.upper, upper)
        below = np.flatnonzero(capped < self.lower - SHARE_TOLERANCE)
        if below.size:
            i = int(below[0])
            raise UserError(
                f"{why}: caps {self.domains[i]} at share {capped[i]:.4g}, below its minShare {self.lower[i]:g}"
            )
        if capped.sum() < 1.0 - SHARE_TOLERANCE:
            raise UserError(f"{why}: the capped shares sum to {capped.sum():.4g}, below 1; raise the cap")
        return Bounds(self.domains, self.lower, np.maximum(capped, self.lower))

    def contains(self, shares: np.ndarray) -> bool:
        return bool(
            np.all(shares >= self.lower - SHARE_TOLERANCE)
            and np.all(shares <= self.upper + SHARE_TOLERANCE)
            and abs(float(shares.sum()) - 1.0) <= SHARE_TOLERANCE
        )


def project(points: np.ndarray, bounds: Bounds, iterations: int = 80) -> np.ndarray:
    """Euclidean projection of each row onto {lower <= x <= upper, sum x = 1}.

    The projection is clip(y - tau, lower, upper) for the tau that makes the row sum to 1; the sum
    falls monotonically in tau, so bisection finds it (80 halvings: far below float spacing).
    """
    y = np.atleast_2d(np.asarray(points, dtype=float))
    lo = (y - bounds.upper[None, :]).min(axis=1)  # at tau = lo every share sits at its upper bound
    hi = (y - bounds.lower[None, :]).max(axis=1)  # at tau = hi every share sits at its lower bound
    for _ in range(iterations):
        tau = 0.5 * (lo + hi)
        total = np.clip(y - tau[:, None], bounds.lower, bounds.upper).sum(axis=1)
        above = total > 1.0
        lo = np.where(above, tau, lo)
        hi = np.where(above, hi, tau)
    x = np.clip(y - (0.5 * (lo + hi))[:, None], bounds.lower, bounds.upper)
    return exact_sum(x, bounds)


def exact_sum(x: np.ndarray, bounds: Bounds) -> np.ndarray:
    """Rows summing to 1 to the last bits: the residue goes to the share with the most room for it."""
    x = np.array(np.atleast_2d(x), dtype=float)
    for row in x:
        residue = 1.0 - math.fsum(row)
        room = (bounds.upper - row) if residue > 0 else (row - bounds.lower)
        j = int(np.argmax(room))
        row[j] += residue
    return x


def uniform(n: int) -> np.ndarray:
    return np.full(n, 1.0 / n)
