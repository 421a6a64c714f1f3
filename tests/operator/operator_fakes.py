"""An in-memory KubeApi for the reconciler's unit tests, and the test manifests."""

from __future__ import annotations

import copy
import itertools
from typing import Any

from datamix_operator.controller import Controller
from datamix_operator.kube import AlreadyExists, JobApi, KubeError, NotFound, ResourceMissing
from datamix_operator.reconcile import Reconciler
from datamix_operator.workqueue import ExponentialBackoff, WorkQueue

from datamix.runspec import RunResult

_uids = itertools.count(1)


def manifest(name: str = "mix-a", **spec_overrides: Any) -> dict[str, Any]:
    """A small valid experiment (tiny model, 2 nodes x 8 H100)."""
    spec: dict[str, Any] = {
        "datasets": {
            "baseDir": "/data",
            "volume": {"persistentVolumeClaim": {"claimName": "corpus"}},
            "mixture": [
                {"name": "web", "path": "web/part_0_text_document", "weight": 2.0,
                 "validationPath": "web/valid_text_document"},
                {"name": "code", "path": "code/part_0_text_document", "weight": 1},
            ],
        },
        "model": {"preset": "tiny"},
        "training": {
            "seqLength": 128,
            "globalBatchSize": 16,
            "microBatchSize": 1,
            "trainSamples": 1600,
            "learningRate": {"peak": 0.001},
            "tokenizer": {"type": "byte", "vocabSize": 256},
        },
        "resources": {
            "nodes": 2,
            "gpusPerNode": 8,
            "gpu": {"products": ["NVIDIA-H100-80GB-HBM3"], "minMemory": "80G"},
        },
    }
    spec.update(spec_overrides)
    return {"apiVersion": "datamix.io/v1alpha1", "kind": "DataMixtureExperiment", "metadata": {"name": name},
            "spec": spec}


def result_message(run: str, loss: float = 2.5, samples: int = 1600) -> str:
    return RunResult(run=run, train_loss=loss, validation_loss=(2.6, None), tokens=(1000, 500), steps=100,
                     consumed_samples=samples, wall_seconds=12.3).encode()


def _matches(obj: dict[str, Any], selector: str) -> bool:
    labels = obj["metadata"].get("labels") or {}
    for term in filter(None, selector.split(",")):
        key, equals, value = term.partition("=")
        if (labels.get(key) != value) if equals else (key not in labels):  # KEY alone: the label exists
            return False
    return True


