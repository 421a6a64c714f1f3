"""DataMixtureExperiments on the local control plane, for the operator's e2e tests, the shipping
tests and the scale benchmark: the CRD, manifests whose pods kwok plays, waits for a phase or a
condition, private pools of fake GPU nodes, and the lifecycle scenario.

`lifecycle_scenario` applies an experiment and follows it Pending -> Running -> Succeeded with
the run result in its status. The Helm/RBAC tests run the same scenario with the chart's
ServiceAccount (see docs/operator.md, "Running the e2e scenario with another identity"):

    from testsupport.experiments import lifecycle_scenario
    from testsupport.operator_process import OperatorProcess
    with OperatorProcess(kubeconfig=sa_kubeconfig, namespaces=[ns]) as op:
        lifecycle_scenario(api, cluster, ns, op=op)

Everything here talks to the API server with the `kubernetes` client or the built kubectl.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from datamix_operator.render import render_children

from datamix import GROUP, PLURAL, VERSION
from datamix.runspec import RunResult
from datamix.sweep_schema import SWEEP_PLURAL
from testsupport import clusterlib
from testsupport.clusterlib import FAKE_DURATION, FAKE_EXIT_CODE, FAKE_MESSAGE, wait_for
from testsupport.operator_process import OperatorProcess
from tools.cluster.nodes import H100, fake_node_manifest

REPO = Path(__file__).resolve().parents[1]
CRD_FILE = REPO / "crds" / "datamix.io_datamixtureexperiments.yaml"
SWEEP_CRD_FILE = REPO / "crds" / "datamix.io_datamixturesweeps.yaml"
CAPTURE_DIR = REPO / "tests" / "operator" / "captured"
POOL_LABEL = "datamix.io/e2e-pool"
KUBECONFIG_ENV = "DATAMIX_E2E_KUBECONFIG"
H100_MEMORY, A100_MEMORY = 81559, 40960  # MiB, as GPU Feature Discovery reports them


# ----------------------------------------------------------------------------------------------
# the operator's identity


def operator_kubeconfig(cluster: clusterlib.Cluster) -> str:
    """The kubeconfig the operator runs with: $DATAMIX_E2E_KUBECONFIG (e.g. a ServiceAccount's
    token, to prove the chart's RBAC) or the cluster's admin kubeconfig."""
    return os.environ.get(KUBECONFIG_ENV) or str(cluster.kubeconfig)


# ----------------------------------------------------------------------------------------------
# CRDs, experiments and their children


def apply_crd(cluster: clusterlib.Cluster, path: Path | None = None) -> None:
    """Server-side apply of the DataMixtureExperiment CRD (shared by every test of the cluster)."""
    crd = Path(os.environ.get("DATAMIX_E2E_CRD") or path or CRD_FILE)
    res = cluster.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=datamix-e2e",
                          "-f", str(crd), check=False)
    if res.returncode != 0:
        raise AssertionError(f"the API server refuses {crd}:\n{res.stderr}")
    cluster.kubectl("wait", "--for=condition=Established", f"crd/{PLURAL}.{GROUP}", "--timeout=60s")


def apply_sweep_crd(cluster: clusterlib.Cluster) -> None:
    """Server-side apply of the DataMixtureSweep CRD ($DATAMIX_E2E_SWEEP_CRD overrides it)."""
    crd = Path(os.environ.get("DATAMIX_E2E_SWEEP_CRD") or SWEEP_CRD_FILE)
    res = cluster.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=datamix-e2e",
                          "-f", str(crd), check=False)
    if res.returncode != 0:
        raise AssertionError(f"the API server refuses {crd}:\n{res.stderr}")
    cluster.kubectl("wait", "--for=condition=Established", f"crd/{SWEEP_PLURAL}.{GROUP}", "--timeout=60s")


def custom(api: Any) -> Any:
    from kubernetes import client

    return client.CustomObjectsApi(api)


def core(api: Any) -> Any:
    from kubernetes import client

    return client.CoreV1Api(api)


def get_experiment(api: Any, namespace: str, name: str) -> dict[str, Any]:
    return custom(api).get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)  # type: ignore[no-any-return]


def list_jobs(api: Any, namespace: str, experiment: str | None = None) -> list[dict[str, Any]]:
    selector = f"{GROUP}/experiment={experiment}" if experiment else ""
    items = custom(api).list_namespaced_custom_object("kubeflow.org", "v1", namespace, "pytorchjobs",
                                                      label_selector=selector)["items"]
    return list(items)


def list_configmaps(api: Any, namespace: str, experiment: str) -> list[Any]:
    selector = f"{GROUP}/experiment={experiment}"
    return list(core(api).list_namespaced_config_map(namespace, label_selector=selector).items)


def list_pods(api: Any, namespace: str, selector: str = "") -> list[Any]:
    return list(core(api).list_namespaced_pod(namespace, label_selector=selector).items)


def experiment_events(api: Any, namespace: str, name: str, reason: str | None = None) -> list[Any]:
    """Events about the experiment (or sweep) `name`, those of one reason when given."""
    selector = f"involvedObject.name={name}" + (f",reason={reason}" if reason else "")
    return list(core(api).list_namespaced_event(namespace, field_selector=selector).items)


def posted_events(api: Any, namespace: str, name: str, reason: str, timeout: float = 30) -> list[Any]:
    """The `reason` events once at least one is there: the operator posts events off the reconcile
    path, so one may land a moment after the status it goes with."""
    return wait_for(lambda: experiment_events(api, namespace, name, reason), timeout,
                    description=f"a {reason} event about {name}")


def times_posted(events: Sequence[Any]) -> int:
    """How often these events happened: the operator counts a repeat within minutes on the
    existing Event (`count`), as client-go's recorder does."""
    return sum(e.count or 1 for e in events)


def kubectl_apply(cluster: clusterlib.Cluster, namespace: str, manifest: Mapping[str, Any],
                  check: bool = True) -> subprocess.CompletedProcess[str]:
    return cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(dict(manifest)), check=check)


