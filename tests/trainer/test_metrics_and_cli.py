"""The metrics exposition passes promtool; the trainer's commands load without torch."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from datamix_trainer.metrics import TrainerMetrics

from tests.trainer.runs import REPO, quickstart_spec, trainer_env


def exposition() -> str:
    from prometheus_client import generate_latest

    spec = quickstart_spec(Path("/data"), Path("/output"))
    metrics = TrainerMetrics(spec, peak_flops_per_device=1e12)
    metrics.start(0, 6400, [0] * len(spec.datasets))
    metrics.step(3.2, 1e-3, 0.5, 0.12, 2048, 16, [128] * len(spec.datasets), 1.5e7, 1)
    metrics.evaluation([3.0, None, *([2.5] * (len(spec.datasets) - 2))], 40)
    metrics.checkpoint(1.7e9)
    return generate_latest(metrics.registry).decode()


def promtool() -> str | None:
    found = shutil.which("promtool")
    if found:
        return found
    result = subprocess.run(
        [str(REPO / "tools/ci/install-prometheus.sh"), "--print-bin-dir"], capture_output=True, text=True
    )
    candidate = Path(result.stdout.strip().splitlines()[-1]) / "promtool" if result.returncode == 0 else None
    return str(candidate) if candidate and candidate.exists() else None


@pytest.mark.prometheus
def test_exposition_passes_promtool_check_metrics() -> None:
    tool = promtool()
    if tool is None:
        pytest.skip("promtool not installed (tools/ci/install-prometheus.sh installs it)")
    result = subprocess.run([tool, "check", "metrics"], input=exposition(), capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_series_carry_only_experiment_run_and_dataset_labels() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    families = {f.name: f for f in text_string_to_metric_families(exposition())}
    assert families["datamix_dataset_tokens"].type == "counter"  # exposed as ..._total
    assert families["datamix_step_duration_seconds"].type == "histogram"
    for family in families.values():
        for sample in family.samples:
            assert set(sample.labels) <= {"experiment", "run", "dataset", "le"}, sample
    # A dataset without a validation loss exports no series rather than a made-up value.
    validation = {s.labels["dataset"] for s in families["datamix_validation_loss"].samples}
    assert "docstrings" not in validation
    assert len(validation) == 5, validation
    # The step the losses belong to, and the run id on every series (the operator's progress
    # reader accepts a reading only for its own run).
    assert [s.value for s in families["datamix_validation_step"].samples] == [40]
    runs = {s.labels.get("run") for f in families.values() for s in f.samples}
    assert runs == {quickstart_spec(Path("/data"), Path("/output")).run}


def test_trainer_commands_import_without_torch_or_megatron() -> None:
    # numpy is a core dependency now (the mixture search); torch and megatron are what would make
    # every `datamix` command slow to start.
    code = (
        "import sys, datamix_trainer.commands, datamix_cli.main; datamix_cli.main.build_parser(); "
        "heavy = [m for m in sys.modules if m.split('.')[0] in ('torch', 'megatron')]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr


def test_train_without_a_run_spec_is_a_one_line_error() -> None:
    env = trainer_env()
    env.pop("DATAMIX_RUN_SPEC", None)
    result = subprocess.run(
        [sys.executable, "-m", "datamix_cli", "train"], capture_output=True, text=True, env=env, cwd=REPO
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: --run-spec: no run spec given; pass --run-spec PATH or set DATAMIX_RUN_SPEC"
    )
