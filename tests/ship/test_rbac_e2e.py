"""Least privilege, proven on the real local control plane (marker `cluster`).

The chart's rendered ServiceAccount and RBAC are applied to the API server; a token of that
ServiceAccount comes from the TokenRequest API (`kubectl create token`); a kubeconfig holding only
that token runs the real operator (`datamix operator`) through its scenario: an experiment gets
its ConfigMap and PyTorchJob, the fake GPU pods run and finish, the run succeeds with the
master's result, an edit of the mixture starts a new run and retires the old one's children,
suspend acts on the job, a failing run fails, events are posted; no request of the operator is
forbidden. Then the operator e2e suite's own lifecycle scenario (testsupport/experiments.py)
runs under the same token. Along the way deploy/argocd/health.lua judges the live objects
(Healthy, Progressing, Suspended, Degraded).
A table of `kubectl auth can-i` checks, made with the same token, shows what it may and may not do.
"""

from __future__ import annotations

import base64
import copy
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from live import Admin, experiment, with_fake_pods
from shiplib import HELM_MISSING, by_kind, helm_bin, render
from test_health_lua import evaluate as argocd_health

from datamix.experiment import run_id, run_name
from testsupport import clusterlib
from testsupport.experiments import apply_crd, apply_sweep_crd, lifecycle_scenario
from testsupport.operator_process import OperatorProcess

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


# ---------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def crd_installed(cluster: clusterlib.Cluster) -> None:
    apply_crd(cluster)
    apply_sweep_crd(cluster)


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
    ("update", "configmaps"), ("patch", "configmaps"),
    ("update", "pytorchjobs.kubeflow.org"), ("create", "deployments.apps"),
    ("delete", "leases.coordination.k8s.io"),
]
ALLOWED_IN_WATCHED = [
    ("get", "datamixtureexperiments.datamix.io"), ("list", "datamixtureexperiments.datamix.io"),
    ("watch", "datamixtureexperiments.datamix.io"), ("patch", "datamixtureexperiments.datamix.io/status"),
    ("create", "datamixtureexperiments.datamix.io"),
    ("get", "datamixturesweeps.datamix.io"), ("list", "datamixturesweeps.datamix.io"),
    ("watch", "datamixturesweeps.datamix.io"), ("patch", "datamixturesweeps.datamix.io/status"),
    ("get", "configmaps"), ("list", "configmaps"), ("watch", "configmaps"), ("create", "configmaps"),
    ("delete", "configmaps"),
    ("get", "pytorchjobs.kubeflow.org"), ("list", "pytorchjobs.kubeflow.org"),
    ("watch", "pytorchjobs.kubeflow.org"), ("create", "pytorchjobs.kubeflow.org"),
    ("patch", "pytorchjobs.kubeflow.org"), ("delete", "pytorchjobs.kubeflow.org"),
    ("list", "pods"), ("watch", "pods"), ("create", "events"), ("patch", "events"),
]
ALLOWED_CLUSTER_READS = [
    ("list", "customresourcedefinitions.apiextensions.k8s.io"),
    ("watch", "customresourcedefinitions.apiextensions.k8s.io"),
    ("list", "namespaces"), ("watch", "namespaces"),
]
# Leader election: the Lease in the operator's own namespace only.
LEASE_VERBS = [("get", "leases.coordination.k8s.io"), ("create", "leases.coordination.k8s.io"),
               ("update", "leases.coordination.k8s.io")]
NOT_ALLOWED_CLUSTER = [("get", "customresourcedefinitions.apiextensions.k8s.io"), ("get", "namespaces"),
                       ("list", "nodes"), ("list", "clusterroles.rbac.authorization.k8s.io")]


def can_i_mismatches(cluster: clusterlib.Cluster, kubeconfig: Path,
                     expected: list[tuple[str, str, str | None, bool]]) -> list[tuple[str, str, str, bool, bool]]:
    """(verb, resource, namespace, got, expected) for each `kubectl auth can-i` answer that differs."""
    table = [(verb, resource, ns or "", can_i(cluster, kubeconfig, verb, resource, ns), want)
             for verb, resource, ns, want in expected]
    return [row for row in table if row[3] != row[4]]


def assert_can_i(cluster: clusterlib.Cluster, kubeconfig: Path,
                 expected: list[tuple[str, str, str | None, bool]]) -> None:
    wrong = can_i_mismatches(cluster, kubeconfig, expected)
    assert not wrong, "kubectl auth can-i (verb, resource, namespace, got, expected):\n" + \
        "\n".join(map(str, wrong))