class FakeKube:
    """Objects by (kind, namespace, name); each write bumps resourceVersion; calls are logged."""

    def __init__(self) -> None:
        self.job_api = JobApi()
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.calls: list[tuple[str, str]] = []
        self.events: list[dict[str, Any]] = []
        self.crd_missing = False
        self._rv = itertools.count(1)

    # helpers for tests

    def apply(self, body: dict[str, Any], namespace: str = "ns") -> dict[str, Any]:
        """Create or update an experiment like `kubectl apply` (generation bumps on spec change)."""
        key = ("dmx", namespace, body["metadata"]["name"])
        existing = self.objects.get(key)
        obj = copy.deepcopy(body)
        obj["metadata"]["namespace"] = namespace
        if existing is None:
            obj["metadata"].update(uid=f"uid-{next(_uids)}", generation=1)
        else:
            obj["metadata"]["uid"] = existing["metadata"]["uid"]
            changed = existing["spec"] != obj["spec"]
            obj["metadata"]["generation"] = existing["metadata"]["generation"] + (1 if changed else 0)
            if "status" in existing:
                obj["status"] = existing["status"]
            if not changed and existing["metadata"].get("labels") == obj["metadata"].get("labels"):
                return existing
        obj["metadata"]["resourceVersion"] = str(next(self._rv))
        self.objects[key] = obj
        return obj

    def experiment(self, name: str = "mix-a", namespace: str = "ns") -> dict[str, Any]:
        return self.objects[("dmx", namespace, name)]

    def jobs(self, namespace: str = "ns") -> list[dict[str, Any]]:
        return [o for (k, ns, _), o in sorted(self.objects.items()) if k == "job" and ns == namespace]

    def configmaps(self, namespace: str = "ns") -> list[dict[str, Any]]:
        return [o for (k, ns, _), o in sorted(self.objects.items()) if k == "cm" and ns == namespace]

    def set_job_conditions(self, name: str, *types: str, namespace: str = "ns", message: str = "",
                           **status: Any) -> None:
        job = self.objects[("job", namespace, name)]
        job["status"] = {
            "conditions": [{"type": t, "status": "True", "reason": f"PyTorchJob{t}", "message": message or t}
                           for t in types],
            **status,
        }
        job["metadata"]["resourceVersion"] = str(next(self._rv))

    def add_master_pod(
        self, job: str, *, message: str = "", exit_code: int = 0, namespace: str = "ns", owned: bool = True,
        name: str = "",
    ) -> None:
        """A master pod of `job`, owned by it as the training-operator's pods are (or, with
        `owned=False`, one that only carries its labels: anyone may create such a pod)."""
        job_uid = self.objects[("job", namespace, job)]["metadata"]["uid"] if owned else "someone-else"
        pod = {
            "metadata": {
                "name": name or f"{job}-master-0",
                "ownerReferences": [{"kind": "PyTorchJob", "name": job, "uid": job_uid, "controller": True}],
                "namespace": namespace,
                "creationTimestamp": "2026-01-01T00:00:00Z",
                "labels": {"training.kubeflow.org/job-name": job, "training.kubeflow.org/replica-type": "master"},
            },
            "status": {
                "phase": "Failed" if exit_code else "Succeeded",
                "containerStatuses": [{"name": "pytorch", "state": {"terminated": {
                    "exitCode": exit_code, "reason": "Error" if exit_code else "Completed", "message": message}}}],
            },
        }
        self.objects[("pod", namespace, pod["metadata"]["name"])] = pod

    def _create(self, kind: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        key = (kind, namespace, body["metadata"]["name"])
        if key in self.objects:
            raise AlreadyExists(409, f"{key} exists", {"reason": "AlreadyExists"})
        obj = copy.deepcopy(body)
        obj["metadata"].update(namespace=namespace, uid=f"uid-{next(_uids)}", resourceVersion=str(next(self._rv)),
                               creationTimestamp=f"2026-01-01T00:00:{len(self.objects):02d}Z")
        self.objects[key] = obj
        return copy.deepcopy(obj)

    def _list(self, kind: str, namespace: str | None, selector: str = "") -> list[dict[str, Any]]:
        return [copy.deepcopy(o) for (k, ns, _), o in sorted(self.objects.items())
                if k == kind and (namespace is None or ns == namespace) and _matches(o, selector)]

    # KubeApi

    def get_experiment(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.calls.append(("get_experiment", name))
        obj = self.objects.get(("dmx", namespace, name))
        return copy.deepcopy(obj) if obj else None

    def list_experiments(self, namespace: str | None) -> list[dict[str, Any]]:
        self.calls.append(("list_experiments", namespace or ""))
        return self._list("dmx", namespace)

    def patch_experiment_status(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("patch_status", name))
        obj = self.objects[("dmx", namespace, name)]
        obj["status"] = _merge(obj.get("status") or {}, patch["status"])
        obj["metadata"]["resourceVersion"] = str(next(self._rv))
        return copy.deepcopy(obj)

    def list_jobs(self, namespace: str | None, selector: str) -> list[dict[str, Any]]:
        self.calls.append(("list_jobs", selector))
        if self.crd_missing:
            raise ResourceMissing(404, "the API server does not serve pytorchjobs.kubeflow.org/v1")
        return self._list("job", namespace, selector)

    def create_job(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("create_job", body["metadata"]["name"]))
        if self.crd_missing:
            raise ResourceMissing(404, "the API server does not serve pytorchjobs.kubeflow.org/v1")
        return self._create("job", namespace, body)

    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.calls.append(("get_job", name))
        if self.crd_missing:
            raise ResourceMissing(404, "the API server does not serve pytorchjobs.kubeflow.org/v1")
        obj = self.objects.get(("job", namespace, name))
        return copy.deepcopy(obj) if obj else None

    def patch_job(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("patch_job", name))
        obj = self.objects[("job", namespace, name)]
        self.objects[("job", namespace, name)] = _merge(obj, patch)
        return copy.deepcopy(self.objects[("job", namespace, name)])

    def delete_job(self, namespace: str, name: str) -> None:
        self.calls.append(("delete_job", name))
        self.objects.pop(("job", namespace, name), None)

    def create_configmap(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("create_configmap", body["metadata"]["name"]))
        return self._create("cm", namespace, body)

    def get_configmap(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.calls.append(("get_configmap", name))
        obj = self.objects.get(("cm", namespace, name))
        return copy.deepcopy(obj) if obj else None

    def list_configmaps(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        self.calls.append(("list_configmaps", selector))
        return self._list("cm", namespace, selector)

    def delete_configmap(self, namespace: str, name: str) -> None:
        self.calls.append(("delete_configmap", name))
        self.objects.pop(("cm", namespace, name), None)

    def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        self.calls.append(("list_pods", selector))
        return self._list("pod", namespace, selector)

    def create_event(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        event = copy.deepcopy(body)
        event["metadata"] = {**event.get("metadata", {}), "name": f"{event['metadata'].get('generateName', 'e.')}"
                             f"{next(self._rv)}", "namespace": namespace}
        self.events.append(event)
        return copy.deepcopy(event)

    def patch_event(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("patch_event", name))
        for i, event in enumerate(self.events):
            if event["metadata"]["name"] == name:
                self.events[i] = _merge(event, patch)
                return copy.deepcopy(self.events[i])
        raise NotFound(404, f"events {name} not found")


class BrokenKube(FakeKube):
    """Fails every status patch (to test the retry path)."""

    def patch_experiment_status(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        raise KubeError(500, "etcd is unhappy")


def _merge(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = _merge(out.get(key), value)
    return out


__all__ = ["BrokenKube", "FakeKube", "NotFound", "manifest", "result_message"]


class RecordingQueue(WorkQueue[tuple[str, str]]):
    """The real work queue on a clock that stands still (a delayed key never falls due by itself),
    recording every delay it is asked for."""

    def __init__(self) -> None:
        super().__init__(ExponentialBackoff(), clock=lambda: 0.0)
        self.scheduled: list[tuple[str, str, float]] = []

    def add_after(self, key: tuple[str, str], delay: float) -> None:
        self.scheduled.append((key[0], key[1], delay))
        super().add_after(key, delay)


class Driven:
    """The real Controller and Reconciler, driven from the test's thread: each call queues what the
    operator's handlers (main.py) would and processes the queue until it is empty before returning."""

    def __init__(self, reconciler: Reconciler) -> None:
        self.reconciler = reconciler
        self.queue = RecordingQueue()
        self.controller = Controller(reconciler, errors=reconciler.metrics.reconcile_errors, workers=0,
                                     queue=self.queue)

    @property
    def metrics(self) -> Any:
        return self.reconciler.metrics

    def drain(self) -> None:
        while self.controller.process_next(timeout=0):
            pass

    def reconcile(self, namespace: str, name: str, full: bool = False) -> None:
        self.controller.enqueue(namespace, name, full=full)
        self.drain()

    def resync(self, namespace: str | None = "ns") -> None:
        """One pass of the resync loop (main.resync_pass): queue every experiment with the
        reconciler's snapshot, then work off the queue."""
        for request in self.reconciler.resync_requests(namespace):
            self.controller.submit(request)
        self.drain()

    def on_experiment(self, namespace: str, name: str, resource_version: str | None, deleted: bool = False,
                      body: dict[str, Any] | None = None) -> None:
        if deleted:
            self.controller.forget(namespace, name)
        self.controller.submit(self.reconciler.on_experiment(namespace, name, resource_version, deleted=deleted,
                                                             body=body))
        self.drain()

    def on_job(self, namespace: str, job: dict[str, Any], deleted: bool = False) -> None:
        self.controller.submit(self.reconciler.on_job(namespace, job, deleted=deleted))
        self.drain()

    def on_configmap(self, namespace: str, configmap: dict[str, Any], deleted: bool = False) -> None:
        self.controller.submit(self.reconciler.on_configmap(namespace, configmap, deleted=deleted))
        self.drain()
