"""`datamix sweep report`'s table and plot from a sweep's experiments (as read from the cluster;
tests/operator/test_sweep_e2e.py runs the command against the real API server)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

pytest.importorskip("datamix.search.local", reason="the search engine (datamix.search) is not on this branch")

from datamix_operator.sweep.report import write_report

from datamix.errors import UserError
from tests.sweep.sweep_fakes import small_sweep
from tests.sweep.test_sweep_reconcile import Harness


def test_report_writes_the_trials_table_and_the_plot(tmp_path: Path) -> None:
    h = Harness()
    h.api.add_sweep(small_sweep(trials=8, parallelism=4))
    h.run_trials()
    sweep = h.api.sweep("mix")
    experiments = list(h.api.experiments.values())
    text, files = write_report(sweep, experiments, tmp_path)
    assert [p.name for p in files] == ["trials.csv", "sweep.png"]
    rows = list(csv.reader((tmp_path / "trials.csv").open()))
    assert rows[0] == ["trial", "share:web", "share:code", "share:math", "loss:web", "loss:code", "loss:math"]
    assert [r[0] for r in rows[1:]] == [f"mix-t{i:03d}" for i in range(8)]
    assert (tmp_path / "sweep.png").stat().st_size > 10_000
    assert "proposed" in text
    assert "Spearman" in text


def test_report_of_too_few_finished_trials_is_one_error(tmp_path: Path) -> None:
    h = Harness()
    h.api.add_sweep(small_sweep(trials=8, parallelism=4))
    h.reconcile()
    with pytest.raises(UserError, match="0 trials finished with every objective loss"):
        write_report(h.api.sweep("mix"), list(h.api.experiments.values()), tmp_path)
