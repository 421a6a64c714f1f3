"""The DataMixtureSweep CRD: generated, structural, bounded, described; `datamix validate` refuses
invalid sweeps with the API server's field paths (tests/sweep/test_sweep_admission_e2e.py holds
the API server to the same table)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from datamix.crd import SWEEP_CRD_FILES, render_sweep_crd
from datamix.schema import MAX_NAME_LENGTH
from datamix.sweep_schema import (
    MAX_SWEEP_NAME_LENGTH,
    MAX_TRIALS,
    SWEEP_SPEC,
    final_name,
    sweep_crd_manifest,
    trial_name,
)
from datamix.validation import validate_manifest
from tests.api.test_crd import walk
from tests.sweep.sweep_manifests import INVALID_SWEEPS, OPERATOR_ONLY_INVALID_SWEEPS, valid_sweep

REPO = Path(__file__).resolve().parents[2]


def root() -> dict[str, Any]:
    version = sweep_crd_manifest()["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def test_committed_sweep_crds_are_up_to_date() -> None:
    for path in SWEEP_CRD_FILES:
        assert path.read_text() == render_sweep_crd(), f"{path} is stale: run `datamix crd --write`"


def test_schema_is_structural_described_and_bounded() -> None:
    for path, node in walk(root()):
        untyped = node.get("x-kubernetes-int-or-string") or node.get("x-kubernetes-preserve-unknown-fields")
        assert "type" in node or untyped, f"{path} has no type"
        for forbidden in ("oneOf", "not", "allOf"):
            assert forbidden not in node, f"{path} uses {forbidden}"
        if path.startswith(".metadata") or path.endswith("{}") or path.endswith("[]"):
            continue
        assert node.get("description"), f"{path} has no description"
        if node.get("type") == "array":
            assert "maxItems" in node, f"{path} has no maxItems"
        if node.get("type") == "object" and "additionalProperties" in node:
            assert "maxProperties" in node, f"{path} has no maxProperties"
        if node.get("type") == "string" and path.startswith(".spec"):
            assert {"maxLength", "enum"} & node.keys(), f"{path} has no maxLength"


def test_trial_experiment_is_the_experiment_spec_schema() -> None:
    from datamix.schema import SPEC

    experiment = SWEEP_SPEC["properties"]["experiment"]
    assert {k: v for k, v in experiment.items() if k != "description"} == {
        k: v for k, v in SPEC.items() if k != "description"}


def test_names_columns_and_name_bound() -> None:
    crd = sweep_crd_manifest()
    names = crd["spec"]["names"]
    assert (crd["metadata"]["name"], names["kind"], names["shortNames"]) == (
        "datamixturesweeps.datamix.io", "DataMixtureSweep", ["dms"])
    columns = [(c["name"], c["jsonPath"]) for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]]
    assert columns == [
        ("Phase", ".status.phase"), ("Trials", ".status.trials.done"), ("Best", ".status.best.objective"),
        ("Predicted", ".status.proposal.predictedObjective"), ("Age", ".metadata.creationTimestamp"),
    ]
    longest = "s" * MAX_SWEEP_NAME_LENGTH
    assert len(trial_name(longest, MAX_TRIALS - 1)) <= MAX_NAME_LENGTH
    assert len(final_name(longest)) == MAX_NAME_LENGTH
    assert trial_name("mix", 7) == "mix-t007"


def test_valid_sweep_has_no_problems() -> None:
    assert validate_manifest(valid_sweep()) == []


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "datamix_cli", *args], capture_output=True, text=True, cwd=REPO,
                          check=False)


@pytest.mark.parametrize(
    ("manifest", "path", "message"),
    [pytest.param(m, p, s, id=i) for i, m, p, s in INVALID_SWEEPS + OPERATOR_ONLY_INVALID_SWEEPS],
)
def test_invalid_sweep_is_refused_with_field_path(
    tmp_path: Path, manifest: dict[str, Any], path: str, message: str
) -> None:
    problems = validate_manifest(manifest)
    assert any(p.path == path and message in p.message for p in problems), problems
    file = tmp_path / "sweep.yaml"
    file.write_text(yaml.safe_dump(manifest))
    result = run_cli("validate", str(file))
    assert result.returncode == 2
    assert f"{path}: " in result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_validate_accepts_a_sweep_file(tmp_path: Path) -> None:
    file = tmp_path / "sweep.yaml"
    file.write_text(yaml.safe_dump(valid_sweep()))
    result = run_cli("validate", str(file))
    assert (result.returncode, result.stdout.strip()) == (0, f"{file}: valid"), result.stderr


def test_crd_command_prints_both_crds() -> None:
    result = run_cli("crd")
    names = [d["metadata"]["name"] for d in yaml.safe_load_all(result.stdout)]
    assert names == ["datamixtureexperiments.datamix.io", "datamixturesweeps.datamix.io"]
