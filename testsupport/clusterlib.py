"""Helpers for tests and benchmarks that talk to the local Kubernetes control plane.

The control plane itself is the `tools.cluster` package (etcd, kube-apiserver,
kube-controller-manager, kube-scheduler, kwok, training-operator on 127.0.0.1); its binaries
come from tools/k8s/build.sh. The pytest fixtures built on these helpers live in
tests/conftest.py (`cluster`, `k8s_client`, `namespace`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from tools.cluster.health import health
from tools.cluster.nodes import A100 as A100  # re-exported: the fake pool's products
from tools.cluster.nodes import H100, fake_node_manifest
from tools.cluster.settings import REPO, state_dir

# The command line of the control plane, as `make cluster-up` runs it.
CLUSTER_CLI = [sys.executable, "-m", "tools.cluster"]

GPU_TAINT_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
PYTORCHJOB_GROUP, PYTORCHJOB_VERSION, PYTORCHJOB_PLURAL = "kubeflow.org", "v1", "pytorchjobs"
JOB_NAME_LABEL = "training.kubeflow.org/job-name"
REPLICA_TYPE_LABEL = "training.kubeflow.org/replica-type"
# Pod annotations read by the kwok stages in tools/cluster/stages/pod.yaml.
FAKE_DURATION = "datamix.io/fake-duration"
FAKE_DURATION_MAX = "datamix.io/fake-duration-max"
FAKE_MESSAGE = "datamix.io/fake-termination-message"
FAKE_EXIT_CODE = "datamix.io/fake-exit-code"

T = TypeVar("T")


@dataclass(frozen=True)
class Cluster:
    """A running local control plane."""

    kubeconfig: Path
    bin_dir: Path
    state_dir: Path
    server: str
    started_here: bool = False

    @property
    def kubectl_bin(self) -> Path:
        return self.bin_dir / "kubectl"

    @property
    def helm_bin(self) -> Path:
        return self.bin_dir / "helm"

    def env(self) -> dict[str, str]:
        """os.environ with KUBECONFIG set and the bin dir (kubectl, helm, ...) first on PATH."""
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig),
                "PATH": f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}

    def kubectl(self, *args: str, check: bool = True, input: str | None = None,
                timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return _run([str(self.kubectl_bin), "--kubeconfig", str(self.kubeconfig), *args],
                    check=check, input=input, timeout=timeout)

    def helm(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return _run([str(self.helm_bin), "--kubeconfig", str(self.kubeconfig), *args],
                    check=check, timeout=timeout)

    def api_client(self) -> Any:
        """A fresh kubernetes.client.ApiClient for this cluster."""
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))


def _run(cmd: list[str], check: bool, input: str | None, timeout: float) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise subprocess.CalledProcessError(res.returncode, cmd, res.stdout, res.stderr)
    return res


def _from_health(h: Mapping[str, Any], started_here: bool) -> Cluster:
    return Cluster(kubeconfig=Path(h["kubeconfig"]), bin_dir=Path(h["bin_dir"]),
                   state_dir=Path(h["state_dir"]), server=h["server"], started_here=started_here)


def running_cluster() -> Cluster | None:
    """The healthy cluster of our state dir ($DATAMIX_CLUSTER_DIR or ~/.cache/datamix/cluster)."""
    h = health(state_dir())
    return _from_health(h, False) if h["healthy"] else None


def ensure_cluster() -> Cluster:
    """Reuses a healthy running cluster, or starts one (building the binaries if needed)."""
    existing = running_cluster()
    if existing is not None:
        return existing
    res = subprocess.run([*CLUSTER_CLI, "up"], stdout=subprocess.PIPE, text=True, cwd=REPO)
    if res.returncode != 0:
        raise RuntimeError(f"python -m tools.cluster up failed (exit {res.returncode}); see its stderr")
    started = running_cluster()
    if started is None:
        raise RuntimeError("python -m tools.cluster up returned but the cluster is not healthy")
    return Cluster(**{**started.__dict__, "started_here": True})


def stop_cluster() -> None:
    subprocess.run([*CLUSTER_CLI, "down"], check=True, cwd=REPO)


@contextlib.contextmanager
def cluster_session(keep: bool = False) -> Iterator[Cluster]:
    """ensure_cluster() for the length of a test session; stops the cluster at the end only if
    this session started it, `keep` is false and no other session is using it (each session
    holds a shared flock on <state dir>/../.<name>.users while it runs)."""
    sdir = state_dir()
    sdir.parent.mkdir(parents=True, exist_ok=True)
    with open(sdir.parent / f".{sdir.name}.users", "a+") as users:
        fcntl.flock(users, fcntl.LOCK_SH)
        c = ensure_cluster()
        try:
            yield c
        finally:
            if c.started_here and not keep:
                try:
                    fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    print(f"[clusterlib] another session uses the cluster in {sdir}; leaving it running")
                else:
                    stop_cluster()


# ----------------------------------------------------------------------------------------------
# waiting


def wait_for(predicate: Callable[[], T], timeout: float = 60.0, interval: float = 0.25,
             description: str = "condition") -> T:
    """Polls `predicate` until it returns a truthy value, which is returned.

    Exceptions raised by the predicate count as "not yet" (the last one is reported on
    timeout). No fixed sleeps: the first check is immediate, later ones every `interval`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    last_exc: BaseException | None = None
    while True:
        try:
            last = predicate()
            last_exc = None
            if last:
                return last
        except Exception as e:
            last_exc = e
        if time.monotonic() >= deadline:
            detail = f"last error: {last_exc!r}" if last_exc else f"last value: {last!r}"
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {description}; {detail}")
        time.sleep(interval)


