"""The Argo CD example (deploy/argocd/): sync waves CRDs -> operator -> experiments, sources that
exist, operator values the chart accepts, and argocd-cm snippets (here and in docs/install.md)
that carry exactly deploy/argocd/health.lua.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from shiplib import HELM_MISSING, REPO, helm_bin, one, render

ARGOCD = REPO / "deploy" / "argocd"
HEALTH_KEY = "resource.customizations.health.datamix.io_DataMixtureExperiment"


def load(path: Path) -> dict[str, Any]:
    doc = yaml.safe_load(path.read_text())
    assert isinstance(doc, dict)
    return doc


def apps() -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in map(load, sorted((ARGOCD / "apps").glob("*.yaml")))}


def sources(app: dict[str, Any]) -> list[dict[str, Any]]:
    spec = app["spec"]
    return spec.get("sources") or [spec["source"]]


def test_sync_waves_order_crds_operator_experiments() -> None:
    waves = {name: int(app["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"])
             for name, app in apps().items()}
    assert waves["datamix-crds"] < waves["datamix-operator"] < waves["datamix-experiments"]
    for app in apps().values():
        # Deletion cascades through the finalizer, in reverse wave order.
        assert "resources-finalizer.argocd.argoproj.io" in app["metadata"]["finalizers"]


def test_sources_exist_in_the_repository() -> None:
    parent = load(ARGOCD / "application.yaml")
    assert (REPO / parent["spec"]["source"]["path"]).is_dir()
    for name, app in apps().items():
        for src in sources(app):
            if name == "datamix-experiments":
                continue  # the user's own folder of manifests
            assert (REPO / src["path"]).is_dir(), (name, src["path"])
    crd_paths = [s["path"] for s in sources(apps()["datamix-crds"])]
    assert "crds" in crd_paths
    # Every namespace the operator watches is created in the CRD wave.
    namespaces = {load(p)["metadata"]["name"] for p in (ARGOCD / "namespaces").glob("*.yaml")}
    values = sources(apps()["datamix-operator"])[0]["helm"]["valuesObject"]
    assert set(values["watchNamespaces"]) <= namespaces


def test_operator_app_skips_crds_and_experiments_skip_dry_run() -> None:
    operator = apps()["datamix-operator"]
    assert sources(operator)[0]["helm"]["skipCrds"] is True
    assert sources(operator)[0]["path"] == "helm/datamix"
    experiments = apps()["datamix-experiments"]
    assert "SkipDryRunOnMissingResource=true" in experiments["spec"]["syncPolicy"]["syncOptions"]
    crds = apps()["datamix-crds"]
    assert crds["spec"]["syncPolicy"]["automated"]["prune"] is False


def test_operator_app_values_render(tmp_path: Path) -> None:
    if helm_bin() is None:
        pytest.skip(HELM_MISSING)
    values = sources(apps()["datamix-operator"])[0]["helm"]["valuesObject"]
    docs = render(values, tmp_path)
    dep = one(docs, "Deployment")
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example.com/datamix/operator:0.1.0"
    assert len([d for d in docs if d["kind"] == "PodMonitor"]) == 2


def test_argocd_cm_snippet_is_health_lua() -> None:
    data = load(ARGOCD / "argocd-cm.yaml")["data"]
    assert data[HEALTH_KEY] == (ARGOCD / "health.lua").read_text()


def test_install_doc_carries_the_same_snippet() -> None:
    text = (REPO / "docs" / "install.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.DOTALL)
    snippets = [yaml.safe_load(b) for b in blocks if HEALTH_KEY in b]
    assert snippets, f"docs/install.md has no yaml block with {HEALTH_KEY}"
    assert snippets[0]["data"][HEALTH_KEY] == (ARGOCD / "health.lua").read_text()


def test_application_health_snippet_under_lua51() -> None:
    lupa = pytest.importorskip("lupa.lua51")
    script = load(ARGOCD / "argocd-cm.yaml")["data"]["resource.customizations.health.argoproj.io_Application"]
    for obj, expected in [({}, "Progressing"),
                          ({"status": {"health": {"status": "Healthy"}}}, "Healthy"),
                          ({"status": {"health": {"status": "Degraded", "message": "x"}}}, "Degraded")]:
        lua = lupa.LuaRuntime()
        lua.globals().obj = lua.table_from(json.loads(json.dumps(obj)), recursive=True)
        assert lua.execute(script)["status"] == expected
