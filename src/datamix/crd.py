"""Serialise the CRDs generated from `datamix.schema` and `datamix.sweep_schema` (`crds/` and the
Helm chart hold copies) and the chart's admission policy generated from `datamix.policy`.
`datamix crd --write` writes them all (`generated_files()`); tests fail when a copy is stale."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from datamix.policy import policy_crd_manifest, render_admission_policy_spec
from datamix.schema import crd_manifest
from datamix.sweep_schema import sweep_crd_manifest

REPO_ROOT = Path(__file__).resolve().parents[2]
CRD_FILE_NAME = "datamix.io_datamixtureexperiments.yaml"
SWEEP_CRD_FILE_NAME = "datamix.io_datamixturesweeps.yaml"
CRD_DIRS = (REPO_ROOT / "crds", REPO_ROOT / "helm" / "datamix" / "crds")
CRD_FILES = tuple(d / CRD_FILE_NAME for d in CRD_DIRS)
SWEEP_CRD_FILES = tuple(d / SWEEP_CRD_FILE_NAME for d in CRD_DIRS)
POLICY_CRD_FILE_NAME = "datamix.io_datamixpolicies.yaml"
POLICY_CRD_FILES = tuple(d / POLICY_CRD_FILE_NAME for d in CRD_DIRS)
POLICY_FILE = REPO_ROOT / "helm" / "datamix" / "policy" / "admission-policy-spec.yaml"


def _render(manifest: Callable[[], dict[str, Any]], source: str) -> str:
    header = f"# Generated from {source} by `datamix crd --write`; do not edit.\n"
    return header + yaml.safe_dump(manifest(), sort_keys=False, width=120)


def render_crd() -> str:
    return _render(crd_manifest, "src/datamix/schema.py")


def render_sweep_crd() -> str:
    return _render(sweep_crd_manifest, "src/datamix/sweep_schema.py")


def render_policy_crd() -> str:
    return _render(policy_crd_manifest, "src/datamix/policy.py")


def rendered_crd_files() -> dict[Path, str]:
    """Every generated CRD file and its content."""
    return {
        **{p: render_crd() for p in CRD_FILES},
        **{p: render_sweep_crd() for p in SWEEP_CRD_FILES},
        **{p: render_policy_crd() for p in POLICY_CRD_FILES},
    }


def generated_files() -> dict[Path, str]:
    """Every generated file of the repository (the CRDs' copies and the admission policy's rules)."""
    return {**rendered_crd_files(), POLICY_FILE: render_admission_policy_spec()}
