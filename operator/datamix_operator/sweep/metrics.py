"""The sweep reconciler's Prometheus metrics (the dashboard's sweep row reads them).

Series are labelled `sweep_namespace` and `sweep`: the scrape's own `namespace` label is the
operator pod's."""

from __future__ import annotations

import contextlib
import threading

from prometheus_client import REGISTRY, CollectorRegistry, Gauge, Histogram

from datamix.names import SWEEP_PHASES as PHASES
from datamix_operator.metrics import PREFIX

TRIAL_STATES = ("pending", "active", "succeeded", "failed")


class SweepMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        reg = registry if registry is not None else REGISTRY
        self.sweeps = Gauge(f"{PREFIX}_sweeps", "DataMixtureSweeps watched by this operator, by phase.", ["phase"],
                            registry=reg)
        self.trials = Gauge(f"{PREFIX}_sweep_trials",
                            "Trials of a sweep by state: pending (not created yet), active, succeeded, failed.",
                            ["sweep_namespace", "sweep", "state"], registry=reg)
        self.trial_objective = Gauge(f"{PREFIX}_sweep_trial_objective", "Observed objective of a finished trial.",
                                     ["sweep_namespace", "sweep", "trial"], registry=reg)
        self.best = Gauge(f"{PREFIX}_sweep_best_objective", "Best observed trial objective of a sweep.",
                          ["sweep_namespace", "sweep"], registry=reg)
        self.predicted = Gauge(f"{PREFIX}_sweep_predicted_objective",
                               "Predicted objective of a sweep's proposal (and of the prior and uniform mixtures).",
                               ["sweep_namespace", "sweep", "mixture"], registry=reg)
        self.spearman = Gauge(f"{PREFIX}_sweep_fit_spearman", "Cross-validated Spearman correlation of the fit.",
                              ["sweep_namespace", "sweep"], registry=reg)
        self.fit_seconds = Histogram(f"{PREFIX}_sweep_fit_seconds", "Wall time of one sweep fit and proposal.",
                                     buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300), registry=reg)
        self._phases: dict[tuple[str, str], str] = {}
        self._trials: dict[tuple[str, str], set[str]] = {}
        self._lock = threading.Lock()
        for phase in PHASES:
            self.sweeps.labels(phase).set(0)

    def observe(self, namespace: str, name: str, phase: str | None, counts: dict[str, int] | None = None,
                objectives: dict[str, float] | None = None, best: float | None = None,
                predicted: dict[str, float] | None = None, spearman: float | None = None) -> None:
        """Record a sweep's state (phase None: the sweep is gone, its series are removed)."""
        key = (namespace, name)
        with self._lock:
            if phase is None:
                self._phases.pop(key, None)
            else:
                self._phases[key] = phase
            for p in PHASES:
                self.sweeps.labels(p).set(sum(1 for v in self._phases.values() if v == p))
            if phase is None:
                for state in TRIAL_STATES:
                    _remove(self.trials, namespace, name, state)
                for trial in self._trials.pop(key, set()):
                    _remove(self.trial_objective, namespace, name, trial)
                for mixture in ("proposal", "prior", "uniform"):
                    _remove(self.predicted, namespace, name, mixture)
                _remove(self.best, namespace, name)
                _remove(self.spearman, namespace, name)
                return
            for state, n in (counts or {}).items():
                self.trials.labels(namespace, name, state).set(n)
            seen = self._trials.setdefault(key, set())
            for trial, value in (objectives or {}).items():
                self.trial_objective.labels(namespace, name, trial).set(value)
                seen.add(trial)
            if best is not None:
                self.best.labels(namespace, name).set(best)
            for mixture, value in (predicted or {}).items():
                self.predicted.labels(namespace, name, mixture).set(value)
            if spearman is not None:
                self.spearman.labels(namespace, name).set(spearman)


def _remove(gauge: Gauge, *labels: str) -> None:
    with contextlib.suppress(KeyError):
        gauge.remove(*labels)
