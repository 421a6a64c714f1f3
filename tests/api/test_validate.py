from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from datamix.validation import validate_manifest
from tests.api.invalid_manifests import INVALID_MANIFESTS, OPERATOR_ONLY_INVALID
from tests.api.manifests import valid_manifest

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "datamix_cli", *args], capture_output=True, text=True, cwd=REPO, check=False
    )


def test_valid_manifest_has_no_problems() -> None:
    assert validate_manifest(valid_manifest()) == []


def test_examples_are_valid() -> None:
    examples = sorted((REPO / "examples").glob("*.yaml"))
    assert examples, "examples/ holds manifests"
    for path in examples:
        doc = yaml.safe_load(path.read_text())
        if doc.get("kind") == "DataMixtureExperiment":
            assert validate_manifest(doc) == [], path


@pytest.mark.parametrize(
    ("manifest", "path", "message"),
    [pytest.param(m, p, s, id=i) for i, m, p, s in INVALID_MANIFESTS + OPERATOR_ONLY_INVALID],
)
def test_invalid_manifest_is_refused_with_field_path(tmp_path: Path, manifest: dict, path: str, message: str) -> None:
    problems = validate_manifest(manifest)
    assert any(p.path == path and message in p.message for p in problems), problems
    file = tmp_path / "m.yaml"
    file.write_text(yaml.safe_dump(manifest))
    result = run_cli("validate", str(file))
    assert result.returncode == 2
    assert f"{path}: " in result.stderr and message in result.stderr
    assert "Traceback" not in result.stderr


def test_invalid_table_is_large_enough() -> None:
    assert len(INVALID_MANIFESTS) >= 15
    assert len({i for i, *_ in INVALID_MANIFESTS}) == len(INVALID_MANIFESTS)


def test_unknown_field_is_reported(tmp_path: Path) -> None:
    manifest = valid_manifest()
    manifest["spec"]["training"]["epochs"] = 3
    assert [str(p) for p in validate_manifest(manifest)] == [
        'spec.training.epochs: unknown field "spec.training.epochs"; remove it or check the spelling'
    ]


def test_malformed_yaml_is_one_line_error(tmp_path: Path) -> None:
    file = tmp_path / "bad.yaml"
    file.write_text("spec: [unclosed\n")
    result = run_cli("validate", str(file))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "malformed YAML" in result.stderr
