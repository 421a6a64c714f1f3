"""The DataMix policy against the real API server, for a tenant who may only create, get and list
DataMixtureExperiments in one namespace (impersonated with `kubectl --as`).

With the chart's ValidatingAdmissionPolicy installed, the API server refuses every manifest of
tests/security/abusive_manifests.py with the field named, and stores nothing; a Secret the tenant
may read and the benign manifest are accepted. With no admission policy installed, the operator
(run with the chart's parameters, `--policy`) ends each abusive experiment Stalled/PolicyViolation
without creating a ConfigMap or a PyTorchJob, and creates the benign one's job.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from datamix import GROUP, PLURAL, VERSION
from datamix.crd import POLICY_CRD_FILE_NAME
from datamix.policy import POLICY_PLURAL, PolicyParams
from tests.security.abusive_manifests import (
    ABUSIVE_MANIFESTS,
    SECRET_THE_USER_CANNOT_READ,
    SECRET_THE_USER_MAY_READ,
    TEST_POLICY,
    benign_manifest,
)
from tests.ship.shiplib import HELM_MISSING, by_kind, helm_bin, render
from testsupport import clusterlib
from testsupport.clusterlib import wait_for
from testsupport.experiments import (
    apply_crd,
    condition,
    get_experiment,
    list_configmaps,
    list_jobs,
    operator_kubeconfig,
)
from testsupport.operator_process import OperatorProcess

pytestmark = [pytest.mark.cluster, pytest.mark.skipif(helm_bin() is None, reason=HELM_MISSING)]

TENANT = "policy-e2e-tenant"
REPO = Path(__file__).resolve().parents[2]


def policy_values(params: PolicyParams, admission: bool) -> dict[str, Any]:
    """The chart's `policy` values that render `params`."""
    values: dict[str, Any] = {k: v for k, v in params.spec().items() if k != "secretReferences"}
    values["admission"] = admission
    if not admission:
        values["secretReferencesWithoutAdmission"] = params.secretReferences
    return values


def tenant_namespace(cluster: clusterlib.Cluster, api: Any, prefix: str) -> str:
    """A namespace where TENANT may create, get and list experiments and get one Secret, nothing else."""
    ns = clusterlib.create_namespace(api, prefix)
    objects = [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "experimenter"},
         "rules": [{"apiGroups": [GROUP], "resources": [PLURAL], "verbs": ["create", "get", "list"]},
                   {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"],
                    "resourceNames": [SECRET_THE_USER_MAY_READ]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "experimenter"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "experimenter"},
         "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": TENANT}]},
        *[{"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": {"password": "s3cret"}}
          for name in (SECRET_THE_USER_CANNOT_READ, SECRET_THE_USER_MAY_READ)],
    ]
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump_all(objects))
    return ns


def as_tenant_create(cluster: clusterlib.Cluster, ns: str, manifest: dict[str, Any], dry_run: bool = False) -> Any:
    args = ["--as", TENANT, "create", "-n", ns, "-f", "-"]
    if dry_run:
        args.append("--dry-run=server")
    return cluster.kubectl(*args, input=yaml.safe_dump(manifest), check=False)


def named(manifest: dict[str, Any], name: str) -> dict[str, Any]:
    return {**manifest, "metadata": {**manifest["metadata"], "name": name[:40].rstrip("-")}}


def stored(api: Any, ns: str) -> list[str]:
    from kubernetes import client

    items = client.CustomObjectsApi(api).list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)["items"]
    return [i["metadata"]["name"] for i in items]


@pytest.fixture(scope="module")
def crd(cluster: clusterlib.Cluster) -> None:
    apply_crd(cluster)
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds" / POLICY_CRD_FILE_NAME))
    cluster.kubectl("wait", "--for=condition=Established", f"crd/{POLICY_PLURAL}.{GROUP}", "--timeout=60s")


def test_the_tenant_may_do_nothing_else(cluster: clusterlib.Cluster, k8s_client: Any, crd: None) -> None:
    ns = tenant_namespace(cluster, k8s_client, "policy-rbac")
    try:
        def can(*args: str) -> str:
            return str(cluster.kubectl("auth", "can-i", "--as", TENANT, "-n", ns, *args, check=False).stdout.strip())

        assert can("create", f"{PLURAL}.{GROUP}") == "yes"
        assert can("create", "pods") == "no"
        assert can("create", "pytorchjobs.kubeflow.org") == "no"
        assert can("get", f"secrets/{SECRET_THE_USER_CANNOT_READ}") == "no"
        assert can("get", f"secrets/{SECRET_THE_USER_MAY_READ}") == "yes"
    finally:
        clusterlib.delete_namespace(k8s_client, ns)


# ---------------------------------------------------------------------------------------------
# with the admission policy