def namespaced_can_i_table(watched: str, other: str, own: str) -> list[tuple[str, str, str | None, bool]]:
    """What a namespaced install (watching `watched`) may do, and may not, anywhere."""
    table: list[tuple[str, str, str | None, bool]] = []
    for verb, resource in NOT_ALLOWED_ANYWHERE:
        table += [(verb, resource, ns, False) for ns in (watched, other, own)]
    for verb, resource in ALLOWED_IN_WATCHED:
        table.append((verb, resource, watched, True))
        # Namespaced install: nothing in other namespaces, its own included.
        table += [(verb, resource, ns, False) for ns in (other, own, "*")]
    table += [(verb, resource, None, True) for verb, resource in ALLOWED_CLUSTER_READS]
    table += [(verb, resource, None, False) for verb, resource in NOT_ALLOWED_CLUSTER]
    for verb, resource in LEASE_VERBS:
        table += [(verb, resource, own, True), (verb, resource, watched, False)]
    return table


# The steps of the namespaced scenario, in order; each leaves the cluster as the next expects.


def step_first_run_succeeds(admin: Admin, ns: str) -> dict[str, Any]:
    """An experiment gets its ConfigMap and PyTorchJob; the fake pods finish; the run succeeds."""
    first = with_fake_pods(experiment("rbac-mix"), "3s")
    admin.apply(ns, first)
    name1 = run_name(first)
    assert run_name(admin.experiment(ns, "rbac-mix")) == name1
    clusterlib.wait_for(lambda: admin.configmaps(ns) == [name1], 90, description="run spec ConfigMap created")
    clusterlib.wait_for(lambda: admin.jobs(ns) == [name1], 90, description="PyTorchJob created")
    clusterlib.wait_for(lambda: admin.status(ns, "rbac-mix").get("phase") == "Succeeded", 180,
                        description="first run Succeeded")
    assert argocd_health(admin.experiment(ns, "rbac-mix"))["status"] == "Healthy"
    status = admin.status(ns, "rbac-mix")
    assert status["observedGeneration"] == admin.experiment(ns, "rbac-mix")["metadata"]["generation"]
    assert status["run"]["id"] == run_id(first)
    return first


def step_edit_starts_a_new_run(admin: Admin, ns: str, first: dict[str, Any]) -> dict[str, Any]:
    """A run-defining edit: a new run; the old run's children are deleted (retired)."""
    second = with_fake_pods(experiment("rbac-mix", weights=(1, 3)), "600s")
    admin.apply(ns, second)
    name2 = run_name(second)
    clusterlib.wait_for(lambda: admin.jobs(ns) == [name2], 90,
                        description="only the second run's PyTorchJob (the first run's deleted)")
    clusterlib.wait_for(lambda: admin.configmaps(ns) == [name2], 90,
                        description="only the second run's ConfigMap (the first run's deleted)")
    previous = admin.status(ns, "rbac-mix").get("previousRuns") or []
    assert [r["id"] for r in previous] == [run_id(first)]
    clusterlib.wait_for(lambda: admin.status(ns, "rbac-mix").get("phase") == "Running", 120,
                        description="second run Running")
    assert argocd_health(admin.experiment(ns, "rbac-mix"))["status"] == "Progressing"
    return second


def step_suspend_patches_the_job(admin: Admin, ns: str, second: dict[str, Any]) -> None:
    suspended = copy.deepcopy(second)
    suspended["spec"]["suspend"] = True
    admin.apply(ns, suspended)
    job = run_name(second)
    clusterlib.wait_for(lambda: admin.job(ns, job)["spec"]["runPolicy"].get("suspend") is True, 90,
                        description="job suspended")
    clusterlib.wait_for(lambda: admin.status(ns, "rbac-mix").get("phase") == "Suspended", 90,
                        description="experiment Suspended")
    assert argocd_health(admin.experiment(ns, "rbac-mix"))["status"] == "Suspended"


def step_failing_run_fails(admin: Admin, ns: str) -> None:
    """A run whose program fails (exit code 1): Failed, and Degraded for Argo CD."""
    failing = experiment("rbac-fail")
    failing["spec"]["podTemplate"] = {"metadata": {"annotations": {
        clusterlib.FAKE_DURATION: "2s", clusterlib.FAKE_EXIT_CODE: "1"}}}
    admin.apply(ns, failing)
    clusterlib.wait_for(lambda: admin.status(ns, "rbac-fail").get("phase") == "Failed", 180,
                        description="failing run Failed")
    verdict = argocd_health(admin.experiment(ns, "rbac-fail"))
    assert verdict["status"] == "Degraded", verdict


