"""The operator's sweep fit at the issue's scale: 512 trials x 84 domains, in the bounded child
process the operator uses (`Fitter.run_bounded`: 2048 MiB address-space cap, one thread).

    .venv/bin/python benchmarks/operator/bench_sweep_fit.py [--trials 512] [--domains 84]

Trials: mixtures from the sweep sampler around a random prior; per-domain losses from a Data
Mixing Law with random coefficients plus 0.2% noise. Prints wall time, the child's peak RSS, the
fit's Spearman and the proposal's true objective against the best trial's, per regression.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
from datamix_operator.sweep.fit import FitRequest, Fitter

from datamix.search.sampler import trial_mixtures
from datamix.search.simplex import Bounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=512)
    parser.add_argument("--domains", type=int, default=84)
    parser.add_argument("--regressions", default="loglinear,lightgbm")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    d = args.domains
    domains = [f"domain-{i:03d}" for i in range(d)]
    prior = rng.dirichlet(np.full(d, 2.0))
    shares = trial_mixtures(7, args.trials, prior, Bounds.make(domains))
    c = rng.uniform(1.5, 3.0, d)
    t = -np.eye(d) * rng.uniform(2.0, 6.0, d) - rng.uniform(0.0, 0.3, (d, d)) * (1 - np.eye(d))

    def law(x: np.ndarray) -> np.ndarray:
        return c + np.exp(x @ t.T)

    losses = law(shares) * (1 + 0.002 * rng.standard_normal((args.trials, d)))
    weights = np.full(d, 1.0 / d)
    print(f"{args.trials} trials x {d} domains; best trial's true objective {law(shares).mean(axis=1).min():.4f}")
    fitter = Fitter(workers=1, timeout_seconds=600)
    for regression in args.regressions.split(","):
        request = FitRequest(trials=[f"t{i:03d}" for i in range(args.trials)], domains=domains,
                             shares=shares.tolist(), loss_domains=domains, losses=losses.tolist(),
                             objective=dict(zip(domains, weights.tolist(), strict=True)), prior=prior.tolist(),
                             min_share={}, max_share={}, regression=regression, seed=0)
        started = time.monotonic()
        result = fitter.run_bounded(request)
        wall = time.monotonic() - started
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        if result.error:
            print(f"{regression:10s} error after {wall:.1f} s: {result.error}")
            continue
        true = float(law(np.asarray(result.shares)[None, :]).mean())
        print(f"{regression:10s} wall {wall:6.1f} s (fit {result.seconds:.1f} s)  child peak RSS <= {peak:.0f} MiB  "
              f"Spearman {result.spearman:.3f}  proposal true objective {true:.4f} (predicted {result.predicted:.4f})")


if __name__ == "__main__":
    main()
