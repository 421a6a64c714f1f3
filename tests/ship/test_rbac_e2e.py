"""Least privilege, proven on the real local control plane (marker `cluster`).

The chart's rendered ServiceAccount and RBAC are applied to the API server; a token of that
ServiceAccount comes from the TokenRequest API (`kubectl create token`); a kubeconfig holding only
that token runs the real operator (`datamix operator`) through its scenario: an experiment gets
its ConfigMap and PyTorchJob, the fake GPU pods run and finish, the run succeeds with the
master's result, an edit of the mixture starts a new run and retires the old one's children,
suspend acts on the job, a failing run fails, events are posted; no request of the operator is
forbidden. Then the operator e2e suite's own lifecycle scenario (tests/operator/operator_e2e.py)
runs under the same token. Along the way deploy/argocd/health.lua judges the live objects
(Healthy, Progressing, Suspended, Degraded).
A table of `kubectl auth can-i` checks, made with the same token, shows what it may and may not do.
"""

from __future__ import annotations

import base64
import copy
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import clusterlib  # tests/ is on sys.path (tests/conftest.py)
import pytest
import yaml
from live import Admin, experiment, install_crd, with_fake_pods
from shiplib import HELM_MISSING, REPO, by_kind, helm_bin, render
from test_health_lua import evaluate as argocd_health

from datamix.experiment import run_id, run_name

pytestmark = [pytest.mark.cluster,
              pytest.mark.skipif(helm_bin() is None, reason=HELM_MISSING),
              pytest.mark.timeout(600)]

RBAC_KINDS = ("ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding")


# ---------------------------------------------------------------------------------------------
# helpers


def rbac_objects(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for kind in RBAC_KINDS for d in by_kind(docs, kind)]


def apply(cluster: clusterlib.Cluster, docs: list[dict[str, Any]]) -> None:
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))


def delete(cluster: clusterlib.Cluster, docs: list[dict[str, Any]]) -> None:
    cluster.kubectl("delete", "--ignore-not-found", "--wait=false", "-f", "-", input=yaml.safe_dump_all(docs),
                    check=False)


def token_kubeconfig(cluster: clusterlib.Cluster, namespace: str, sa: str, path: Path) -> Path:
    """A kubeconfig whose only credential is a TokenRequest token of the ServiceAccount."""
    token = cluster.kubectl("create", "token", sa, "-n", namespace, "--duration=1h").stdout.strip()
    assert token.count(".") == 2, "a signed JWT"
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    cl = admin["clusters"][0]["cluster"]
    ca = cl.get("certificate-authority-data") or base64.b64encode(
        Path(cl["certificate-authority"]).read_bytes()).decode()
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "local", "cluster": {"server": cluster.server, "certificate-authority-data": ca}}],
        "users": [{"name": sa, "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "local", "user": sa, "namespace": namespace}}],
    }))
    path.chmod(0o600)
    return path


def can_i(cluster: clusterlib.Cluster, kubeconfig: Path, verb: str, resource: str,
          namespace: str | None = None) -> bool:
    """`kubectl auth can-i` with the ServiceAccount's token; namespace "*" is all namespaces, None a
    cluster-scoped resource."""
    resource, _, subresource = resource.partition("/")
    args = [str(cluster.kubectl_bin), "--kubeconfig", str(kubeconfig), "auth", "can-i", verb, resource]
    if subresource:
        args.append(f"--subresource={subresource}")
    if namespace == "*":
        args.append("--all-namespaces")
    elif namespace:
        args += ["-n", namespace]
    res = subprocess.run(args, capture_output=True, text=True, timeout=60)
    answer = res.stdout.strip()
    assert answer in ("yes", "no"), res.stdout + res.stderr
    return answer == "yes"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OperatorProcess:
    """`datamix operator` in a subprocess with the given kubeconfig; log in a file."""

    def __init__(self, kubeconfig: Path, namespaces: list[str], log: Path) -> None:
        self.log = log
        self.metrics_port = free_port()
        self.liveness_port = free_port()
        scope = [f"--namespace={ns}" for ns in namespaces] or ["--all-namespaces"]
        env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
        env.pop("DATAMIX_WATCH_NAMESPACES", None)
        self._log_file = log.open("w")
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "datamix"), "operator", *scope, "--bind-address=127.0.0.1",
             f"--metrics-port={self.metrics_port}", f"--liveness-port={self.liveness_port}",
             "--resync-seconds=5", "--log-format=plain"],
            stdout=self._log_file, stderr=subprocess.STDOUT, env=env)

    def healthy(self) -> bool:
        import urllib.request

        assert self.proc.poll() is None, f"operator exited {self.proc.returncode}:\n{self.log_text()[-3000:]}"
        with urllib.request.urlopen(f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=2) as r:
            return bool(r.status == 200)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log_file.close()


