"""`datamix operator`: argument checks, and a CLI that imports no kopf until it runs."""

from __future__ import annotations

import subprocess
import sys

import pytest
from datamix_operator.config import OperatorConfig


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "datamix_cli", *args], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin"}, timeout=60)


def test_help_lists_the_operator_without_importing_kopf() -> None:
    code = "import sys, datamix_cli.main; datamix_cli.main.build_parser(); print('kopf' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
    assert "--all-namespaces" in run("operator", "--help").stdout


def test_a_scope_is_required() -> None:
    res = run("operator")
    assert res.returncode == 2
    assert res.stderr.strip() == "error: operator: give --namespace NS (repeatable) or --all-namespaces"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-n", "Bad_NS"], "is not a namespace name"),
        (["-n", "a", "--pytorchjob-api", "kubeflow.org"], "expected GROUP/VERSION"),
        (["-n", "a", "--workers", "0"], "--workers must be at least 1"),
    ],
)
def test_bad_settings_are_one_line_errors(args: list[str], message: str) -> None:
    res = run("operator", *args)
    assert res.returncode == 2 and message in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_config() -> None:
    cfg = OperatorConfig.build(namespaces=("a", "b", "a"), trainer_image=None, log_format="json", verbose=False,
                               liveness_port=8080, metrics_port=0, bind_address="0.0.0.0", resync_seconds=60,
                               crd_retry_seconds=30, workers=4, pytorchjob_api="kubeflow.org/v1")
    assert cfg.namespaces == ("a", "b") and not cfg.clusterwide
    assert cfg.job_api.api_version == "kubeflow.org/v1"
    assert OperatorConfig().clusterwide
