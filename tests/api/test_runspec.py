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


def _result(n: int, rng: random.Random, digits: int = 11, epoch: bool = False) -> RunResult:
    """A result of n datasets whose token counts have up to `digits` digits."""
    return RunResult(
        run="0123abcd",
        train_loss=rng.uniform(1, 12),
        validation_loss=tuple(rng.uniform(1, 12) for _ in range(n)),
        tokens=tuple(rng.randint(10 ** (digits - 2), 10**digits) for _ in range(n)),
        steps=24000,
        consumed_samples=24576000,
        wall_seconds=123456.78,
        epoch_tokens=tuple(rng.randint(10 ** (digits - 2), 10**digits) for _ in range(n)) if epoch else (),
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


def test_run_result_with_epoch_tokens_round_trips() -> None:
    result = _result(84, random.Random(3), digits=12, epoch=True)
    text = result.encode()
    assert len(text.encode()) <= TERMINATION_MESSAGE_LIMIT
    decoded = RunResult.decode(text)
    assert not decoded.detail_truncated
    assert decoded.epoch_tokens == result.epoch_tokens
    assert decoded.tokens == result.tokens


def test_run_result_of_128_large_datasets_keeps_losses_and_sizes_and_drops_consumed_tokens() -> None:
    """The schema's most datasets (128) with 13-digit counts (10^12 tokens a domain) do not fit in
    full; the consumed tokens go first, the validation losses and epoch sizes stay."""
    result = _result(128, random.Random(4), digits=13, epoch=True)
    assert len(result.encode(limit=10**9).encode()) > TERMINATION_MESSAGE_LIMIT
    text = result.encode()
    assert len(text.encode()) <= TERMINATION_MESSAGE_LIMIT
    decoded = RunResult.decode(text)
    assert decoded.detail_truncated
    assert decoded.tokens == ()
    assert decoded.epoch_tokens == result.epoch_tokens
    assert len(decoded.validation_loss) == 128


def test_run_result_drops_sizes_before_losses_when_still_too_big() -> None:
    result = _result(300, random.Random(5), digits=13, epoch=True)
    decoded = RunResult.decode(result.encode())
    assert decoded.detail_truncated
    assert decoded.epoch_tokens == ()
    assert len(decoded.validation_loss) == 300
    smallest = RunResult.decode(result.encode(limit=200))
    assert (smallest.validation_loss, smallest.tokens, smallest.epoch_tokens) == ((), (), ())
    assert smallest.steps == result.steps


def test_run_result_of_an_older_trainer_without_sizes_decodes() -> None:
    older = '{"loss":2.5,"run":"r","samples":10,"steps":1,"tok":[1000,500],"v":1,"val":[2.6,null],"wall":1.0}'
    decoded = RunResult.decode(older)
    assert decoded.epoch_tokens == ()
    assert decoded.tokens == (1000, 500)


@pytest.mark.parametrize(
    ("epoch", "problem"),
    [
        ("[-1, 5]", "-1 is not a count"),
        ('["12", 5]', "'12' is not a count"),
        ("[1.5, 5]", "1.5 is not a count"),
        ("[true, 5]", "True is not a count"),
        ("[null, 5]", "None is not a count"),
        ('{"a": 1}', "epoch must be a list"),
        ("[1, 2, 3]", "different lengths"),
    ],
)
def test_run_result_with_bad_sizes_is_a_one_line_error(epoch: str, problem: str) -> None:
    rest = '"loss":2.5,"run":"r","samples":10,"steps":1,"tok":[1,2],"v":1,"val":[2.6,null],"wall":1'
    text = f'{{"epoch":{epoch},{rest}}}'
    with pytest.raises(RunSpecError, match="malformed run result") as err:
        RunResult.decode(text)
    assert problem in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("text", ["[]", "3", '"x"', "null"])
def test_run_result_that_is_not_an_object_is_an_error(text: str) -> None:
    with pytest.raises(RunSpecError, match="malformed run result"):
        RunResult.decode(text)
