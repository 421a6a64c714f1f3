"""The operator's own Prometheus metrics (served by `datamix operator --metrics-port`)."""

from __future__ import annotations

import threading

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from datamix.names import PHASES

PREFIX = "datamix_operator"


class Metrics:
    """Experiments by phase, runs created/succeeded/failed, reconcile errors and duration.

    One instance per process; tests pass their own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        reg = registry if registry is not None else REGISTRY
        self.experiments = Gauge(
            f"{PREFIX}_experiments",
            "DataMixtureExperiments watched by this operator, by phase.",
            ["phase"],
            registry=reg,
        )
        self.runs_created = Counter(f"{PREFIX}_runs_created", "PyTorchJobs created for runs.", registry=reg)
        self.runs_succeeded = Counter(f"{PREFIX}_runs_succeeded", "Runs whose PyTorchJob succeeded.", registry=reg)
        self.runs_failed = Counter(f"{PREFIX}_runs_failed", "Runs whose PyTorchJob failed.", registry=reg)
        self.reconcile_errors = Counter(
            f"{PREFIX}_reconcile_errors", "Reconciliations that ended with an error (retried).", registry=reg
        )
        self.reconcile_duration = Histogram(
            f"{PREFIX}_reconcile_duration_seconds",
            "Wall time of one reconciliation of one experiment.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
            registry=reg,
        )
        self.progress_runs = Gauge(
            f"{PREFIX}_progress_runs", "Running runs whose progress the operator reads.", registry=reg
        )
        self.progress_reads = Counter(
            f"{PREFIX}_progress_reads",
            "Reads of master pods' metrics endpoints, by outcome: accepted, foreign (no series of "
            "the run: ignored), error (unreachable, timeout, too large).",
            ["outcome"],
            registry=reg,
        )
        self.progress_read_duration = Histogram(
            f"{PREFIX}_progress_read_duration_seconds",
            "Wall time of one read of a master pod's metrics endpoint.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=reg,
        )
        self._phases: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()
        for phase in PHASES:
            self.experiments.labels(phase).set(0)

    def observe_phase(self, namespace: str, name: str, phase: str | None) -> None:
        """Record an experiment's phase (None: the experiment is gone)."""
        with self._lock:
            key = (namespace, name)
            if phase is None:
                self._phases.pop(key, None)
            else:
                self._phases[key] = phase
            counts = dict.fromkeys(PHASES, 0)
            for p in self._phases.values():
                counts[p] = counts.get(p, 0) + 1
            for p, n in counts.items():
                self.experiments.labels(p).set(n)


def serve(port: int, addr: str = "0.0.0.0") -> None:
    """Serve the default registry (these metrics plus process_* and python_*) on /metrics."""
    start_http_server(port, addr=addr)
