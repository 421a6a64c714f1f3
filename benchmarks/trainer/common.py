"""Shared set-up of the trainer benchmarks: the quickstart's run spec on the demo data."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from datamix.experiment import build_run_spec, load_manifest
from datamix.runspec import RunSpec

REPO = Path(__file__).resolve().parents[2]


def quickstart(output: Path, training: dict[str, Any] | None = None, **replace: Any) -> RunSpec:
    """examples/quickstart.yaml on the demo data (built on first use), with training overrides."""
    from datamix_trainer import demo_data

    data = demo_data.default_dir()
    if not demo_data.is_built(data):
        demo_data.build(data)
    manifest = load_manifest(REPO / "examples" / "quickstart.yaml")
    manifest["spec"]["training"].update(training or {})
    spec = build_run_spec(manifest, base_dir=str(data), output_dir=str(output), procs_per_node=1, nodes=1)
    return dataclasses.replace(spec, **replace) if replace else spec
