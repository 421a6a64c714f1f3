"""The Helm chart (helm/datamix): `helm lint` and `helm template` with several value sets, the
security settings of the operator Deployment, the shape of the RBAC, the monitors, the
dashboard ConfigMap, and the single sources of the CRD and the dashboard.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from shiplib import CHART, HELM_MISSING, KUBE_VERSION, REPO, by_kind, helm, helm_bin, one, render, values_args

from datamix.crd import (
    CRD_FILE_NAME,
    POLICY_CRD_FILE_NAME,
    SWEEP_CRD_FILE_NAME,
    render_crd,
    render_policy_crd,
    render_sweep_crd,
)

needs_helm = pytest.mark.skipif(helm_bin() is None, reason=HELM_MISSING)

VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "namespaced": {"watchNamespaces": ["team-a", "team-b"]},
    "cluster-wide": {"clusterWide": True},
    "policy-without-admission": {"policy": {"admission": False, "volumeSources": ["persistentVolumeClaim", "nfs"],
                                            "nfsServers": ["nfs.example.com"]}},
    "monitoring": {"podMonitors": {"enabled": True, "labels": {"release": "kube-prometheus-stack"},
                                   "interval": "15s"},
                   "dashboard": {"namespace": "monitoring", "folder": "ML training"}},
    "namespaced-monitoring": {"watchNamespaces": ["team-a"], "podMonitors": {"enabled": True}},
    "pinned-image": {"image": {"repository": "registry.example.com/datamix/operator", "tag": "0.1.0",
                               "digest": "sha256:" + "ab" * 32, "pullPolicy": "IfNotPresent"},
                     "trainerImage": "registry.example.com/datamix/trainer:0.1.0",
                     "imagePullSecrets": [{"name": "regcred"}]},
    "openshift": {"watchNamespaces": ["team-a"], "rbac": {"ownerReferencesPermissionEnforcement": True}},
    "existing-service-account": {"serviceAccount": {"create": False, "name": "datamix-operator"},
                                 "rbac": {"create": False}},
    "minimal": {"dashboard": {"enabled": False}, "networkPolicy": {"enabled": False},
                "operator": {"extraArgs": ["--verbose"], "env": [{"name": "X", "value": "1"}]},
                "nodeSelector": {"kubernetes.io/os": "linux"},
                "tolerations": [{"key": "dedicated", "operator": "Exists"}],
                "fullnameOverride": "datamix-operator"},
}

# docs/operator.md, "RBAC: every API call it makes": the needed verbs, nothing more.
NAMESPACED_RESOURCES = {
    ("datamix.io", "datamixtureexperiments"): {"get", "list", "watch", "create"},
    ("datamix.io", "datamixtureexperiments/status"): {"patch"},
    ("datamix.io", "datamixturesweeps"): {"get", "list", "watch"},
    ("datamix.io", "datamixturesweeps/status"): {"patch"},
    ("", "configmaps"): {"get", "list", "watch", "create", "delete"},
    ("kubeflow.org", "pytorchjobs"): {"get", "list", "watch", "create", "patch", "delete"},
    ("", "pods"): {"list", "watch"},
    ("", "events"): {"create", "patch"},
}
LEASE_RESOURCES = {("coordination.k8s.io", "leases"): {"get", "create", "update"}}  # the release namespace only
CLUSTER_RESOURCES = {
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
    ("", "namespaces"): {"list", "watch"},  # kopf's namespace observer: namespaced mode only
}


def watched(values: dict[str, Any]) -> list[str]:
    """The namespaces the chart makes the operator watch: the release namespace unless told."""
    if values.get("clusterWide"):
        return []
    return list(values.get("watchNamespaces") or ["datamix-system"])


def grants(rules: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        for field in ("verbs", "resources", "apiGroups"):
            assert "*" not in rule[field], f"wildcard {field} in {rule}"
        for field in ("resourceNames", "nonResourceURLs"):
            assert not rule.get(field), f"{field} in {rule}"
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    if helm_bin() is None:
        pytest.skip(HELM_MISSING)
    tmp = tmp_path_factory.mktemp("values")
    return {name: render(values, tmp) for name, values in VALUE_SETS.items()}


# ---------------------------------------------------------------------------------------------
# single sources


def test_chart_crd_is_the_generated_crd() -> None:
    chart_copy = (CHART / "crds" / CRD_FILE_NAME).read_text()
    assert chart_copy == (REPO / "crds" / CRD_FILE_NAME).read_text(), "run `datamix crd --write`"
    assert chart_copy == render_crd(), "run `datamix crd --write`"
    assert (CHART / "crds" / SWEEP_CRD_FILE_NAME).read_text() == render_sweep_crd(), "run `datamix crd --write`"
    assert (CHART / "crds" / POLICY_CRD_FILE_NAME).read_text() == render_policy_crd(), "run `datamix crd --write`"
    assert sorted(p.name for p in (CHART / "crds").iterdir()) == sorted(
        [CRD_FILE_NAME, SWEEP_CRD_FILE_NAME, POLICY_CRD_FILE_NAME])


def test_chart_dashboard_is_the_generated_dashboard() -> None:
    res = subprocess.run([sys.executable, str(REPO / "dashboards" / "generate.py"), "--check"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert (CHART / "dashboards" / "datamix.json").read_bytes() == (REPO / "dashboards" / "datamix.json").read_bytes()


def _leaf_paths(node: Any, prefix: str = "") -> list[str]:
    if isinstance(node, dict) and node:
        return [p for k, v in node.items() for p in _leaf_paths(v, f"{prefix}.{k}" if prefix else k)]
    return [prefix]


def test_every_value_is_documented() -> None:
    """Each value (or a map above it) has a `# --` comment in values.yaml and a row in docs/install.md."""
    text = (CHART / "values.yaml").read_text()
    values = yaml.safe_load(text)
    commented: set[str] = set()
    stack: list[tuple[int, str]] = []
    pending = False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            pending = True
            continue
        if not stripped or stripped.startswith("#") or stripped.startswith("-") or ":" not in stripped:
            continue
        indent = len(line) - len(line.lstrip())
        while stack and stack[-1][0] >= indent:
            stack.pop()
        key = stripped.split(":", 1)[0]
        stack.append((indent, key))
        if pending:
            commented.add(".".join(k for _, k in stack))
            pending = False
    for path in _leaf_paths(values):
        parts = path.split(".")
        documented = any(".".join(parts[:i]) in commented for i in range(len(parts), 0, -1))
        assert documented, f"values.yaml: {path} has no `# --` comment"
    install = (REPO / "docs" / "install.md").read_text()
    for path in _leaf_paths(values):
        # A map value (resources, selectors, labels) may be documented as a whole.
        parts = path.split(".")
        prefixes = [".".join(parts[:i]) for i in range(len(parts), 0, -1)]
        assert any(f"| `{p}` |" in install for p in prefixes), f"docs/install.md does not document `{path}`"


# ---------------------------------------------------------------------------------------------
# helm lint / template


@needs_helm
@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_helm_lint(name: str, tmp_path: Path) -> None:
    res = helm("lint", "--strict", "--kube-version", KUBE_VERSION, str(CHART),
               *values_args(VALUE_SETS[name], tmp_path), check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "0 chart(s) failed" in res.stdout


@needs_helm
def test_plain_helm_template_and_lint_accept_the_chart() -> None:
    """Without --kube-version, as a user runs them: the pinned helm is built with the Kubernetes
    version ldflags of helm's Makefile (tools/k8s/build.sh), so it does not assume v1.20."""
    template = helm("template", "dmx", str(CHART), check=False)
    assert template.returncode == 0, template.stderr
    assert "kind: Deployment" in template.stdout
    lint = helm("lint", str(CHART), check=False)
    assert lint.returncode == 0, lint.stdout + lint.stderr


