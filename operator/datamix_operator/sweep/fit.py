"""The fit and proposal of a sweep, bounded in time and memory, off the reconcile path.

`Fitter.submit` hands a `FitRequest` to a small thread pool; each fit runs in a child process
(`python -m datamix_operator.sweep.fit`, the request as JSON on stdin) that caps its own address
space before importing numpy, and is killed when it exceeds `timeout_seconds`. The reconciler
never waits: it submits, returns, and is called again (`on_done`) when the result is in. A failed,
killed or timed-out fit is a result too (its `error`), so the sweep reports it instead of retrying
forever. The computation itself is `datamix.search.fit.fit_and_propose`, the same code as
`datamix sweep fit` and `datamix sweep run`.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import os
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

log = logging.getLogger("datamix_operator")

DEFAULT_FIT_WORKERS = 2
DEFAULT_FIT_TIMEOUT_SECONDS = 300.0
DEFAULT_FIT_MEMORY_MIB = 2048


@dataclass(frozen=True)
class FitRequest:
    """The finished trials and the sweep's settings: what `fit_and_propose` needs (plain JSON)."""

    trials: list[str]
    domains: list[str]
    shares: list[list[float]]  # trials x domains
    loss_domains: list[str]
    losses: list[list[float]]  # trials x loss_domains
    objective: dict[str, float]  # loss domain -> weight
    prior: list[float]
    min_share: dict[str, float]
    max_share: dict[str, float]
    regression: str
    seed: int
    # maxEpochs, the domains' sizes (tokens per epoch; a domain left out is not capped) and the
    # final run's tokens: the proposal repeats no domain more than max_epochs times.
    max_epochs: float | None = None
    epoch_tokens: dict[str, int] | None = None
    final_tokens: int | None = None

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class FitResult:
    shares: list[float] | None = None
    predicted: float | None = None
    predicted_prior: float | None = None
    predicted_uniform: float | None = None
    spearman: float | None = None
    trials: int = 0
    seconds: float = 0.0
    error: str | None = None  # one line: why there is no proposal


def compute(request: FitRequest) -> FitResult:
    """`datamix.search.fit.fit_and_propose` on the request (runs in the child process)."""
    import numpy as np

    from datamix.errors import UserError
    from datamix.search.fit import SWEEP_FIELDS, fit_and_propose
    from datamix.search.table import TrialTable

    started = time.monotonic()
    try:
        table = TrialTable(trials=tuple(request.trials), domains=tuple(request.domains),
                           shares=np.asarray(request.shares, dtype=float), loss_domains=tuple(request.loss_domains),
                           losses=np.asarray(request.losses, dtype=float))
        fit = fit_and_propose(table, objective=request.objective, regression=request.regression,
                              min_share=request.min_share, max_share=request.max_share,
                              max_epochs=request.max_epochs, domain_tokens=request.epoch_tokens,
                              final_tokens=request.final_tokens,
                              prior=np.asarray(request.prior, dtype=float), seed=request.seed, fields=SWEEP_FIELDS)
    except UserError as err:
        return FitResult(trials=len(request.trials), error=str(err), seconds=time.monotonic() - started)
    proposal = fit.proposal
    return FitResult(
        shares=[float(s) for s in proposal.shares],
        predicted=float(proposal.predicted),
        predicted_prior=float(proposal.predicted_prior),
        predicted_uniform=float(proposal.predicted_uniform),
        spearman=float(fit.spearman) if np.isfinite(fit.spearman) else None,
        trials=fit.trials,
        seconds=time.monotonic() - started,
    )


class Fitter:
    """At most `workers` fits at once, each in a child process bounded in time and memory."""

    def __init__(
        self,
        workers: int = DEFAULT_FIT_WORKERS,
        timeout_seconds: float = DEFAULT_FIT_TIMEOUT_SECONDS,
        memory_mib: int = DEFAULT_FIT_MEMORY_MIB,
    ) -> None:
        self.timeout_seconds = timeout_seconds
        self.memory_mib = memory_mib
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sweep-fit")
        self._lock = threading.Lock()
        self._results: dict[str, FitResult] = {}
        self._running: set[str] = set()

    def result(self, key: str, request: FitRequest, on_done: Callable[[], None]) -> FitResult | None:
        """The result of this request for `key` (a sweep), or None while it is computed; the
        first call starts the fit and `on_done` is called when it ends."""
        token = f"{key}/{request.digest()}"
        with self._lock:
            if token in self._results:
                return self._results[token]
            if token in self._running:
                return None
            self._running.add(token)
            for stale in [t for t in self._results if t.startswith(key + "/")]:
                del self._results[stale]
        self._pool.submit(self._run, token, request, on_done)
        return None

    def forget(self, key: str) -> None:
        with self._lock:
            for stale in [t for t in self._results if t.startswith(key + "/")]:
                del self._results[stale]

    def _run(self, token: str, request: FitRequest, on_done: Callable[[], None]) -> None:
        try:
            result = self.run_bounded(request)
        except Exception as err:  # never lose the callback: the sweep must hear of it
            log.exception("sweep fit %s failed", token)
            result = FitResult(trials=len(request.shares), error=f"the fit failed: {err}")
        with self._lock:
            self._running.discard(token)
            self._results[token] = result
        on_done()

    def run_bounded(self, request: FitRequest) -> FitResult:
        started = time.monotonic()
        cmd = [sys.executable, "-m", "datamix_operator.sweep.fit", str(self.memory_mib)]
        # One thread: the fit runs beside the operator's other work (and BLAS thread pools would
        # reserve address space per core under the memory cap).
        env = {**os.environ, **{v: "1" for v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}}
        try:
            done = subprocess.run(cmd, input=json.dumps(asdict(request)), capture_output=True, text=True,
                                  timeout=self.timeout_seconds, check=False, env=env)
        except subprocess.TimeoutExpired:
            return FitResult(trials=len(request.shares), seconds=time.monotonic() - started,
                             error=f"the fit took longer than {self.timeout_seconds:g} s and was stopped")
        if done.returncode != 0:
            tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
            if "MemoryError" in done.stderr:
                why = f"the fit needed more than {self.memory_mib} MiB and was stopped"
            else:
                why = f"the fit process exited with code {done.returncode}: {tail}"
            return FitResult(trials=len(request.shares), seconds=time.monotonic() - started, error=why)
        return FitResult(**json.loads(done.stdout))


def _child(argv: list[str]) -> int:
    memory = int(argv[0]) * 1024 * 1024
    # RLIMIT_AS before numpy is imported: an allocation past it is a MemoryError, not an OOM kill.
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    doc: Mapping[str, Any] = json.loads(sys.stdin.read())
    result = compute(FitRequest(**doc))
    sys.stdout.write(json.dumps(asdict(result)))
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
