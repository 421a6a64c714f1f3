"""Our FlagScale-shaped fixture (tensor 2 x pipeline 2 in its train file) imports to a manifest
that `datamix validate` accepts and that the trainer trains: the importer mapped the model
parallelism to data parallelism (tests/api/test_import.py checks its warning)."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest

from datamix.experiment import build_run_spec
from datamix.importer import import_experiment
from datamix.validation import validate_manifest
from tests.trainer.runs import REPO, start_training, wait, write_spec

pytestmark = pytest.mark.training

FLAGSCALE = REPO / "tests/fixtures/flagscale/pretrain_mix.yaml"


def test_imported_flagscale_manifest_validates_and_trains(demo_dir: Path, tmp_path: Path) -> None:
    manifest, _ = import_experiment(FLAGSCALE)
    assert validate_manifest(manifest) == []

    # Its datasets, laid out under a local base directory from the demo data (token ids < 257 fit
    # the imported 64000-token vocabulary).
    base = tmp_path / "corpora"
    domains = sorted(p for p in demo_dir.iterdir() if p.is_dir())
    for i, entry in enumerate(manifest["spec"]["datasets"]["mixture"]):
        prefix = base / entry["path"]
        prefix.parent.mkdir(parents=True, exist_ok=True)
        for suffix in (".bin", ".idx"):
            source = domains[i % len(domains)] / f"train_text_document{suffix}"
            prefix.with_name(prefix.name + suffix).symlink_to(source)

    # The imported model as it is; a schedule that fits a test on one CPU process.
    local = copy.deepcopy(manifest)
    training = local["spec"]["training"]
    training.update(
        seqLength=64,
        globalBatchSize=4,
        microBatchSize=2,
        trainSteps=2,
        evalInterval=2,
        checkpointInterval=2,
        logInterval=1,
        evalSamples=2,
    )
    spec = build_run_spec(local, base_dir=str(base), output_dir=str(tmp_path / "out"), procs_per_node=1, nodes=1)
    assert spec.model.settings["pipelineModelParallelSize"] == 1
    assert spec.model.settings["tensorModelParallelSize"] == 1
    assert spec.model.settings["numLayers"] == 8

    log = tmp_path / "train.log"
    wait(start_training(write_spec(spec, tmp_path), 1, log), log, timeout=900)
    result = json.loads((Path(spec.output_dir) / "results.json").read_text())
    assert result["steps"] == 2
    assert math.isfinite(result["train_loss"])
