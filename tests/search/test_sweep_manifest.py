"""The DataMixtureSweep reader: examples/sweep.yaml, the experiments a sweep creates, and one
error naming the field for each bad input (`datamix sweep run` prints it and exits 2)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from datamix.errors import UserError
from datamix.experiment import build_run_spec
from datamix.search.sweep import SWEEP_LABEL, load_sweep, parse_sweep
from datamix.validation import validate_manifest
from datamix_cli.main import main

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sweep.yaml"


def example() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    return doc


def test_the_example_reads_with_its_prior_and_search() -> None:
    sweep = load_sweep(EXAMPLE)
    assert sweep.domains == ("python-code", "docstrings", "python-reference", "comments", "html-docs", "licenses")
    np.testing.assert_allclose(sweep.prior, np.array([3.0, 1.5, 1.2, 0.8, 0.5, 0.3]) / 7.3)
    assert sweep.search.trials == 16
    assert sweep.search.parallelism == 2
    assert sweep.regression == "loglinear"
    assert sweep.objective is None


def test_trials_and_final_are_valid_experiments_named_after_the_sweep() -> None:
    sweep = load_sweep(EXAMPLE)
    trial = sweep.trial_manifest(4)
    assert trial["metadata"]["name"] == "quickstart-sweep-t004"
    assert trial["metadata"]["labels"][SWEEP_LABEL] == "quickstart-sweep"
    assert validate_manifest(trial) == []
    assert trial["spec"]["training"]["trainSteps"] == 480
    shares = np.array([0.3, 0.1, 0.2, 0.2, 0.1, 0.1])
    final = sweep.final_manifest(shares)
    assert final["metadata"]["name"] == "quickstart-sweep-final"
    assert validate_manifest(final) == []
    assert final["spec"]["training"]["trainSteps"] == 400
    assert final["spec"]["model"] == {"preset": "tiny"}
    np.testing.assert_allclose([d.share for d in build_run_spec(final).datasets], shares, atol=1e-12)
    # The sweep's own document is never rewritten.
    assert example()["spec"]["experiment"]["datasets"]["mixture"][0]["weight"] == 3.0


def edit(path: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(example())
    *parents, last = path.split(".")
    node = doc
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if value is DELETE:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return doc


DELETE = object()
BAD = [
    ("kind", "DataMixtureExperiment", "expected datamix.io/v1alpha1/DataMixtureSweep"),
    ("metadata.name", "s" * 60, "metadata.name: 60 characters"),
    ("spec.search.trials", 0, "spec.search.trials: 0; give a whole number from 1 to 512"),
    ("spec.search.trials", 513, "spec.search.trials: 513"),
    ("spec.search.trials", DELETE, "spec.search.trials: Required value"),
    ("spec.search.parallelism", 17, "spec.search.parallelism: 17 is above trials (16)"),
    ("spec.search.sampler", "grid", "spec.search.sampler: 'grid' is not one of dirichlet"),
    ("spec.search.seed", -1, "spec.search.seed: -1"),
    ("spec.search.minShare", {"wiki": 0.1}, "spec.search.minShare: 'wiki' is not a domain"),
    ("spec.search.maxShare", {"licenses": 2}, "spec.search.maxShare.licenses: 2; give a number from 0 to 1"),
    ("spec.search.maxShare", {"python-code": 0.01}, "spec.search.minShare: python-code=0.05 is above"),
    ("spec.search.maxEpochs", -1, "spec.search.maxEpochs: -1; give a number above 0"),
    ("spec.search.maxFailedTrials", "two", "spec.search.maxFailedTrials: 'two'"),
    ("spec.search.grid", 3, "spec.search.grid: unknown field"),
    ("spec.objective", {"wiki": 1}, "spec.objective: 'wiki' has no validationPath"),
    ("spec.objective", {"licenses": 0}, "spec.objective: every weight is 0"),
    ("spec.objective", {"licenses": -1}, "spec.objective.licenses: -1"),
    ("spec.regression", "gp", "spec.regression: 'gp' is not one of loglinear, lightgbm"),
    ("spec.final.image", "x", "spec.final.image: unknown field"),
    ("spec.final.training.trainSteps", -5, "spec.final.training.trainSteps"),
    ("spec.experiment.datasets.mixture.0.weight", -1, "spec.experiment.datasets.mixture[0].weight"),
    ("spec.experiment", DELETE, "spec.experiment: Required value"),
    ("spec.trials", 3, "spec.trials: unknown field"),
    ("spec.suspend", "yes", "spec.suspend: 'yes' is not true or false"),
]


@pytest.mark.parametrize(("path", "value", "message"), BAD, ids=[f"{p}={v!r}"[:60] for p, v, _ in BAD])
def test_bad_sweeps_name_the_field(path: str, value: Any, message: str) -> None:
    with pytest.raises(UserError) as caught:
        parse_sweep(edit(path, value))
    assert message in str(caught.value)


def test_sweep_run_refuses_a_bad_sweep_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(edit("spec.search.trials", 0)))
    code = main(["sweep", "run", str(path), "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert "spec.search.trials" in err
