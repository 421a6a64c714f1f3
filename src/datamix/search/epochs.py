"""maxEpochs: no domain repeated more than `maxEpochs` times in the final run.

A domain holding `size` tokens (one epoch of its training data: `RunResult.epoch_tokens`, the sum
of the sequence lengths of its train split) that gets share s of a run training T tokens is read
s x T / size times, so the cap is an upper share: s <= maxEpochs x size / T (Olmix's repetition
cap). It joins maxShare as one more upper bound (`Bounds.tightened`), so the proposer, which
already stays within the bounds, respects it. A domain of unknown size is not capped.

One home for the rule: the operator, `datamix sweep run` and `datamix sweep fit` all call
`Repetition`; sizes reported by several trials are merged by `merge_sizes`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from datamix.errors import UserError
from datamix.search.simplex import SHARE_TOLERANCE, Bounds

# Datasets named in an infeasibility message: the ones that limit the mixture most.
NAMED_LIMITING = 3


def merge_sizes(reported: Iterable[Mapping[str, int]]) -> dict[str, int]:
    """Per domain, the largest size any trial reported.

    Every trial reads the same files, so their sizes agree; where they do not, the files changed
    between trials, and datasets in practice only grow (shards appended): the final run, which
    starts after every trial, reads at least the largest size seen. A trial that reported no size
    (an older trainer image, a result cut to fit the termination message) adds nothing."""
    sizes: dict[str, int] = {}
    for trial in reported:
        for name, size in trial.items():
            sizes[name] = max(size, sizes.get(name, 0))
    return sizes


@dataclass(frozen=True)
class Repetition:
    """maxEpochs, the domains' sizes (tokens per epoch) and the final run's training tokens."""

    max_epochs: float
    sizes: Mapping[str, int]  # a domain absent here has an unknown size
    final_tokens: int

    def per_epoch(self, domains: Sequence[str]) -> np.ndarray:
        """The share of the final run one epoch of each domain fills (inf: unknown size)."""
        return np.array([self.sizes[d] / self.final_tokens if d in self.sizes else np.inf for d in domains])

    def caps(self, domains: Sequence[str]) -> np.ndarray:
        """Upper shares: maxEpochs epochs of each domain (1 where the size is unknown)."""
        return np.minimum(1.0, self.max_epochs * self.per_epoch(domains))

    def epochs(self, domains: Sequence[str], shares: np.ndarray) -> list[float | None]:
        """How often the final run would read each domain with these shares (None: size unknown)."""
        return [
            float(s * self.final_tokens / self.sizes[d]) if self.sizes.get(d) else None
            for d, s in zip(domains, shares, strict=True)
        ]

    def unknown(self, domains: Sequence[str]) -> list[str]:
        return [d for d in domains if d not in self.sizes]

    def exceeded(
        self, domains: Sequence[str], shares: Sequence[float], tolerance: float = SHARE_TOLERANCE
    ) -> list[str]:
        """The domains these shares (each known within `tolerance`) repeat more than maxEpochs times."""
        caps = self.caps(domains)
        return [d for d, s, c in zip(domains, shares, caps, strict=True) if s > c + tolerance]

    def bound(self, bounds: Bounds, field: str, final_field: str) -> Bounds:
        """`bounds` with the caps added; a UserError naming `field`, the limiting datasets and the
        fix (a larger maxEpochs, a shorter final run: `final_field`, or more data) when no mixture
        meets them all."""
        domains = bounds.domains
        caps = np.minimum(bounds.upper, self.caps(domains))
        below = caps < bounds.lower - SHARE_TOLERANCE
        if not below.any() and caps.sum() >= 1.0 - SHARE_TOLERANCE:
            return bounds.tightened(caps, field)  # as maxShare: the same upper bounds
        least = least_epochs(bounds.lower, bounds.upper, self.per_epoch(domains))
        if below.any():
            i = int(np.flatnonzero(below)[0])
            why = (
                f"caps {domains[i]} ({self.sizes[domains[i]]:,} tokens) at share {caps[i]:.4g} of the final run's "
                f"{self.final_tokens:,} tokens, below its minShare {bounds.lower[i]:g}"
            )
        else:
            limiting = [domains[i] for i in np.argsort(caps / np.maximum(bounds.upper, 1e-300))[:NAMED_LIMITING]]
            why = (
                f"the final run trains {self.final_tokens:,} tokens and {self.max_epochs:g} epochs of each dataset "
                f"fill at most {caps.sum():.1%} of them (limited most by {', '.join(limiting)})"
            )
        fix = f"raise {field} to at least {least:.3g}" if np.isfinite(least) else f"raise {field}"
        longest = int(self.final_tokens * self.max_epochs / least) if np.isfinite(least) and least > 0 else None
        shorten = f", train the final run ({final_field}) on at most {longest:,} tokens" if longest else ""
        raise UserError(f"{field} ({self.max_epochs:g}): {why}; {fix}{shorten}, or add data")


def least_epochs(lower: np.ndarray, upper: np.ndarray, per_epoch: np.ndarray) -> float:
    """The smallest maxEpochs for which the capped bounds hold a mixture (inf: none does).

    Caps grow with maxEpochs E as min(upper, E x per_epoch): E must lift every cap to its lower
    bound and the caps' sum to 1 (a non-decreasing function of E: bisection)."""
    known = np.isfinite(per_epoch)
    p = np.where(known, per_epoch, 0.0)
    positive = known & (p > 0)

    def total(e: float) -> float:
        return float(np.where(known, np.minimum(upper, e * p), upper).sum())

    top = float(np.max(upper[positive] / p[positive])) if positive.any() else 0.0  # every cap at upper
    if total(top) < 1.0 - SHARE_TOLERANCE or np.any(known & (p <= 0) & (lower > SHARE_TOLERANCE)):
        return float("inf")  # empty datasets hold what the others cannot
    need = float(np.max(lower[positive] / p[positive])) if positive.any() else 0.0
    low, high = 0.0, top
    for _ in range(100):
        mid = 0.5 * (low + high)
        low, high = (low, mid) if total(mid) >= 1.0 - SHARE_TOLERANCE else (mid, high)
    return max(need, high)
