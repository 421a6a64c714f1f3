"""`datamix run`: the manifest on this machine, end to end, and its one-line errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.trainer.runs import QUICKSTART, REPO, trainer_env


def short_manifest(tmp_path: Path, steps: int) -> Path:
    manifest = yaml.safe_load(QUICKSTART.read_text())
    manifest["spec"]["training"].update({"trainSteps": steps, "evalInterval": 5, "checkpointInterval": 5})
    path = tmp_path / "manifest.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


def datamix(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = trainer_env()
    env.pop("DATAMIX_METRICS_PORT")  # `datamix run` sets its own
    return subprocess.run(
        [sys.executable, "-m", "datamix_cli", *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout
    )


def test_run_with_a_missing_dataset_is_one_line_naming_the_file(tmp_path: Path) -> None:
    result = datamix(
        "run",
        str(short_manifest(tmp_path, 5)),
        "--data-dir",
        str(tmp_path / "nothing"),
        "--output-dir",
        str(tmp_path / "out"),
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: datasets.mixture[0] (python-code) path: ")
    assert str(tmp_path / "nothing" / "python-code" / "train_text_document") in lines[0]


@pytest.mark.training
def test_run_trains_the_manifest_and_reports_shares_losses_and_a_loss_curve(demo_dir: Path, tmp_path: Path) -> None:
    result = datamix(
        "run",
        str(short_manifest(tmp_path, 10)),
        "--data-dir",
        str(demo_dir),
        "--output-dir",
        str(tmp_path / "out"),
        "--nproc",
        "1",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = next((tmp_path / "out" / "default" / "quickstart").iterdir())  # <output>/<namespace>/<experiment>/<run>
    doc = json.loads((out / "results.json").read_text())
    assert doc["steps"] == 10
    png = (out / "loss_curve.png").read_bytes()
    assert png.startswith(b"\x89PNG"), "loss_curve.png is a PNG"
    assert len(png) > 10_000, f"loss_curve.png is only {len(png)} bytes"
    lines = result.stdout.splitlines()
    assert any(line.startswith("  metrics  http://127.0.0.1:") for line in lines)
    # Progress comes from the trainer's /metrics endpoint (scraped every 0.5 s while it runs).
    assert any(re.search(r"\| samples \d+/160 \| loss \d", line) for line in lines), result.stdout
    header = next(i for i, line in enumerate(lines) if line.startswith("dataset "))
    for column in ("target share", "realised share", "validation loss"):
        assert column in lines[header], lines[header]
    rows = {line.split()[0]: line.split() for line in lines[header + 2 : header + 8]}
    assert set(rows) == {"python-code", "docstrings", "python-reference", "comments", "html-docs", "licenses"}
    for name, validation in zip(rows, doc["validation_loss"], strict=True):
        assert float(rows[name][-1]) == pytest.approx(validation, abs=1e-4)
    assert (out / "logs" / "launcher.log").exists()
    assert list((out / "logs" / "details").glob("host_0_*/*/attempt_0/0/stdout.log"))
