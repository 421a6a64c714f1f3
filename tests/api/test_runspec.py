from __future__ import annotations

import math
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from datamix.experiment import build_run_spec, run_id
from datamix.runspec import TERMINATION_MESSAGE_LIMIT, RunResult, RunSpec, RunSpecError, normalise
from tests.api.manifests import valid_manifest

REPO = Path(__file__).resolve().parents[2]


def test_normalised_weights_sum_to_one() -> None:
    rng = random.Random(7)
    for _ in range(200):
        weights = [rng.uniform(1e-4, 10) for _ in range(rng.randint(1, 120))]
        shares = normalise(weights)
        assert abs(math.fsum(shares) - 1.0) <= 1e-12
        total = math.fsum(weights)
        assert all(abs(s - w / total) <= 1e-12 for s, w in zip(shares, weights, strict=True))


@pytest.mark.parametrize("weights", [[], [1.0, 0.0], [1.0, -1.0], [float("nan")], [float("inf")]])
def test_bad_weights_are_refused(weights: list[float]) -> None:
    with pytest.raises(RunSpecError):
        normalise(weights)


def test_run_spec_round_trips() -> None:
    spec = build_run_spec(valid_manifest())
    assert RunSpec.from_json(spec.to_json()) == spec
    assert spec.output_dir == f"/output/default/mix-a/{spec.run}"  # namespace, experiment, run
    assert spec.datasets[0].path == "/data/web/part_0_text_document"
    assert spec.datasets[0].validation_path == "/data/web/valid_text_document"


def test_run_spec_version_mismatch_is_explained() -> None:
    text = build_run_spec(valid_manifest()).to_json().replace("runspec/v1", "runspec/v0")
    with pytest.raises(RunSpecError, match="different releases"):
        RunSpec.from_json(text)


def test_run_id_depends_only_on_run_defining_fields() -> None:
    a = valid_manifest()
    b = valid_manifest()
    b["spec"]["suspend"] = True
    b["spec"]["podTemplate"] = {"metadata": {"labels": {"team": "x"}}}
    assert run_id(a) == run_id(b)
    b["spec"]["datasets"]["mixture"][0]["weight"] = 2.0
    assert run_id(a) != run_id(b)


def test_render_is_byte_identical_across_processes(tmp_path: Path) -> None:
    file = tmp_path / "m.yaml"
    file.write_text(yaml.safe_dump(valid_manifest()))
    outputs = {
        subprocess.run(
            [sys.executable, "-m", "datamix_cli", "render", str(file)],
            capture_output=True,
            check=True,
            env={"PYTHONHASHSEED": str(seed), "PATH": "/usr/bin"},
        ).stdout
        for seed in (0, 1, 2)
    }
    assert len(outputs) == 1
    assert b"kind: ConfigMap" in outputs.pop()


def _result(n: int, rng: random.Random) -> RunResult:
    return RunResult(
        run="0123abcd",
        train_loss=rng.uniform(1, 12),
        validation_loss=tuple(rng.uniform(1, 12) for _ in range(n)),
        tokens=tuple(rng.randint(10**9, 10**11) for _ in range(n)),
        steps=24000,
        consumed_samples=24576000,
        wall_seconds=123456.78,
    )


def test_run_result_of_84_datasets_fits_a_termination_message() -> None:
    result = _result(84, random.Random(1))
    text = result.encode()
    assert len(text.encode()) < TERMINATION_MESSAGE_LIMIT
    decoded = RunResult.decode(text)
    assert not decoded.detail_truncated and len(decoded.validation_loss) == 84
    assert decoded.tokens == result.tokens
    assert all(abs(a - b) <= 1e-4 * b for a, b in zip(decoded.validation_loss, result.validation_loss, strict=True))
    assert abs(math.fsum(decoded.realised_shares) - 1) < 1e-9


def test_run_result_too_big_drops_detail_but_stays_decodable() -> None:
    text = _result(400, random.Random(2)).encode()
    assert len(text.encode()) < TERMINATION_MESSAGE_LIMIT
    assert RunResult.decode(text).detail_truncated


def test_malformed_run_result_is_an_error() -> None:
    with pytest.raises(RunSpecError):
        RunResult.decode('{"v": 1}')