@needs_helm
def test_template_includes_crds_for_argocd(tmp_path: Path) -> None:
    from shiplib import render as render_docs

    docs = render_docs({}, tmp_path, include_crds=True)
    names = sorted(d["metadata"]["name"] for d in by_kind(docs, "CustomResourceDefinition"))
    assert names == ["datamixpolicies.datamix.io", "datamixtureexperiments.datamix.io", "datamixturesweeps.datamix.io"]


@needs_helm
@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_every_object_is_namespaced_explicitly(name: str, rendered: dict[str, list[dict[str, Any]]]) -> None:
    cluster_scoped = {"ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "ValidatingAdmissionPolicy",
                      "ValidatingAdmissionPolicyBinding", "DataMixPolicy"}
    for doc in rendered[name]:
        meta = doc["metadata"]
        assert ("namespace" in meta) == (doc["kind"] not in cluster_scoped), (doc["kind"], meta)
        assert meta["labels"]["app.kubernetes.io/part-of"] == "datamix"


@needs_helm
@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_operator_deployment(name: str, rendered: dict[str, list[dict[str, Any]]]) -> None:
    values = VALUE_SETS[name]
    dep = one(rendered[name], "Deployment")
    spec = dep["spec"]
    assert spec["replicas"] == 2
    pdb = one(rendered[name], "PodDisruptionBudget")
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": spec["selector"]}
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["runAsNonRoot"] is True
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "liveness"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"liveness": 8080, "metrics": 8081}
    res = container["resources"]
    assert {"cpu", "memory"} <= set(res["requests"]), res
    assert {"cpu", "memory"} <= set(res["limits"]), res
    assert container["command"] == ["datamix", "operator"]
    args = container["args"]
    assert "--liveness-port=8080" in args, args
    assert "--metrics-port=8081" in args, args
    namespaces = [a.split("=", 1)[1] for a in args if a.startswith("--namespace=")]
    assert namespaces == watched(values)
    assert ("--all-namespaces" in args) == (not namespaces)
    assert "--log-format=json" in args
    assert "--leader-elect" in args
    assert f"--leader-elect-id={dep['metadata']['name']}" in args
    assert "--leader-elect-lease-duration=15" in args
    expected_sa = values.get("serviceAccount", {}).get("name") or dep["metadata"]["name"]
    assert pod["serviceAccountName"] == expected_sa
    if "trainerImage" in values:
        assert f"--trainer-image={values['trainerImage']}" in args
    else:
        assert not [a for a in args if a.startswith("--trainer-image")]
    env = {e["name"]: e.get("value") for e in container["env"]}
    extra_env = {e["name"]: e["value"] for e in values.get("operator", {}).get("env", [])}
    assert env == {"POD_NAME": None, "POD_NAMESPACE": None, **extra_env}
    image = values.get("image", {})
    if image.get("digest"):
        assert container["image"].endswith("@" + image["digest"])
    else:
        assert container["image"] == "datamix-operator:0.1.0"