@pytest.fixture(scope="module")
def admission_ns(cluster: clusterlib.Cluster, k8s_client: Any, crd: None,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    ns = tenant_namespace(cluster, k8s_client, "policy-admission")
    release_ns = clusterlib.create_namespace(k8s_client, "policy-release")
    release = clusterlib.unique_name("dmxpol", 20)
    docs = render({"watchNamespaces": [ns], "trainerImage": "datamix-trainer:0.1.0",
                   "policy": policy_values(TEST_POLICY, admission=True)},
                  tmp_path_factory.mktemp("values"), release=release, namespace=release_ns)
    objects = [*by_kind(docs, "ValidatingAdmissionPolicy"), *by_kind(docs, "ValidatingAdmissionPolicyBinding"),
               *by_kind(docs, "DataMixPolicy")]
    assert len(objects) == 3
    text = yaml.safe_dump_all(objects)
    res = cluster.kubectl("apply", "-f", "-", input=text, check=False)
    assert res.returncode == 0, res.stderr
    try:
        # The API server compiles a new policy and starts enforcing it within a few seconds; until
        # its informer has the parameters it refuses everything ("no params found").
        _, probe, field, _ = ABUSIVE_MANIFESTS[0]
        wait_for(lambda: f"{field}: " in as_tenant_create(cluster, ns, named(probe, "probe"), dry_run=True).stderr,
                 60, description="the admission policy in force with its parameters")
        yield ns
    finally:
        cluster.kubectl("delete", "--ignore-not-found", "-f", "-", input=text, check=False)
        clusterlib.delete_namespace(k8s_client, ns)
        clusterlib.delete_namespace(k8s_client, release_ns)


def test_admission_policy_has_no_type_errors(cluster: clusterlib.Cluster, admission_ns: str) -> None:
    """The API server type-checks the policy's CEL against the CRD's schema and the ConfigMap."""
    import json

    policies = json.loads(cluster.kubectl("get", "validatingadmissionpolicies", "-o", "json").stdout)["items"]
    ours = [p for p in policies if p["metadata"]["name"].startswith("dmxpol")]
    assert ours
    for policy in ours:
        checking = (policy.get("status") or {}).get("typeChecking") or {}
        assert not checking.get("expressionWarnings"), checking


@pytest.mark.parametrize(
    ("manifest", "field", "message"), [pytest.param(m, f, s, id=i) for i, m, f, s in ABUSIVE_MANIFESTS]
)
def test_abusive_manifest_is_refused_at_admission(cluster: clusterlib.Cluster, k8s_client: Any, admission_ns: str,
                                                  manifest: dict[str, Any], field: str, message: str) -> None:
    res = as_tenant_create(cluster, admission_ns, manifest)
    assert res.returncode != 0, f"accepted: {res.stdout}"
    assert "denied request" in res.stderr, res.stderr
    assert f"{field}: " in res.stderr, res.stderr
    assert message in res.stderr, res.stderr
    assert manifest["metadata"]["name"] not in stored(k8s_client, admission_ns)


def test_benign_manifest_and_a_readable_secret_are_accepted_at_admission(
        cluster: clusterlib.Cluster, k8s_client: Any, admission_ns: str) -> None:
    res = as_tenant_create(cluster, admission_ns, benign_manifest())
    assert res.returncode == 0, res.stderr
    readable = named(benign_manifest(), "readable-secret")
    readable["spec"]["env"].append(
        {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": SECRET_THE_USER_MAY_READ, "key": "password"}}})
    readable["spec"]["imagePullSecrets"] = [{"name": SECRET_THE_USER_MAY_READ}]
    res = as_tenant_create(cluster, admission_ns, readable)
    assert res.returncode == 0, res.stderr
    assert {"benign", "readable-secret"} <= set(stored(k8s_client, admission_ns))


# ---------------------------------------------------------------------------------------------
# without the admission policy: the operator


@pytest.fixture
def operator_ns(cluster: clusterlib.Cluster, k8s_client: Any, crd: None, tmp_path: Path) -> Iterator[str]:
    ns = tenant_namespace(cluster, k8s_client, "policy-operator")
    # The parameters exactly as the chart renders them with policy.admission=false.
    docs = render({"watchNamespaces": [ns], "policy": policy_values(TEST_POLICY, admission=False)}, tmp_path)
    assert not by_kind(docs, "ValidatingAdmissionPolicy")
    assert not by_kind(docs, "DataMixPolicy")
    (params,) = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-policy")]
    assert yaml.safe_load(params["data"]["policy.yaml"])["spec"]["secretReferences"] == "Refused"
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(yaml.safe_dump(params))
    op = OperatorProcess(operator_kubeconfig(cluster), [ns], extra_args=["--policy", str(policy_file)])
    op.start()
    try:
        yield ns
    finally:
        op.stop()
        print(op.log_tail(40))
        clusterlib.delete_namespace(k8s_client, ns, wait_pods=True)


def test_without_admission_the_operator_stalls_every_abusive_experiment(
        cluster: clusterlib.Cluster, k8s_client: Any, operator_ns: str) -> None:
    names = {}
    for case_id, manifest, field, message in ABUSIVE_MANIFESTS:
        name = named(manifest, f"x-{case_id}")["metadata"]["name"]
        res = as_tenant_create(cluster, operator_ns, named(manifest, name))
        assert res.returncode == 0, (case_id, res.stderr)
        names[case_id] = (name, field, message)
    res = as_tenant_create(cluster, operator_ns, benign_manifest())
    assert res.returncode == 0, res.stderr

    def stalled(name: str) -> dict[str, Any] | None:
        exp = get_experiment(k8s_client, operator_ns, name)
        c = condition(exp, "Stalled")
        return c if c.get("status") == "True" else None

    wait_for(lambda: list_jobs(k8s_client, operator_ns, "benign"), 120, description="the benign experiment's job")
    for case_id, (name, field, message) in names.items():
        c = wait_for(lambda name=name: stalled(name), 60, description=f"{case_id} Stalled")
        assert c["reason"] == "PolicyViolation", (case_id, c)
        assert c["message"].startswith(f"{field}: ") or f"; {field}: " in c["message"], (case_id, c["message"])
        assert message in c["message"], (case_id, c["message"])
    for case_id, (name, _, _) in names.items():
        assert list_jobs(k8s_client, operator_ns, name) == [], case_id
        assert list_configmaps(k8s_client, operator_ns, name) == [], case_id
    assert len(list_configmaps(k8s_client, operator_ns, "benign")) == 1
