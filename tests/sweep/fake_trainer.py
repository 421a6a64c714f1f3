"""A fake trainer for sweeps on the local control plane: it plays every master pod the kwok stage
holds Running (`datamix.io/fake-hold: "true"`), reading the pod's experiment mixture and ending
the pod with the run result a real trainer would report under a known law (sweep_fakes.py)."""

from __future__ import annotations

import threading
from typing import Any

from datamix import GROUP, PLURAL, VERSION
from datamix.runspec import RunResult
from tests.sweep.sweep_fakes import LAW_DOMAINS, law_losses, law_objective

FAKE_HOLD = f"{GROUP}/fake-hold"
FAKE_MESSAGE = f"{GROUP}/fake-termination-message"
FAKE_DURATION = f"{GROUP}/fake-duration"
MASTER = "training.kubeflow.org/replica-type=master"


class FakeTrainer:
    """Plays every held master pod of `namespace`: the law's losses for its experiment's mixture
    (and, given `epoch_tokens`, those dataset sizes)."""

    def __init__(self, api: Any, namespace: str, epoch_tokens: dict[str, int] | None = None) -> None:
        from kubernetes import client

        self.epoch_tokens = epoch_tokens  # per dataset, reported as the trainer's epoch_tokens
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.namespace = namespace
        self.played: dict[str, float] = {}  # experiment -> its true objective
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="fake-trainer")

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for pod in self.core.list_namespaced_pod(self.namespace, label_selector=MASTER).items:
                    if (pod.metadata.annotations or {}).get(FAKE_HOLD) == "true" and pod.status.phase == "Running":
                        self._play(pod)
            except Exception as err:  # reported by the test, which would otherwise only time out
                self.errors.append(repr(err))
            self._stop.wait(0.3)

    def _play(self, pod: Any) -> None:
        name = pod.metadata.labels[f"{GROUP}/experiment"]
        exp = self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)
        mixture = exp["spec"]["datasets"]["mixture"]
        total = sum(float(d["weight"]) for d in mixture)
        weights = {d["name"]: float(d["weight"]) / total for d in mixture}
        shares = [weights.get(d, 0.0) for d in LAW_DOMAINS]
        losses = law_losses(shares)
        result = RunResult(run=pod.metadata.labels[f"{GROUP}/run"], train_loss=law_objective(shares),
                           validation_loss=tuple(losses[d["name"]] for d in mixture),
                           tokens=tuple(1000 for _ in mixture), steps=10, consumed_samples=1600,
                           wall_seconds=1.0,
                           epoch_tokens=tuple(self.epoch_tokens[d["name"]] for d in mixture)
                           if self.epoch_tokens else ()).encode()
        self.core.patch_namespaced_pod(pod.metadata.name, self.namespace, {"metadata": {"annotations": {
            FAKE_HOLD: "false", FAKE_MESSAGE: result, FAKE_DURATION: "0s"}}})
        self.played[name] = law_objective(shares)

    def __enter__(self) -> FakeTrainer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def hold_pods(experiment_spec: dict[str, Any]) -> None:
    """Make an experiment spec's pods wait for the fake trainer."""
    pod = experiment_spec.setdefault("podTemplate", {}).setdefault("metadata", {})
    pod.setdefault("annotations", {}).update({FAKE_HOLD: "true", FAKE_DURATION: "1s"})
