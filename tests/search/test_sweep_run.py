"""`datamix sweep run`'s orchestration with a stand-in trainer (tests/search/fake_trainer.py)
whose results come from a known law of each trial's mixture: at most `parallel` trials at once,
a restart trains nothing twice, failures count against maxFailedTrials, and the proposal, the
final run, the table and sweep.png come out. Real training of a sweep: benchmarks/sweep."""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from datamix.errors import UserError
from datamix.search.local import LocalRunner, run_sweep, summary
from tests.search.fake_trainer import law
from tests.search.laws import true_optimum

REPO = Path(__file__).resolve().parents[2]
FAKE = Path(__file__).resolve().parent / "fake_trainer.py"


def runner() -> LocalRunner:
    def train_command(manifest: Path, data: Path, output: Path, nproc: int | None) -> list[str]:
        return [sys.executable, str(FAKE), str(manifest), str(data), str(output)]

    return LocalRunner(train_command, count_tokens=lambda prefix: 10**6, demo_data_dir=lambda: Path("/unused"))


def sweep_file(tmp_path: Path, trials: int = 12, **search: Any) -> Path:
    doc = yaml.safe_load((REPO / "examples" / "sweep.yaml").read_text())
    doc = copy.deepcopy(doc)
    doc["metadata"]["name"] = "fake"
    doc["spec"]["search"].update({"trials": trials, **search})
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture
def trainer_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    log = tmp_path / "trainer.log"
    monkeypatch.setenv("FAKE_TRAINER_LOG", str(log))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    return log


def max_concurrent(log: Path) -> int:
    events = sorted(
        (float(t), 1 if kind == "start" else -1)
        for kind, _, t in (line.split() for line in log.read_text().splitlines())
    )
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def started(log: Path) -> list[str]:
    return [line.split()[1] for line in log.read_text().splitlines() if line.startswith("start")]


def test_a_sweep_trains_its_trials_fits_proposes_and_trains_the_final_run(tmp_path: Path, trainer_log: Path) -> None:
    out = tmp_path / "out"
    report = run_sweep(str(sweep_file(tmp_path)), str(tmp_path), str(out), 3, runner(), log=lambda _: None)

    assert sorted(started(trainer_log)) == sorted([f"fake-t{i:03d}" for i in range(12)] + ["fake-final"])
    assert max_concurrent(trainer_log) <= 3
    assert report.fit.trials == 12
    assert report.fit.spearman > 0.8
    assert report.final is not None
    assert report.final_observed is not None
    # The final run is the proposed mixture, and the law says it is close to the best mixture.
    domains = report.sweep.domains
    weights = np.full(len(domains), 1 / len(domains))
    _, optimum = true_optimum(law(len(domains)), weights, report.sweep.bounds)
    assert report.final_observed <= optimum * 1.02
    assert report.final_observed < min(report.fit.observed)
    for name in ("trials.csv", "proposal.yaml", "sweep.png"):
        assert (out / "fake" / name).stat().st_size > 0, name
    assert "cross-validated Spearman" in summary(report)


def test_a_restarted_sweep_trains_nothing_twice(tmp_path: Path, trainer_log: Path) -> None:
    out = tmp_path / "out"
    path = sweep_file(tmp_path, trials=8)
    run_sweep(str(path), str(tmp_path), str(out), 2, runner(), log=lambda _: None)
    first = started(trainer_log)
    run_sweep(str(path), str(tmp_path), str(out), 2, runner(), log=lambda _: None)
    assert started(trainer_log) == first
    assert len(first) == len(set(first)) == 9


def test_failed_trials_count_against_max_failed_trials(
    tmp_path: Path, trainer_log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_TRAINER_FAIL", "fake-t001,fake-t004")
    tolerant = run_sweep(
        str(sweep_file(tmp_path, trials=10)), str(tmp_path), str(tmp_path / "a"), 2, runner(), log=lambda _: None
    )
    assert tolerant.fit.trials == 8
    failed = [t for t in tolerant.trials if t.failed]
    assert [t.name for t in failed] == ["fake-t001", "fake-t004"]
    assert "file not found (fake)" in (failed[0].failed or "")

    with pytest.raises(UserError, match=r"more than spec\.search\.maxFailedTrials"):
        run_sweep(
            str(sweep_file(tmp_path, trials=10, maxFailedTrials=1)),
            str(tmp_path),
            str(tmp_path / "b"),
            2,
            runner(),
            log=lambda _: None,
        )


def test_max_epochs_caps_the_proposal_with_sizes_from_the_trials_results(
    tmp_path: Path, trainer_log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every domain holds 8192 tokens: 20 epochs (examples/sweep.yaml's maxEpochs) of each fill 20%
    of the final run's 400 x 16 x 128 tokens. The sizes come from the trials' results.json, not
    from the data files (the runner's count_tokens fails)."""
    import json

    doc = yaml.safe_load((REPO / "examples" / "sweep.yaml").read_text())
    domains = [d["name"] for d in doc["spec"]["experiment"]["datasets"]["mixture"]]
    monkeypatch.setenv("FAKE_TRAINER_EPOCH_TOKENS", json.dumps(dict.fromkeys(domains, 8192)))

    def no_files(prefix: str) -> int:
        raise AssertionError(f"read {prefix}: the sizes are in the results")

    local = runner()
    local = LocalRunner(local.train_command, count_tokens=no_files, demo_data_dir=local.demo_data_dir)
    report = run_sweep(str(sweep_file(tmp_path)), str(tmp_path), str(tmp_path / "out"), 3, local, log=lambda _: None)
    final_tokens = 400 * 16 * 128
    epochs = [float(s) * final_tokens / 8192 for s in report.fit.proposal.shares]
    assert max(epochs) <= 20 + 1e-6
    assert report.final is not None
    assert np.allclose(report.final.shares, report.fit.proposal.shares)
