"""Mixture search: sample proxy mixtures, fit mixture -> per-domain loss, propose the best mixture.

The engine behind `DataMixtureSweep` (the operator), `datamix sweep fit` and `datamix sweep run`.
Layers, bottom up: `simplex` (the feasible set and projections onto it), `sampler` (trial i's
mixture), `table` (trials x domains), `regression` (loglinear, lightgbm; cross-validated
Spearman), `proposer` (minimise the predicted objective), `sweep` (the manifest's typed reader
and the trial and final experiments), `fit` (`datamix sweep fit`), `local` (`datamix sweep run`).
Imports neither kopf, kubernetes nor torch; numpy only (lightgbm when asked for).
"""

import os
import sys

# The fit's matrices are small (at most 512 x a few thousand): one BLAS thread is fastest, and on
# a busy machine OpenBLAS threads that wait for each other made one SVD 100x slower (1.2 s
# instead of 13 ms, measured on 2 shared cores). Only possible before numpy is loaded; a process
# that loads it earlier (the operator) sets the variable in its environment.
if "numpy" not in sys.modules:
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
