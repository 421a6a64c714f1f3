"""`datamix sweep fit TRIALS.csv`: a good table gives the proposal as YAML; every bad table or
flag gives one line naming the problem and exit code 2, never a traceback."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from datamix.search.sampler import trial_mixtures
from datamix.search.simplex import Bounds
from datamix.search.table import TrialTable
from datamix_cli.main import main
from tests.search.laws import LAWS

DOMAINS = ("code", "docs", "web", "math")


def good_table(trials: int = 24) -> TrialTable:
    law = LAWS["mixing-law"].random(np.random.default_rng(0), len(DOMAINS))
    shares = trial_mixtures(2, trials, np.full(4, 0.25), Bounds.make(DOMAINS))
    return TrialTable(tuple(f"t{i:03d}" for i in range(trials)), DOMAINS, shares, DOMAINS, law.losses(shares))


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["sweep", "fit", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_fit_prints_the_proposal_as_yaml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv = tmp_path / "trials.csv"
    csv.write_text(good_table().to_csv())
    code, out, err = run(capsys, str(csv), "--max-share", "web=0.2", "--objective", "code=2", "--objective", "math=1")
    assert code == 0, err
    doc = yaml.safe_load(out)
    assert [m["name"] for m in doc["mixture"]] == list(DOMAINS)
    assert math.fsum(m["share"] for m in doc["mixture"]) == pytest.approx(1.0, abs=1e-12)
    assert doc["mixture"][2]["share"] <= 0.2 + 1e-12
    assert isinstance(doc["predictedObjective"], float)
    assert doc["fit"]["regression"] == "loglinear"
    assert doc["fit"]["trials"] == 24
    assert doc["fit"]["spearman"] > 0.9


def test_fit_with_lightgbm(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("lightgbm")
    csv = tmp_path / "trials.csv"
    csv.write_text(good_table(40).to_csv())
    code, out, err = run(capsys, str(csv), "--regression", "lightgbm", "--seed", "3")
    assert code == 0, err
    assert yaml.safe_load(out)["fit"]["regression"] == "lightgbm"


def header() -> str:
    return "trial," + ",".join(f"share:{d}" for d in DOMAINS) + "," + ",".join(f"loss:{d}" for d in DOMAINS)


def rows(n: int = 5) -> list[str]:
    lines = good_table(max(n, 4)).to_csv().splitlines()[1:]
    return lines[:n]


def with_cell(line: str, column: int, value: str) -> str:
    cells = line.split(",")
    cells[column] = value
    return ",".join(cells)


BAD_TABLES = [
    ("empty", "", "empty"),
    ("no-trial-column", "name," + header()[len("trial,") :] + "\n" + "\n".join(rows()), "must start with `trial`"),
    ("unknown-column", header() + ",note\n" + "\n".join(r + ",x" for r in rows()), "'note' is neither"),
    ("duplicate-column", header() + ",loss:code\n" + "\n".join(r + ",1" for r in rows()), "appears twice"),
    ("no-loss-columns", "trial," + ",".join(f"share:{d}" for d in DOMAINS) + "\nt1,0.25,0.25,0.25,0.25", "no `loss:"),
    ("no-share-columns", "trial,loss:code\nt1,2.0\nt2,2.1\nt3,2.2\nt4,2.3", "no `share:"),
    ("share-after-loss", "trial,share:a,loss:a,share:b\nt1,1,2,0", "after a loss column"),
    ("too-few-trials", header() + "\n" + "\n".join(rows(3)), "at least 4"),
    (
        "not-a-number",
        header() + "\n" + "\n".join([with_cell(rows()[0], 5, "n/a"), *rows()[1:]]),
        "'n/a' is not a number",
    ),
    ("infinite-loss", header() + "\n" + "\n".join([with_cell(rows()[0], 6, "inf"), *rows()[1:]]), "not a finite"),
    ("short-row", header() + "\n" + "\n".join([rows()[0].rsplit(",", 1)[0], *rows()[1:]]), "cells, the header"),
    ("negative-share", header() + "\n" + "\n".join([with_cell(rows()[0], 1, "-0.1"), *rows()[1:]]), "negative"),
    ("shares-not-one", header() + "\n" + "\n".join([with_cell(rows()[0], 1, "0.9"), *rows()[1:]]), "not 1"),
    ("duplicate-trial", header() + "\n" + "\n".join([*rows(), rows()[0]]), "appears twice"),
    ("empty-trial", header() + "\n" + "\n".join([with_cell(rows()[0], 0, ""), *rows()[1:]]), "empty `trial`"),
    (
        "same-mixture",
        header() + "\n" + "\n".join(f"t{i},0.25,0.25,0.25,0.25,2,2,2,{2 + i}" for i in range(5)),
        "same mixture",
    ),
]


@pytest.mark.parametrize(("text", "message"), [pytest.param(t, m, id=i) for i, t, m in BAD_TABLES])
def test_bad_tables_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    csv = tmp_path / "trials.csv"
    csv.write_text(text)
    code, out, err = run(capsys, str(csv))
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: ")
    assert message in err


BAD_FLAGS = [
    (["--objective", "wiki=1"], "--objective: 'wiki' has no validation loss"),
    (["--objective", "code"], "--objective: 'code' is not NAME=NUMBER"),
    (["--objective", "code=x"], "'x' is not a number"),
    (["--objective", "code=0"], "every weight is 0"),
    (["--objective", "code=-1"], "a weight must be a finite number >= 0"),
    (["--min-share", "wiki=0.1"], "--min-share: 'wiki' is not a domain"),
    (["--min-share", "code=1.5"], "a share must be a number from 0 to 1"),
    (["--min-share", "code=0.6", "--min-share", "docs=0.6"], "minimum shares sum to 1.2"),
    (
        ["--max-share", "code=0.1", "--max-share", "docs=0.1", "--max-share", "web=0.1", "--max-share", "math=0.1"],
        "below 1",
    ),
    (["--min-share", "code=0.5", "--max-share", "code=0.2"], "above --max-share"),
    (["--max-share", "code=0.2", "--max-share", "code=0.3"], "given twice"),
    (["--max-epochs", "2"], "--max-epochs needs each domain's size (--epoch-tokens NAME=N) and --final-tokens N"),
    (["--epoch-tokens", "code=10"], "give --max-epochs too"),
    (["--max-epochs", "0", "--epoch-tokens", "code=10", "--final-tokens", "100"], "--max-epochs: '0'; give a number"),
    (["--max-epochs", "x", "--epoch-tokens", "code=10", "--final-tokens", "100"], "--max-epochs: 'x' is not a number"),
    (["--max-epochs", "2", "--epoch-tokens", "wiki=10", "--final-tokens", "100"], "'wiki' is not a domain"),
    (["--max-epochs", "2", "--epoch-tokens", "code=1.5", "--final-tokens", "100"], "code: 1.5; give a whole"),
    (["--max-epochs", "2", "--epoch-tokens", "code=10", "--final-tokens", "-3"], "--final-tokens: '-3'; give a number"),
    (
        ["--max-epochs", "1", "--final-tokens", "1000", *(f for d in DOMAINS for f in ("--epoch-tokens", f"{d}=100"))],
        "--max-epochs (1): the final run trains 1,000 tokens and 1 epochs of each dataset fill at most 40.0%",
    ),
]


@pytest.mark.parametrize(("flags", "message"), BAD_FLAGS)
def test_bad_flags_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    csv = tmp_path / "trials.csv"
    csv.write_text(good_table().to_csv())
    code, _, err = run(capsys, str(csv), *flags)
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert message in err


def test_a_missing_file_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, str(tmp_path / "nope.csv"))
    assert code == 2
    assert "cannot read the file" in err


def test_a_binary_file_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "trials.csv"
    path.write_bytes(b"\xff\xfe\x00\x01binary")
    code, _, err = run(capsys, str(path))
    assert code == 2
    assert "not a text file" in err


def test_lightgbm_missing_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # lightgbm is installed here (the dev extra): hiding it from the import system is the only
    # way to see what a core-only install says.
    monkeypatch.setitem(sys.modules, "lightgbm", None)
    csv = tmp_path / "trials.csv"
    csv.write_text(good_table().to_csv())
    code, _, err = run(capsys, str(csv), "--regression", "lightgbm")
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert "lightgbm is not installed here" in err


def test_fit_with_max_epochs_caps_a_small_domain(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv = tmp_path / "trials.csv"
    csv.write_text(good_table().to_csv())
    code, out, err = run(capsys, str(csv))
    assert code == 0, err
    free = {m["name"]: m["share"] for m in yaml.safe_load(out)["mixture"]}
    wanted = max(free, key=free.__getitem__)
    cap = free[wanted] / 2
    final_tokens = 1_000_000
    sizes = [f"{wanted}={int(cap * final_tokens / 3)}"]  # 3 epochs of it fill `cap` of the final run
    code, out, err = run(
        capsys, str(csv), "--max-epochs", "3", "--final-tokens", str(final_tokens), "--epoch-tokens", sizes[0]
    )
    assert code == 0, err
    capped = {m["name"]: m["share"] for m in yaml.safe_load(out)["mixture"]}
    assert capped[wanted] <= cap + 1e-6
    assert math.fsum(capped.values()) == pytest.approx(1.0, abs=1e-12)
