"""Serialise the CRD generated from `datamix.schema`; `crds/` and the Helm chart hold copies."""

from __future__ import annotations

from pathlib import Path

import yaml

from datamix.schema import crd_manifest

REPO_ROOT = Path(__file__).resolve().parents[2]
CRD_FILE_NAME = "datamix.io_datamixtureexperiments.yaml"
CRD_FILES = (REPO_ROOT / "crds" / CRD_FILE_NAME, REPO_ROOT / "helm" / "datamix" / "crds" / CRD_FILE_NAME)


def render_crd() -> str:
    header = "# Generated from src/datamix/schema.py by `datamix crd --write`; do not edit.\n"
    return header + yaml.safe_dump(crd_manifest(), sort_keys=False, width=120)