@needs_helm
@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_rbac_is_least_privilege(name: str, rendered: dict[str, list[dict[str, Any]]]) -> None:
    values = VALUE_SETS[name]
    docs = rendered[name]
    if values.get("rbac", {}).get("create") is False:
        assert not [d for d in docs if d["apiVersion"].startswith("rbac.")]
        assert not by_kind(docs, "ServiceAccount")
        return
    sa = one(docs, "ServiceAccount")
    namespaces = watched(values)
    roles, cluster_roles = by_kind(docs, "Role"), by_kind(docs, "ClusterRole")
    (lease_role,) = [r for r in roles if r["metadata"]["name"].endswith("-leader-election")]
    assert lease_role["metadata"]["namespace"] == "datamix-system"
    assert grants(lease_role["rules"]) == LEASE_RESOURCES
    roles = [r for r in roles if r is not lease_role]
    if namespaces:
        assert sorted(r["metadata"]["namespace"] for r in roles) == sorted(namespaces)
        extra = {}
        if values.get("rbac", {}).get("ownerReferencesPermissionEnforcement"):
            extra = {("datamix.io", "datamixtureexperiments/finalizers"): {"update"},
                     ("datamix.io", "datamixturesweeps/finalizers"): {"update"}}
        for role in roles:
            assert grants(role["rules"]) == {**NAMESPACED_RESOURCES, **extra}
        (cluster_role,) = cluster_roles
        assert grants(cluster_role["rules"]) == CLUSTER_RESOURCES
        bindings = [b for b in by_kind(docs, "RoleBinding") if b["roleRef"]["name"] != lease_role["metadata"]["name"]]
        assert sorted(b["metadata"]["namespace"] for b in bindings) == sorted(namespaces)
    else:
        assert not roles, "no Role for a cluster-wide install"
        assert [b["roleRef"]["name"] for b in by_kind(docs, "RoleBinding")] == [lease_role["metadata"]["name"]], \
            "a cluster-wide install: only the Lease's RoleBinding"
        (cluster_role,) = cluster_roles
        cluster_wide = {k: v for k, v in CLUSTER_RESOURCES.items() if k != ("", "namespaces")}
        assert grants(cluster_role["rules"]) == {**NAMESPACED_RESOURCES, **cluster_wide}
        bindings = []
    bindings += by_kind(docs, "ClusterRoleBinding")
    bindings += [b for b in by_kind(docs, "RoleBinding") if b["roleRef"]["name"] == lease_role["metadata"]["name"]]
    for binding in bindings:
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                                        "namespace": "datamix-system"}]
    all_rules = [r for d in roles + cluster_roles for r in d["rules"]]
    granted = grants(all_rules)
    assert not any(res in {"secrets", "nodes", "serviceaccounts/token", "roles", "clusterroles"}
                   for _, res in granted)
    assert granted[("apiextensions.k8s.io", "customresourcedefinitions")] == {"list", "watch"}


