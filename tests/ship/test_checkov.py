"""checkov over the rendered chart (several value sets, CRDs included) and the Dockerfile: no
failed check, and every skipped check carries its reason next to the setting it concerns
(a `checkov.io/skipN` annotation in the chart, a `# checkov:skip=` comment in the Dockerfile).

checkov lives in its own virtualenv (tools/ci/install-checkov.sh), not in .venv: its pins would
downgrade packages the project needs.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from shiplib import HELM_MISSING, REPO, checkov_bin, helm_bin, render_text

CHECKOV = checkov_bin()
pytestmark = pytest.mark.skipif(CHECKOV is None, reason="checkov not installed: run tools/ci/install-checkov.sh")

CHART_VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults-with-monitors": {"podMonitors": {"enabled": True}},
    "namespaced-pinned": {"watchNamespaces": ["team-a", "team-b"],
                          "image": {"digest": "sha256:" + "ab" * 32, "pullPolicy": "IfNotPresent"}},
}


def run_checkov(args: list[str]) -> list[dict[str, Any]]:
    assert CHECKOV
    res = subprocess.run([CHECKOV, *args, "--skip-download", "--output", "json"],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode in (0, 1), res.stderr[-3000:]
    reports = json.loads(res.stdout)
    return reports if isinstance(reports, list) else [reports]


def assert_clean(reports: list[dict[str, Any]], min_resources: int) -> None:
    for report in reports:
        summary = report["summary"]
        failed = report["results"].get("failed_checks", [])
        assert not failed, "\n".join(f"{c['check_id']} {c['check_name']}: {c['resource']} ({c['file_path']})"
                                     for c in failed)
        assert summary["parsing_errors"] == 0
        assert summary["resource_count"] >= min_resources
        for skipped in report["results"].get("skipped_checks", []):
            reason = (skipped["check_result"].get("suppress_comment") or "").strip()
            assert len(reason) > 20, f"{skipped['check_id']} is skipped without a reason"


def test_checkov_passes_on_the_rendered_chart(tmp_path: Path) -> None:
    if helm_bin() is None:
        pytest.skip(HELM_MISSING)
    out = tmp_path / "rendered"
    out.mkdir()
    for name, values in CHART_VALUE_SETS.items():
        (out / f"{name}.yaml").write_text(render_text(values, tmp_path, include_crds=True))
    assert_clean(run_checkov(["--directory", str(out), "--framework", "kubernetes"]), min_resources=10)


def test_checkov_passes_on_the_dockerfile() -> None:
    assert_clean(run_checkov(["--file", str(REPO / "Dockerfile"), "--framework", "dockerfile"]), 1)


# Checks a rendered trainer pod fails by design, each with why. Anything else failing is a regression.
TRAINER_POD_EXPLAINED = {
    "CKV_K8S_8": "no liveness probe: a training step may take minutes; the operator's progress deadline watches "
                 "for hangs instead (spec.progressDeadlineSeconds), and a probe restart would lose the step",
    "CKV_K8S_9": "no readiness probe: the trainer serves no traffic; nothing routes to it",
    "CKV_K8S_10": "CPU requests come from spec.resources.cpu, which the tenant may leave to the GPU node's share",
    "CKV_K8S_11": "CPU limits come from spec.resources.cpu, which the tenant may leave to the GPU node's share",
    "CKV_K8S_12": "memory requests come from spec.resources.memory, optional: GPU nodes are used whole",
    "CKV_K8S_13": "memory limits come from spec.resources.memory, optional: GPU nodes are used whole",
    "CKV_K8S_15": "imagePullPolicy is left to the image reference: a tag or digest chosen by the chart's values",
    "CKV_K8S_43": "the image is the operator's --trainer-image or an allowed spec.image; pinning a digest is the "
                  "chart's image.digest value, not the pod renderer's choice",
    "CKV_K8S_14": "the image tag is the operator's --trainer-image (a fixed version by default)",
    "CKV2_K8S_6": "NetworkPolicies belong to the namespace's owner: the pods of a run must reach each other "
                  "(rendezvous, collectives) and the operator their metrics port (docs/security.md)",
    "CKV_K8S_35": "Secrets as environment variables are the tenant's spec.env, each refused unless the "
                  "requesting user may read that Secret (the admission policy)",
}


def test_checkov_on_the_rendered_trainer_pods(tmp_path: Path) -> None:
    """The pods of every example experiment, as the training-operator will create them."""
    import yaml
    from datamix_operator.render import render_children

    from datamix.experiment import load_manifest

    pods = []
    for example in ("quickstart.yaml", "cluster-experiment.yaml"):
        manifest = load_manifest(REPO / "examples" / example)
        _, job = render_children(manifest, "team-a")
        for replica, spec in job["spec"]["pytorchReplicaSpecs"].items():
            template = spec["template"]
            pods.append({"apiVersion": "v1", "kind": "Pod",
                         "metadata": {"name": f"{job['metadata']['name']}-{replica.lower()}", "namespace": "team-a",
                                      **template["metadata"]},
                         "spec": template["spec"]})
    assert pods, "no example experiment rendered"
    (tmp_path / "pods.yaml").write_text(yaml.safe_dump_all(pods))
    reports = run_checkov(["--file", str(tmp_path / "pods.yaml"), "--framework", "kubernetes"])
    failed = {c["check_id"] for r in reports for c in r["results"].get("failed_checks", [])}
    unexplained = sorted(failed - TRAINER_POD_EXPLAINED.keys())
    assert not unexplained, f"trainer pods fail checkov checks without a reason: {unexplained}"
    passed = {c["check_id"] for r in reports for c in r["results"].get("passed_checks", [])}
    # the restricted settings checkov knows by name
    assert {"CKV_K8S_20", "CKV_K8S_22", "CKV_K8S_28", "CKV_K8S_37", "CKV_K8S_38", "CKV_K8S_31"} <= passed