# ---------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def crd_installed(cluster: clusterlib.Cluster) -> None:
    install_crd(cluster)
    sweep_crd = os.environ.get("DATAMIX_E2E_SWEEP_CRD") or str(REPO / "crds" / "datamix.io_datamixturesweeps.yaml")
    res = cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", sweep_crd, check=False)
    assert res.returncode == 0, f"the API server refuses {sweep_crd}:\n{res.stderr}"
    clusterlib.wait_for(lambda: "datamixturesweeps" in cluster.kubectl(
        "api-resources", "--api-group=datamix.io", "-o", "name").stdout, 60, description="sweep CRD served")


@pytest.fixture
def namespaces(k8s_client: Any, request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """The operator's own namespace, a watched one and an unrelated one."""
    names = {role: clusterlib.create_namespace(k8s_client, f"rbac-{role}") for role in ("operator", "watched", "other")}
    yield names
    for name in names.values():
        clusterlib.delete_namespace(k8s_client, name)


def install_rbac(cluster: clusterlib.Cluster, tmp_path: Path, release_ns: str,
                 values: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    release = clusterlib.unique_name("dmx", 20)
    docs = rbac_objects(render(values, tmp_path, release=release, namespace=release_ns))
    apply(cluster, docs)
    (sa,) = by_kind(docs, "ServiceAccount")
    return docs, sa["metadata"]["name"]


# ---------------------------------------------------------------------------------------------
# tests

NOT_ALLOWED_ANYWHERE = [
    ("get", "secrets"), ("list", "secrets"), ("watch", "secrets"),
    ("delete", "nodes"), ("patch", "nodes"), ("create", "pods"), ("delete", "pods"), ("get", "pods"),
    ("create", "pods/exec"), ("get", "pods/log"),
    ("create", "customresourcedefinitions.apiextensions.k8s.io"),
    ("update", "customresourcedefinitions.apiextensions.k8s.io"),
    ("patch", "customresourcedefinitions.apiextensions.k8s.io"),
    ("delete", "customresourcedefinitions.apiextensions.k8s.io"),
    ("create", "serviceaccounts/token"), ("create", "rolebindings.rbac.authorization.k8s.io"),
    ("escalate", "clusterroles.rbac.authorization.k8s.io"), ("delete", "namespaces"),
    # The experiments are the user's (or a sweep's, created by the operator): never changed or
    # deleted by the operator.
    ("delete", "datamixtureexperiments.datamix.io"),
    ("update", "datamixtureexperiments.datamix.io"), ("patch", "datamixtureexperiments.datamix.io"),
    ("update", "datamixtureexperiments.datamix.io/status"),
    ("update", "datamixtureexperiments.datamix.io/finalizers"),
    ("create", "datamixturesweeps.datamix.io"), ("delete", "datamixturesweeps.datamix.io"),
    ("patch", "datamixturesweeps.datamix.io"), ("update", "datamixturesweeps.datamix.io/status"),
    ("update", "configmaps"), ("patch", "configmaps"), ("watch", "configmaps"),
    ("update", "pytorchjobs.kubeflow.org"), ("create", "deployments.apps"), ("patch", "events"),
]
ALLOWED_IN_WATCHED = [
    ("get", "datamixtureexperiments.datamix.io"), ("list", "datamixtureexperiments.datamix.io"),
    ("watch", "datamixtureexperiments.datamix.io"), ("patch", "datamixtureexperiments.datamix.io/status"),
    ("create", "datamixtureexperiments.datamix.io"),
    ("get", "datamixturesweeps.datamix.io"), ("list", "datamixturesweeps.datamix.io"),
    ("watch", "datamixturesweeps.datamix.io"), ("patch", "datamixturesweeps.datamix.io/status"),
    ("get", "configmaps"), ("list", "configmaps"), ("create", "configmaps"), ("delete", "configmaps"),
    ("get", "pytorchjobs.kubeflow.org"), ("list", "pytorchjobs.kubeflow.org"),
    ("watch", "pytorchjobs.kubeflow.org"), ("create", "pytorchjobs.kubeflow.org"),
    ("patch", "pytorchjobs.kubeflow.org"), ("delete", "pytorchjobs.kubeflow.org"),
    ("list", "pods"), ("watch", "pods"), ("create", "events"),
]
ALLOWED_CLUSTER_READS = [
    ("list", "customresourcedefinitions.apiextensions.k8s.io"),
    ("watch", "customresourcedefinitions.apiextensions.k8s.io"),
    ("list", "namespaces"), ("watch", "namespaces"),
]
NOT_ALLOWED_CLUSTER = [("get", "customresourcedefinitions.apiextensions.k8s.io"), ("get", "namespaces"),
                       ("list", "nodes"), ("list", "clusterroles.rbac.authorization.k8s.io")]


def test_namespaced_rbac_runs_the_operator_scenario(cluster: clusterlib.Cluster, k8s_client: Any,
                                                   crd_installed: None, namespaces: dict[str, str],
                                                   tmp_path: Path) -> None:
    ns_op, ns_watched, ns_other = namespaces["operator"], namespaces["watched"], namespaces["other"]
    docs, sa = install_rbac(cluster, tmp_path, ns_op, {"watchNamespaces": [ns_watched]})
    operator = None
    try:
        kubeconfig = token_kubeconfig(cluster, ns_op, sa, tmp_path / "sa.kubeconfig")

        # What it may not do, with its own token.
        table = []
        for verb, resource in NOT_ALLOWED_ANYWHERE:
            for ns in (ns_watched, ns_other, ns_op):
                table.append((verb, resource, ns, can_i(cluster, kubeconfig, verb, resource, ns), False))
        for verb, resource in ALLOWED_IN_WATCHED:
            table.append((verb, resource, ns_watched, can_i(cluster, kubeconfig, verb, resource, ns_watched), True))
            # Namespaced install: nothing in other namespaces, its own included.
            for ns in (ns_other, ns_op):
                table.append((verb, resource, ns, can_i(cluster, kubeconfig, verb, resource, ns), False))
            table.append((verb, resource, "*", can_i(cluster, kubeconfig, verb, resource, "*"), False))
        for verb, resource in ALLOWED_CLUSTER_READS:
            table.append((verb, resource, "", can_i(cluster, kubeconfig, verb, resource), True))
        for verb, resource in NOT_ALLOWED_CLUSTER:
            table.append((verb, resource, "", can_i(cluster, kubeconfig, verb, resource), False))
        wrong = [row for row in table if row[3] != row[4]]
        assert not wrong, "kubectl auth can-i (verb, resource, namespace, got, expected):\n" + \
            "\n".join(map(str, wrong))

        # The operator scenario under that token.
        operator = OperatorProcess(kubeconfig, [ns_watched], tmp_path / "operator.log")
        clusterlib.wait_for(operator.healthy, 60, description="operator /healthz")
        admin = Admin(k8s_client)
        first = with_fake_pods(experiment("rbac-mix"), "3s")
        admin.apply(ns_watched, first)
        name1 = run_name(first)
        assert run_name(admin.experiment(ns_watched, "rbac-mix")) == name1
        clusterlib.wait_for(lambda: admin.configmaps(ns_watched) == [name1] and admin.jobs(ns_watched) == [name1],
                            90, description="run spec ConfigMap and PyTorchJob created")
        clusterlib.wait_for(lambda: admin.status(ns_watched, "rbac-mix").get("phase") == "Succeeded", 180,
                            description="first run Succeeded")
        assert argocd_health(admin.experiment(ns_watched, "rbac-mix"))["status"] == "Healthy"
        status = admin.status(ns_watched, "rbac-mix")
        assert status["observedGeneration"] == admin.experiment(ns_watched, "rbac-mix")["metadata"]["generation"]
        assert status["run"]["id"] == run_id(first)

        # Run-defining edit: a new run; the old run's children are deleted (retired).
        second = with_fake_pods(experiment("rbac-mix", weights=(1, 3)), "600s")
        admin.apply(ns_watched, second)
        name2 = run_name(second)
        clusterlib.wait_for(lambda: admin.jobs(ns_watched) == [name2] and admin.configmaps(ns_watched) == [name2],
                            90, description="second run's children, the first run's deleted")
        previous = admin.status(ns_watched, "rbac-mix").get("previousRuns") or []
        assert [r["id"] for r in previous] == [run_id(first)]
        clusterlib.wait_for(lambda: admin.status(ns_watched, "rbac-mix").get("phase") == "Running", 120,
                            description="second run Running")
        assert argocd_health(admin.experiment(ns_watched, "rbac-mix"))["status"] == "Progressing"

        # Suspend patches the job.
        suspended = copy.deepcopy(second)
        suspended["spec"]["suspend"] = True
        admin.apply(ns_watched, suspended)
        clusterlib.wait_for(
            lambda: admin.job(ns_watched, name2)["spec"]["runPolicy"].get("suspend") is True, 90,
            description="job suspended")
        clusterlib.wait_for(lambda: admin.status(ns_watched, "rbac-mix").get("phase") == "Suspended", 90,
                            description="experiment Suspended")
        assert argocd_health(admin.experiment(ns_watched, "rbac-mix"))["status"] == "Suspended"

        # A run whose program fails (exit code 1): Failed, and Degraded for Argo CD.
        failing = experiment("rbac-fail")
        failing["spec"]["podTemplate"] = {"metadata": {"annotations": {
            clusterlib.FAKE_DURATION: "2s", clusterlib.FAKE_EXIT_CODE: "1"}}}
        admin.apply(ns_watched, failing)
        clusterlib.wait_for(lambda: admin.status(ns_watched, "rbac-fail").get("phase") == "Failed", 180,
                            description="failing run Failed")
        verdict = argocd_health(admin.experiment(ns_watched, "rbac-fail"))
        assert verdict["status"] == "Degraded", verdict

        # Events were posted with the token.
        events = admin.core.list_namespaced_event(ns_watched, field_selector="involvedObject.name=rbac-mix")
        assert events.items, "the operator posted no events"

        # An experiment in a namespace it does not watch is left alone.
        admin.apply(ns_other, experiment("elsewhere"))
        time.sleep(3)
        assert not admin.status(ns_other, "elsewhere")
        assert not admin.jobs(ns_other)

        log = operator.log_text()
        for marker in ("403", "Forbidden", "forbidden"):
            assert marker not in log, f"the operator was refused something:\n{log[-4000:]}"
        operator.stop()
        operator = None

        # The operator engineer's lifecycle scenario (tests/operator/operator_e2e.py), same token.
        sys.path.insert(0, str(REPO / "tests" / "operator"))
        from operator_e2e import OperatorProcess as E2EOperator
        from operator_e2e import lifecycle_scenario

        with E2EOperator(kubeconfig=kubeconfig, namespaces=[ns_watched], log_dir=tmp_path) as op:
            done = lifecycle_scenario(k8s_client, cluster, ns_watched, op=op)
            assert argocd_health(done)["status"] == "Healthy"
            log = Path(op.log_path).read_text(errors="replace")
            assert "Forbidden" not in log and "403" not in log, log[-4000:]

        # A DataMixtureSweep under the same token: trials and the final run created, the fit, the
        # sweep's status written (the sweep rows of the RBAC table).
        with E2EOperator(kubeconfig=kubeconfig, namespaces=[ns_watched], log_dir=tmp_path) as op:
            sweep_scenario(k8s_client, ns_watched)
            log = Path(op.log_path).read_text(errors="replace")
            assert "Forbidden" not in log and "403" not in log, log[-4000:]
    finally:
        if operator is not None:
            operator.stop()
            print(operator.log_text()[-3000:])
        delete(cluster, [d for d in docs if d["kind"].startswith("Cluster")])


def sweep_scenario(api: Any, namespace: str) -> None:
    """A small sweep (4 trials, 2 at a time, a final run) played by the sweep tests' fake trainer."""
    pytest.importorskip("datamix.search.proposer")
    from kubernetes import client

    from tests.sweep.fake_trainer import FakeTrainer, hold_pods

    spec = experiment("unused")["spec"]
    spec["datasets"]["mixture"] = [
        {"name": n, "path": f"{n}/part_0_text_document", "weight": 1, "validationPath": f"{n}/valid_text_document"}
        for n in ("web", "code", "math")]
    hold_pods(spec)
    custom = client.CustomObjectsApi(api)
    custom.create_namespaced_custom_object("datamix.io", "v1alpha1", namespace, "datamixturesweeps", {
        "apiVersion": "datamix.io/v1alpha1", "kind": "DataMixtureSweep", "metadata": {"name": "rbac-sweep"},
        "spec": {"experiment": spec, "search": {"trials": 4, "parallelism": 2, "seed": 5}, "final": {}}})

    def phase() -> str | None:
        obj = custom.get_namespaced_custom_object("datamix.io", "v1alpha1", namespace, "datamixturesweeps",
                                                  "rbac-sweep")
        return (obj.get("status") or {}).get("phase")

    with FakeTrainer(api, namespace) as trainer:
        clusterlib.wait_for(lambda: phase() in ("Succeeded", "Failed"), 300, description="sweep finished")
        assert not trainer.errors, trainer.errors
    assert phase() == "Succeeded"
    assert {"rbac-sweep-t000", "rbac-sweep-t003", "rbac-sweep-final"} <= set(trainer.played)


def test_clusterwide_rbac_can_i_table(cluster: clusterlib.Cluster, crd_installed: None,
                                      namespaces: dict[str, str], tmp_path: Path) -> None:
    ns_op, ns_any = namespaces["operator"], namespaces["other"]
    docs, sa = install_rbac(cluster, tmp_path, ns_op, {"clusterWide": True})
    try:
        kubeconfig = token_kubeconfig(cluster, ns_op, sa, tmp_path / "sa.kubeconfig")
        table = []
        for verb, resource in NOT_ALLOWED_ANYWHERE:
            table.append((verb, resource, ns_any, can_i(cluster, kubeconfig, verb, resource, ns_any), False))
        for verb, resource in ALLOWED_IN_WATCHED:
            table.append((verb, resource, ns_any, can_i(cluster, kubeconfig, verb, resource, ns_any), True))
            table.append((verb, resource, "*", can_i(cluster, kubeconfig, verb, resource, "*"), True))
        for verb, resource in ALLOWED_CLUSTER_READS:
            # Cluster-wide, kopf does not observe namespaces: only the CRD reads are granted.
            expected = not resource.startswith("namespaces")
            table.append((verb, resource, "", can_i(cluster, kubeconfig, verb, resource), expected))
        for verb, resource in NOT_ALLOWED_CLUSTER:
            table.append((verb, resource, "", can_i(cluster, kubeconfig, verb, resource), False))
        table.append(("get", "secrets", "*", can_i(cluster, kubeconfig, "get", "secrets", "*"), False))
        wrong = [row for row in table if row[3] != row[4]]
        assert not wrong, "kubectl auth can-i (verb, resource, namespace, got, expected):\n" + \
            "\n".join(map(str, wrong))
    finally:
        delete(cluster, [d for d in docs if d["kind"].startswith("Cluster")])