# ----------------------------------------------------------------------------------------------
# kubectl


def kubectl(*args: str, check: bool = True, input: str | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Runs the built kubectl against the running local cluster (our kubeconfig)."""
    c = running_cluster()
    if c is None:
        raise RuntimeError("no healthy local cluster; run `make cluster-up`")
    return c.kubectl(*args, check=check, input=input, timeout=timeout)


# ----------------------------------------------------------------------------------------------
# fake nodes


def _core(api: Any) -> Any:
    from kubernetes import client

    if isinstance(api, client.CoreV1Api):
        return api
    return client.CoreV1Api(api)


def add_fake_nodes(api: Any, count: int, product: str | None = H100, memory_mib: int = 81559,
                   gpus: int = 8, prefix: str = "gpu-extra", *, cpu: str = "96", memory: str = "1Ti",
                   labels: Mapping[str, str] | None = None, wait_ready: bool = True,
                   timeout: float = 60) -> list[str]:
    """Creates `count` kwok-managed nodes named `<prefix>-<i>` (the first free indexes).

    `api` is a kubernetes ApiClient or CoreV1Api. GPU nodes (product and gpus > 0) get the GPU
    Feature Discovery labels, capacity nvidia.com/gpu and the nvidia.com/gpu taint. Returns the
    node names; waits until kwok reports them Ready unless wait_ready is False."""
    core = _core(api)
    existing = {n.metadata.name for n in core.list_node().items}
    names: list[str] = []
    i = 0
    while len(names) < count:
        name = f"{prefix}-{i}"
        i += 1
        if name in existing:
            continue
        body = fake_node_manifest(name, product, memory_mib, gpus, cpu=cpu, memory=memory,
                                      labels=dict(labels or {}))
        core.create_node(body)
        names.append(name)
    if wait_ready:
        wait_for(lambda: all(_node_ready(core, n) for n in names), timeout,
                 description=f"fake nodes {names} Ready")
    return names


def _node_ready(core: Any, name: str) -> bool:
    node = core.read_node(name)
    return any(c.type == "Ready" and c.status == "True" for c in (node.status.conditions or []))


def delete_fake_nodes(api: Any, names: Iterable[str]) -> None:
    from kubernetes.client.exceptions import ApiException

    core = _core(api)
    for n in names:
        try:
            core.delete_node(n)
        except ApiException as e:
            if e.status != 404:
                raise


# ----------------------------------------------------------------------------------------------
# namespaces and PyTorchJobs


def unique_name(base: str, max_len: int = 50) -> str:
    slug = re.sub(r"[^a-z0-9-]+", "-", base.lower()).strip("-")[: max_len - 9].strip("-") or "t"
    return f"{slug}-{uuid.uuid4().hex[:8]}"


def create_namespace(api: Any, base: str, labels: Mapping[str, str] | None = None,
                     timeout: float = 60) -> str:
    """Creates a uniquely named namespace; waits until its `default` ServiceAccount exists
    (the ServiceAccount admission plugin rejects pods before that)."""
    core = _core(api)
    name = unique_name(base)
    core.create_namespace({"apiVersion": "v1", "kind": "Namespace",
                           "metadata": {"name": name, "labels": {"datamix.io/test": "true", **(labels or {})}}})
    wait_for(lambda: core.read_namespaced_service_account("default", name), timeout,
             description=f"default ServiceAccount in {name}")
    return name


def delete_namespace(api: Any, name: str, wait: bool = False, wait_pods: bool = False,
                     timeout: float = 120) -> None:
    """Deletes a namespace; `wait`: until it is gone; `wait_pods`: until its pods are gone."""
    from kubernetes.client.exceptions import ApiException

    core = _core(api)
    try:
        core.delete_namespace(name)
    except ApiException as e:
        if e.status == 404:
            return
        raise
    if wait_pods:
        wait_for(lambda: not core.list_namespaced_pod(name).items, timeout,
                 description=f"pods of namespace {name} deleted")
    if wait:
        def gone() -> bool:
            try:
                core.read_namespace(name)
            except ApiException as e:
                return e.status == 404
            return False

        wait_for(gone, timeout, description=f"namespace {name} deleted")


def pytorchjob_manifest(name: str, *, gpus: int = 8, product: str | None = H100, workers: int = 1,
                        restart_policy: str = "OnFailure", duration: str | None = "5s",
                        message: str | None = None, exit_code: int | None = None,
                        worker_exit_code: int | None = None, image: str = "datamix/fake-trainer:0",
                        owner: Mapping[str, Any] | None = None,
                        run_policy: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A PyTorchJob (Master 1 + `workers` Workers) for the fake GPU pool.

    `duration`/`message`/`exit_code` become the kwok stage annotations of the pods
    (exit_code on the Master only, worker_exit_code on the Workers)."""

    def template(code: int | None) -> dict[str, Any]:
        ann: dict[str, str] = {}
        if duration is not None:
            ann[FAKE_DURATION] = duration
        if message is not None:
            ann[FAKE_MESSAGE] = message
        if code is not None:
            ann[FAKE_EXIT_CODE] = str(code)
        resources: dict[str, Any] = {"requests": {"cpu": "1", "memory": "1Gi"},
                                     "limits": {"cpu": "1", "memory": "1Gi"}}
        if gpus:
            resources["limits"]["nvidia.com/gpu"] = str(gpus)
            resources["requests"]["nvidia.com/gpu"] = str(gpus)
        spec: dict[str, Any] = {
            "containers": [{"name": "pytorch", "image": image, "command": ["python", "-m", "train"],
                            "resources": resources}],
            "tolerations": [dict(GPU_TAINT_TOLERATION)],
        }
        if product:
            spec["nodeSelector"] = {"nvidia.com/gpu.product": product}
        return {"metadata": {"annotations": ann}, "spec": spec}

    replica_specs: dict[str, Any] = {
        "Master": {"replicas": 1, "restartPolicy": restart_policy, "template": template(exit_code)},
    }
    if workers:
        replica_specs["Worker"] = {"replicas": workers, "restartPolicy": restart_policy,
                                   "template": template(worker_exit_code)}
    meta: dict[str, Any] = {"name": name}
    if owner:
        meta["ownerReferences"] = [dict(owner)]
    return {
        "apiVersion": f"{PYTORCHJOB_GROUP}/{PYTORCHJOB_VERSION}",
        "kind": "PyTorchJob",
        "metadata": meta,
        "spec": {"runPolicy": {"cleanPodPolicy": "None", **(run_policy or {})},
                 "pytorchReplicaSpecs": replica_specs},
    }


def create_pytorchjob(api: Any, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
    from kubernetes import client

    return client.CustomObjectsApi(api).create_namespaced_custom_object(
        PYTORCHJOB_GROUP, PYTORCHJOB_VERSION, namespace, PYTORCHJOB_PLURAL, body)


def get_pytorchjob(api: Any, namespace: str, name: str) -> dict[str, Any]:
    from kubernetes import client

    return client.CustomObjectsApi(api).get_namespaced_custom_object(
        PYTORCHJOB_GROUP, PYTORCHJOB_VERSION, namespace, PYTORCHJOB_PLURAL, name)


def job_condition(job: Mapping[str, Any], ctype: str) -> dict[str, Any] | None:
    """The condition of type `ctype` with status True, or None."""
    for c in (job.get("status") or {}).get("conditions") or []:
        if c.get("type") == ctype and c.get("status") == "True":
            return dict(c)
    return None


def job_pods(api: Any, namespace: str, job_name: str) -> list[Any]:
    return list(_core(api).list_namespaced_pod(namespace, label_selector=f"{JOB_NAME_LABEL}={job_name}").items)