@needs_helm
@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_pod_monitors(name: str, rendered: dict[str, list[dict[str, Any]]]) -> None:
    values = VALUE_SETS[name]
    monitors = {d["metadata"]["name"].rsplit("-", 1)[1]: d for d in by_kind(rendered[name], "PodMonitor")}
    pm_values = values.get("podMonitors", {})
    if not pm_values.get("enabled"):
        assert not monitors, "PodMonitors are off by default"
        return
    assert set(monitors) == {"operator", "trainer"}
    for monitor in monitors.values():
        for key, value in pm_values.get("labels", {}).items():
            assert monitor["metadata"]["labels"][key] == value
        (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
        assert endpoint["port"] == "metrics"
        assert endpoint["interval"] == pm_values.get("interval", "30s")
    trainer = monitors["trainer"]["spec"]
    assert trainer["selector"]["matchLabels"] == {"app.kubernetes.io/managed-by": "datamix-operator",
                                                  "app.kubernetes.io/part-of": "datamix"}
    if watched(values):
        assert trainer["namespaceSelector"] == {"matchNames": watched(values)}
    else:
        assert trainer["namespaceSelector"] == {"any": True}
    dep = one(rendered[name], "Deployment")
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert monitors["operator"]["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


@needs_helm
@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_dashboard_configmap(name: str, rendered: dict[str, list[dict[str, Any]]]) -> None:
    values = VALUE_SETS[name]
    maps = [m for m in by_kind(rendered[name], "ConfigMap") if "grafana_dashboard" in m["metadata"]["labels"]]
    if values.get("dashboard", {}).get("enabled") is False:
        assert not maps
        return
    (cm,) = maps
    dashboard = values.get("dashboard", {})
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"]["grafana_folder"] == dashboard.get("folder", "DataMix")
    assert cm["metadata"]["namespace"] == dashboard.get("namespace", "datamix-system")
    assert cm["data"]["datamix.json"] == (REPO / "dashboards" / "datamix.json").read_text().rstrip("\n")
    json.loads(cm["data"]["datamix.json"])
    # Client-side apply stores the whole object in an annotation: 256 KiB at most.
    assert len(json.dumps(cm).encode()) < 256 * 1024


@needs_helm
@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_policy_objects(name: str, rendered: dict[str, list[dict[str, Any]]]) -> None:
    """One parameters' ConfigMap that PolicyParams reads; the admission policy is the generated
    spec, bound to the watched namespaces, with Deny and no fallback when its parameters are gone."""
    from datamix.policy import PolicyParams, admission_policy_spec

    values = VALUE_SETS[name]
    docs = rendered[name]
    (params_cm,) = [m for m in by_kind(docs, "ConfigMap") if m["metadata"]["name"].endswith("-policy")]
    mounted = yaml.safe_load(params_cm["data"]["policy.yaml"])
    params = PolicyParams.from_spec(mounted["spec"])
    policy_values = values.get("policy", {})
    admission = policy_values.get("admission", True)
    assert params.secretReferences == ("CheckedAtAdmission" if admission else "Refused")
    assert params.volumeSources == tuple(policy_values.get("volumeSources", ["persistentVolumeClaim"]))
    trainer_image = values.get("trainerImage", "datamix-trainer")
    assert params.imagePrefixes == (trainer_image.rsplit(":", 1)[0],)
    # The operator reads the same ConfigMap (mounted) and restarts when it changes.
    pod = one(docs, "Deployment")["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "policy")
    assert f"--policy={mount['mountPath']}" in container["args"]
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "policy")
    assert volume["configMap"]["name"] == params_cm["metadata"]["name"]
    assert pod["metadata"]["annotations"]["checksum/policy"]
    policies = by_kind(docs, "ValidatingAdmissionPolicy")
    bindings = by_kind(docs, "ValidatingAdmissionPolicyBinding")
    if not admission:
        assert not policies and not bindings and not by_kind(docs, "DataMixPolicy")
        return
    # The admission policy's parameters are the very object the operator reads.
    assert one(docs, "DataMixPolicy") == mounted
    (policy,), (binding,) = policies, bindings
    assert policy["spec"] == admission_policy_spec()
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"]
    assert binding["spec"]["paramRef"] == {"name": mounted["metadata"]["name"], "parameterNotFoundAction": "Deny"}
    if watched(values):
        (expr,) = binding["spec"]["matchResources"]["namespaceSelector"]["matchExpressions"]
        assert expr == {"key": "kubernetes.io/metadata.name", "operator": "In", "values": watched(values)}
    else:
        assert "matchResources" not in binding["spec"]


@needs_helm
@pytest.mark.parametrize(("trainer_image", "prefix"), [
    ("", "datamix-trainer"),
    ("registry.example.com:5000/datamix/trainer", "registry.example.com:5000/datamix/trainer"),
    ("registry.example.com:5000/datamix/trainer:0.1.0", "registry.example.com:5000/datamix/trainer"),
    ("registry.example.com/datamix/trainer:0.1.0@sha256:" + "ab" * 32, "registry.example.com/datamix/trainer"),
])
def test_policy_allows_the_trainer_images_repository_by_default(trainer_image: str, prefix: str,
                                                                tmp_path: Path) -> None:
    docs = render({"trainerImage": trainer_image} if trainer_image else {}, tmp_path)
    (params,) = [m for m in by_kind(docs, "ConfigMap") if m["metadata"]["name"].endswith("-policy")]
    assert yaml.safe_load(params["data"]["policy.yaml"])["spec"]["imagePrefixes"] == [prefix]


@needs_helm
def test_cluster_wide_and_watch_namespaces_exclude_each_other(tmp_path: Path) -> None:
    res = helm("template", "dmx", str(CHART), "--kube-version", KUBE_VERSION,
               *values_args({"clusterWide": True, "watchNamespaces": ["a"]}, tmp_path), check=False)
    assert res.returncode != 0
    assert "set either clusterWide or watchNamespaces, not both" in res.stderr


@needs_helm
def test_namespaced_rbac_needs_no_cluster_write(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["namespaced"]
    (cluster_role,) = by_kind(docs, "ClusterRole")
    verbs = {v for r in cluster_role["rules"] for v in r["verbs"]}
    assert verbs == {"list", "watch"}


@needs_helm
@pytest.mark.cluster
@pytest.mark.parametrize("name", ["defaults", "namespaced", "pinned-image", "minimal"])
def test_rendered_chart_is_accepted_by_the_api_server(name: str, cluster: Any, k8s_client: Any,
                                                      tmp_path: Path) -> None:
    """Server-side dry run of every object (the CRD aside: the API tests cover it) against the real
    API server: schemas, names, RBAC references."""
    from testsupport import clusterlib

    values = copy.deepcopy(VALUE_SETS[name])
    created = [clusterlib.create_namespace(k8s_client, f"chart-{name}")]
    if values.get("watchNamespaces"):
        values["watchNamespaces"] = [clusterlib.create_namespace(k8s_client, "chart-watched") for _ in range(2)]
        created += values["watchNamespaces"]
    # The chart's own kinds need their CRDs (the DataMixPolicy object).
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CHART / "crds" / POLICY_CRD_FILE_NAME))
    cluster.kubectl("wait", "--for=condition=Established", "crd/datamixpolicies.datamix.io", "--timeout=60s")
    try:
        docs = render(values, tmp_path, release=clusterlib.unique_name("dmx", 20), namespace=created[0])
        res = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump_all(docs), check=False)
        assert res.returncode == 0, res.stderr
        assert res.stdout.count("(server dry run)") == len(docs)
    finally:
        for ns in created:
            clusterlib.delete_namespace(k8s_client, ns)


def operator_doc_rbac() -> dict[tuple[str, str], set[str]]:
    """The "needed verbs" table of docs/operator.md ("RBAC: every API call it makes")."""
    text = (REPO / "docs" / "operator.md").read_text()
    section = text[text.index("### RBAC: every API call it makes"):]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`") or cells[0] == "API group":
            continue
        group = cells[0].strip("`").replace('""', "")
        verbs = {v.strip() for v in cells[2].split("(")[0].split(",")}
        rows[(group, cells[1].strip("`"))] = verbs
    return rows


def test_rbac_is_the_operators_documented_api_usage() -> None:
    """The chart grants exactly what docs/operator.md says the operator calls."""
    documented = operator_doc_rbac()
    assert documented, "docs/operator.md has no RBAC table"
    assert documented == {**NAMESPACED_RESOURCES, **CLUSTER_RESOURCES, **LEASE_RESOURCES}
