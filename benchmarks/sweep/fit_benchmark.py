"""Time and peak memory of the sweep's fit at the operator's largest size: 512 trials x 84 domains.

    python benchmarks/sweep/fit_benchmark.py [--trials 512] [--domains 84] [--regression loglinear]

Trials come from a synthetic Data Mixing Law with noise; prints the seconds and the peak memory
(tracemalloc, in a second run) of each stage: the fit, the cross-validated Spearman, the
proposal, and the whole `fit_and_propose`. Figures only, no asserts.
"""

from __future__ import annotations

import os

# As `datamix.search` does when loaded before numpy: one BLAS thread (see its __init__).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import resource
import time
import tracemalloc

import numpy as np

from datamix.search.fit import fit_and_propose
from datamix.search.proposer import propose
from datamix.search.regression import cross_validated_spearman, fit
from datamix.search.sampler import trial_mixtures
from datamix.search.simplex import Bounds
from datamix.search.table import TrialTable


def normalised(weights: object) -> np.ndarray:
    w = np.asarray(weights, dtype=float)
    return np.asarray(w / w.sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=512)
    parser.add_argument("--domains", type=int, default=84)
    parser.add_argument("--regression", default="loglinear", choices=("loglinear", "lightgbm"))
    args = parser.parse_args()
    n, d = args.trials, args.domains
    rng = np.random.default_rng(0)
    t = rng.uniform(-0.6, 0.3, (d, d))
    np.fill_diagonal(t, rng.uniform(-3.0, -1.0, d))
    c = rng.uniform(1.0, 3.0, d)
    names = tuple(f"domain-{i:03d}" for i in range(d))
    prior = normalised(rng.uniform(0.2, 3.0, d))
    bounds = Bounds.make(names)

    start = time.perf_counter()
    shares = trial_mixtures(1, n, prior, bounds)
    sample_s = time.perf_counter() - start
    losses = (c + np.exp(shares @ t.T)) * (1 + rng.normal(0.0, 0.002, (n, d)))
    table = TrialTable(tuple(f"t{i}" for i in range(n)), names, shares, names, losses)
    weights = np.full(d, 1.0 / d)
    print(f"{n} trials x {d} domains, regression {args.regression}")
    print(f"  sample {n} trial mixtures: {sample_s:.2f} s")

    def stage(label: str, call):  # type: ignore[no-untyped-def]
        begin = time.perf_counter()
        value = call()
        seconds = time.perf_counter() - begin
        tracemalloc.start()  # a second run for memory: tracing slows the first one down
        call()
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        print(f"  {label:<34} {seconds:7.2f} s   peak {peak / 2**20:7.1f} MiB")
        return value

    model = stage("fit", lambda: fit(args.regression, shares, losses, weights))
    rho = stage(
        "cross-validated Spearman (5 folds)",
        lambda: cross_validated_spearman(args.regression, shares, losses, weights)[0],
    )
    stage("propose", lambda: propose(model, bounds, prior, shares))
    result = stage(
        "fit_and_propose (all of it)", lambda: fit_and_propose(table, regression=args.regression, prior=prior)
    )
    print(
        f"  Spearman {rho:.3f}; predicted objective: proposal {result.proposal.predicted:.4f}, "
        f"prior {result.proposal.predicted_prior:.4f}, uniform {result.proposal.predicted_uniform:.4f}"
    )
    print(f"  process peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