def step_events_were_posted(admin: Admin, ns: str) -> None:
    events = admin.core.list_namespaced_event(ns, field_selector="involvedObject.name=rbac-mix")
    assert events.items, "the operator posted no events"


def step_unwatched_namespace_is_left_alone(admin: Admin, ns: str) -> None:
    admin.apply(ns, experiment("elsewhere"))
    time.sleep(3)
    assert not admin.status(ns, "elsewhere"), "no status written outside the watched namespace"
    assert not admin.jobs(ns), "no PyTorchJob created outside the watched namespace"


def assert_never_refused(log: str) -> None:
    for marker in ("403", "Forbidden", "forbidden"):
        assert marker not in log, f"the operator was refused something ({marker!r}):\n{log[-4000:]}"


def test_namespaced_rbac_runs_the_operator_scenario(cluster: clusterlib.Cluster, k8s_client: Any,
                                                   crd_installed: None, namespaces: dict[str, str],
                                                   tmp_path: Path) -> None:
    ns_op, ns_watched, ns_other = namespaces["operator"], namespaces["watched"], namespaces["other"]
    docs, sa = install_rbac(cluster, tmp_path, ns_op, {"watchNamespaces": [ns_watched]})
    try:
        kubeconfig = token_kubeconfig(cluster, ns_op, sa, tmp_path / "sa.kubeconfig")
        assert_can_i(cluster, kubeconfig, namespaced_can_i_table(ns_watched, ns_other, ns_op))

        # The operator's scenario under that token.
        admin = Admin(k8s_client)
        # POD_NAMESPACE as the chart's downward API sets it: the leader Lease lives there.
        own = {"POD_NAMESPACE": ns_op}
        with OperatorProcess(kubeconfig, [ns_watched], log_path=tmp_path / "operator.log", resync_seconds=5,
                             trainer_image=None, extra_args=["--log-format=plain"], env=own) as operator:
            try:
                first = step_first_run_succeeds(admin, ns_watched)
                second = step_edit_starts_a_new_run(admin, ns_watched, first)
                step_suspend_patches_the_job(admin, ns_watched, second)
                step_failing_run_fails(admin, ns_watched)
                step_events_were_posted(admin, ns_watched)
                step_unwatched_namespace_is_left_alone(admin, ns_other)
            except BaseException:
                print(operator.log_tail(80))
                raise
            assert_never_refused(operator.log_text())

        # The operator e2e suite's lifecycle scenario (testsupport/experiments.py), same token.
        with OperatorProcess(kubeconfig, [ns_watched], log_dir=tmp_path, env=own) as op:
            done = lifecycle_scenario(k8s_client, cluster, ns_watched, op=op)
            assert argocd_health(done)["status"] == "Healthy"
            assert_never_refused(op.log_text())

        # A DataMixtureSweep under the same token: trials and the final run created, the fit, the
        # sweep's status written (the sweep rows of the RBAC table).
        with OperatorProcess(kubeconfig, [ns_watched], log_dir=tmp_path, env=own) as op:
            sweep_scenario(k8s_client, ns_watched)
            assert_never_refused(op.log_text())
    finally:
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
        table: list[tuple[str, str, str | None, bool]] = []
        table += [(verb, resource, ns_any, False) for verb, resource in NOT_ALLOWED_ANYWHERE]
        for verb, resource in ALLOWED_IN_WATCHED:
            table += [(verb, resource, ns_any, True), (verb, resource, "*", True)]
        # Cluster-wide, kopf does not observe namespaces: only the CRD reads are granted.
        table += [(verb, resource, None, not resource.startswith("namespaces"))
                  for verb, resource in ALLOWED_CLUSTER_READS]
        table += [(verb, resource, None, False) for verb, resource in NOT_ALLOWED_CLUSTER]
        table.append(("get", "secrets", "*", False))
        table += [(verb, resource, ns_op, True) for verb, resource in LEASE_VERBS]
        table += [(verb, resource, ns_any, False) for verb, resource in LEASE_VERBS]
        assert_can_i(cluster, kubeconfig, table)
    finally:
        delete(cluster, [d for d in docs if d["kind"].startswith("Cluster")])