def condition(exp: Mapping[str, Any], ctype: str) -> dict[str, Any]:
    for c in (exp.get("status") or {}).get("conditions") or []:
        if c["type"] == ctype:
            return dict(c)
    return {}


def wait_phase(api: Any, namespace: str, name: str, phase: str, timeout: float = 90,
               op: OperatorProcess | None = None) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        if op is not None and op.returncode is not None:
            raise AssertionError(f"the operator exited ({op.returncode}):\n{op.log_tail()}")
        exp = get_experiment(api, namespace, name)
        status = exp.get("status") or {}
        current = status.get("observedGeneration") == exp["metadata"]["generation"]
        return exp if current and status.get("phase") == phase else None

    return _wait_experiment(api, namespace, name, reached, timeout, f"{namespace}/{name} phase {phase}", op)


def wait_condition(api: Any, namespace: str, name: str, ctype: str, reason: str, timeout: float = 90,
                   op: OperatorProcess | None = None) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        exp = get_experiment(api, namespace, name)
        c = condition(exp, ctype)
        ok = c.get("status") == "True" and c.get("reason") == reason
        return exp if ok and c.get("observedGeneration") == exp["metadata"]["generation"] else None

    return _wait_experiment(api, namespace, name, reached, timeout, f"{name} condition {ctype}/{reason}", op)


def _wait_experiment(api: Any, namespace: str, name: str, reached: Callable[[], dict[str, Any] | None],
                     timeout: float, description: str, op: OperatorProcess | None) -> dict[str, Any]:
    """wait_for, failing with the experiment's status and the operator's log tail."""
    try:
        return wait_for(reached, timeout, interval=0.25, description=description)
    except TimeoutError as err:
        detail = json.dumps(get_experiment(api, namespace, name).get("status"), indent=1)
        log = f"\noperator log:\n{op.log_tail()}" if op else ""
        raise AssertionError(f"{err}\nstatus: {detail}{log}") from None


