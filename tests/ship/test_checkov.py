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