def run_name_of(manifest: Mapping[str, Any], namespace: str) -> str:
    return str(render_children(dict(manifest), namespace)[1]["metadata"]["name"])


def run_id_of(manifest: Mapping[str, Any], namespace: str) -> str:
    return str(render_children(dict(manifest), namespace)[1]["metadata"]["labels"][f"{GROUP}/run"])


# ----------------------------------------------------------------------------------------------
# manifests for the fake GPU pool


def e2e_manifest(
    name: str,
    *,
    nodes: int = 1,
    gpus: int = 8,
    products: Sequence[str] | None = (H100,),
    min_memory: str | None = None,
    pool: str | None = None,
    duration: str = "3s",
    exit_code: int | None = None,
    weights: Sequence[float] = (2.0, 1.0),
    train_samples: int = 1600,
    result: bool = True,
    loss: float = 2.5,
    data_volume: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A small experiment whose pods kwok plays: they run `duration`, then end with `exit_code`
    (or 0), the master with a made-up run result as its termination message."""
    datasets = [
        {"name": n, "path": f"{n}/part_0_text_document", "weight": w,
         **({"validationPath": f"{n}/valid_text_document"} if i == 0 else {})}
        for i, (n, w) in enumerate(zip(("web", "code", "math", "books"), weights, strict=False))
    ]
    resources: dict[str, Any] = {"nodes": nodes, "gpusPerNode": gpus}
    gpu: dict[str, Any] = {}
    if products:
        gpu["products"] = list(products)
    if min_memory:
        gpu["minMemory"] = min_memory
    if gpu and gpus:
        resources["gpu"] = gpu
    if pool:
        resources["nodeSelector"] = {POOL_LABEL: pool}
        resources["tolerations"] = [{"key": POOL_LABEL, "operator": "Exists", "effect": "NoSchedule"}]
    world = nodes * max(gpus, 1)
    manifest: dict[str, Any] = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "DataMixtureExperiment",
        "metadata": {"name": name},
        "spec": {
            "datasets": {"baseDir": "/data", "volume": data_volume or {"hostPath": {"path": "/var/lib/datamix/data"}},
                         "mixture": datasets},
            "model": {"preset": "tiny"},
            "training": {
                "seqLength": 128, "globalBatchSize": world * 2, "microBatchSize": 1,
                "trainSamples": train_samples, "learningRate": {"peak": 0.001},
                "tokenizer": {"type": "byte", "vocabSize": 256},
            },
            "resources": resources,
            "podTemplate": {"metadata": {"annotations": {FAKE_DURATION: duration}}},
        },
    }
    annotations = manifest["spec"]["podTemplate"]["metadata"]["annotations"]
    if exit_code is not None:
        annotations[FAKE_EXIT_CODE] = str(exit_code)
    if result:
        run = run_id_of(manifest, "any")  # the run id does not depend on the namespace
        n = len(datasets)
        annotations[FAKE_MESSAGE] = RunResult(
            run=run, train_loss=loss, validation_loss=tuple(loss + 0.1 * (i + 1) for i in range(n)),
            tokens=tuple(1000 * (n - i) for i in range(n)), steps=train_samples // (world * 2),
            consumed_samples=train_samples, wall_seconds=3.0,
        ).encode()
    return manifest


# ----------------------------------------------------------------------------------------------
# a private pool of fake GPU nodes


@contextmanager
def private_pool(
    api: Any, spec: Sequence[tuple[str, int, str | None, int, int]]
) -> Iterator[tuple[str, dict[str, list[str]]]]:
    """Fake nodes only this test's experiments can use: labelled and tainted with a pool id.

    spec: (kind, count, product, memory MiB, gpus). Yields (pool id, {kind: [node names]})."""
    pool = uuid.uuid4().hex[:8]
    names: dict[str, list[str]] = {}
    created: list[str] = []
    try:
        for kind, count, product, memory, gpus in spec:
            for i in range(count):
                name = f"e2e-{pool}-{kind}-{i}"
                body = fake_node_manifest(name, product, memory, gpus, labels={POOL_LABEL: pool})
                body["spec"].setdefault("taints", []).append({"key": POOL_LABEL, "value": pool, "effect": "NoSchedule"})
                core(api).create_node(body)
                created.append(name)
                names.setdefault(kind, []).append(name)

        def ready() -> bool:
            for n in created:
                node = core(api).read_node(n)
                if not any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or []):
                    return False
            return True

        wait_for(ready, 60, description=f"private pool {pool} Ready")
        yield pool, names
    finally:
        clusterlib.delete_fake_nodes(api, created)


# ----------------------------------------------------------------------------------------------
# captured status documents (for the Argo CD health.lua tests)


def capture(name: str, exp: Mapping[str, Any]) -> None:
    """With DATAMIX_CAPTURE_STATUS=1, save the experiment as tests/operator/captured/<name>.json."""
    if os.environ.get("DATAMIX_CAPTURE_STATUS") != "1":
        return
    doc = copy.deepcopy(dict(exp))
    meta = doc.get("metadata") or {}
    for volatile in ("managedFields", "resourceVersion", "uid", "creationTimestamp", "annotations"):
        meta.pop(volatile, None)
    meta["namespace"] = "ml"
    CAPTURE_DIR.mkdir(exist_ok=True)
    (CAPTURE_DIR / f"{name}.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")


# ----------------------------------------------------------------------------------------------
# the scenario


def lifecycle_scenario(api: Any, cluster: clusterlib.Cluster, namespace: str, pool: str | None = None,
                       op: OperatorProcess | None = None, name: str = "lifecycle",
                       data_volume: dict[str, Any] | None = None) -> dict[str, Any]:
    """Apply an experiment; it goes Pending -> Running -> Succeeded with the result in status.
    Returns the final experiment."""
    manifest = e2e_manifest(name, nodes=2, gpus=8, pool=pool, duration="4s", loss=2.345, data_volume=data_volume)
    job_name = run_name_of(manifest, namespace)
    kubectl_apply(cluster, namespace, manifest)
    wait_for(lambda: (get_experiment(api, namespace, name).get("status") or {}).get("phase") is not None,
             60, description="a first status")
    running = wait_phase(api, namespace, name, "Running", op=op)
    capture("running", running)
    assert condition(running, "Running")["reason"] == "JobRunning"
    assert running["status"]["run"]["job"] == job_name
    done = wait_phase(api, namespace, name, "Succeeded", op=op)
    capture("succeeded", done)
    status = done["status"]
    assert condition(done, "Succeeded") | {"lastTransitionTime": None} == {
        "type": "Succeeded", "status": "True", "reason": "JobSucceeded",
        "message": f"PyTorchJob {job_name} succeeded (loss 2.345)",
        "lastTransitionTime": None, "observedGeneration": 1,
    }
    assert status["loss"] == "2.345"
    assert status["result"]["trainLoss"] == 2.345
    assert [d["name"] for d in status["result"]["datasets"]] == ["web", "code"]
    assert status["result"]["datasets"][0]["tokens"] == 2000
    progress = status["progress"]
    assert {k: progress.get(k) for k in ("consumedSamples", "targetSamples", "percent")} == {
        "consumedSamples": 1600, "targetSamples": 1600, "percent": 100}
    assert progress["trainLoss"] == 2.345, "a finished run's progress carries the result's losses"
    assert status["run"]["phase"] == "Succeeded"
    assert status["completionTime"], "completionTime set"
    assert len(list_jobs(api, namespace, name)) == 1
    return done
