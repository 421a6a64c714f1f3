"""maxEpochs: the caps share <= maxEpochs x size / final-run tokens, merged with maxShare; sizes
merged over trials; the message and fix when no mixture meets them; the final run's tokens from
its training length; the proposer (both regressions) staying under the caps."""

from __future__ import annotations

import copy
import re
from typing import Any

import numpy as np
import pytest
import yaml

from datamix.errors import UserError
from datamix.search.epochs import Repetition, least_epochs, merge_sizes
from datamix.search.fit import fit_and_propose
from datamix.search.simplex import Bounds, uniform
from datamix.search.sweep import parse_sweep
from tests.search.laws import LAWS
from tests.search.test_fit_and_propose import make_table
from tests.search.test_sweep_run import REPO

NAMES = ("a", "b", "c", "d")


def test_caps_are_max_epochs_times_size_over_final_tokens() -> None:
    repetition = Repetition(2.0, {"a": 1_000, "b": 100_000, "c": 0}, final_tokens=10_000)
    assert repetition.caps(NAMES).tolist() == [0.2, 1.0, 0.0, 1.0]  # d: size unknown, not capped
    assert repetition.unknown(NAMES) == ["d"]
    assert repetition.epochs(NAMES, np.array([0.2, 0.5, 0.0, 0.3])) == [2.0, 0.05, None, None]
    assert repetition.exceeded(NAMES, [0.25, 0.5, 0.0, 0.25]) == ["a"]


def test_caps_join_max_share_as_upper_bounds() -> None:
    bounds = Bounds.make(NAMES, {"b": 0.1}, {"a": 0.1, "b": 0.5})
    capped = Repetition(2.0, {"a": 1_000, "b": 2_000}, 10_000).bound(bounds, "maxEpochs", "final")
    assert capped.upper.tolist() == [0.1, 0.4, 1.0, 1.0]  # a: maxShare is lower; b: the cap is
    assert capped.lower.tolist() == bounds.lower.tolist()


def test_sizes_merge_to_the_largest_reported() -> None:
    assert merge_sizes([{"a": 10, "b": 5}, {}, {"a": 12}, {"b": 4, "c": 0}]) == {"a": 12, "b": 5, "c": 0}


def _message(repetition: Repetition, bounds: Bounds) -> str:
    with pytest.raises(UserError) as err:
        repetition.bound(bounds, "spec.search.maxEpochs", "spec.final.training")
    message = str(err.value)
    assert "\n" not in message
    return message


def test_caps_summing_below_one_name_max_epochs_and_a_fix_that_works() -> None:
    bounds = Bounds.make(NAMES, max_share={"d": 0.1})
    sizes = {"a": 1_000, "b": 2_000, "c": 3_000, "d": 10**9}
    repetition = Repetition(1.5, sizes, final_tokens=20_000)  # caps .075 .15 .225 .1: 55%
    message = _message(repetition, bounds)
    assert message.startswith("spec.search.maxEpochs (1.5): the final run trains 20,000 tokens")
    assert "fill at most 55.0%" in message
    assert "limited most by a, b, c" in message
    least = float(re.search(r"at least ([0-9.]+)", message).group(1))  # type: ignore[union-attr]
    longest = int(re.search(r"on at most ([0-9,]+) tokens", message).group(1).replace(",", ""))  # type: ignore[union-attr]
    # Both fixes make a mixture possible; a little less of either does not.
    assert least == pytest.approx(3.0, rel=1e-3)  # .05 .1 .15 per epoch (+ d's .1): 3 epochs fill 100%
    Repetition(least * 1.001, sizes, 20_000).bound(bounds, "m", "f")
    Repetition(1.5, sizes, longest).bound(bounds, "m", "f")
    with pytest.raises(UserError):
        Repetition(least * 0.99, sizes, 20_000).bound(bounds, "m", "f")
    with pytest.raises(UserError):
        Repetition(1.5, sizes, int(longest * 1.01)).bound(bounds, "m", "f")


def test_a_cap_below_min_share_is_named() -> None:
    bounds = Bounds.make(NAMES, min_share={"a": 0.3})
    message = _message(Repetition(2.0, {"a": 1_000}, 10_000), bounds)
    assert "caps a (1,000 tokens) at share 0.2 of the final run's 10,000 tokens, below its minShare 0.3" in message
    assert "at least 3" in message


def test_least_epochs_is_inf_when_empty_datasets_must_hold_the_rest() -> None:
    per_epoch = np.array([0.0, 0.0])
    assert least_epochs(np.zeros(2), np.ones(2), per_epoch) == float("inf")
    message = _message(Repetition(2.0, {"a": 0, "b": 0, "c": 0, "d": 0}, 10_000), Bounds.make(NAMES))
    assert "raise spec.search.maxEpochs, or add data" in message


@pytest.mark.parametrize(
    ("training", "tokens"),
    [
        ({"trainSteps": 400}, 400 * 16 * 128),
        ({"trainSamples": 6401}, 401 * 16 * 128),  # whole steps: the last batch passes trainSamples
        ({"trainTokens": 819_200}, 400 * 16 * 128),
    ],
)
def test_the_final_runs_tokens_come_from_its_training_length(training: dict[str, Any], tokens: int) -> None:
    doc = yaml.safe_load((REPO / "examples" / "sweep.yaml").read_text())
    final = doc["spec"]["final"]["training"]
    final.pop("trainSteps")
    final.update(training)
    assert parse_sweep(doc).final_tokens() == tokens


def test_without_final_the_trials_length_is_the_final_runs() -> None:
    doc = copy.deepcopy(yaml.safe_load((REPO / "examples" / "sweep.yaml").read_text()))
    doc["spec"].pop("final")
    assert parse_sweep(doc).final_tokens() == 480 * 8 * 128


@pytest.mark.parametrize("regression", ["loglinear", "lightgbm"])
def test_the_proposal_repeats_a_small_domain_at_most_max_epochs_times(regression: str) -> None:
    if regression == "lightgbm":
        pytest.importorskip("lightgbm")
    rng = np.random.default_rng(3)
    law = LAWS["mixing-law"].random(rng, 6)
    names = tuple(f"d{i}" for i in range(6))
    table = make_table(law, uniform(6), Bounds.make(names), 48, 3)
    free = fit_and_propose(table, regression=regression)
    small = names[int(np.argmax(free.proposal.shares))]  # the domain the objective wants most
    sizes = dict.fromkeys(names, 10**9)
    sizes[small] = 30_000
    final_tokens = 1_000_000
    capped = fit_and_propose(table, regression=regression, max_epochs=2, domain_tokens=sizes, final_tokens=final_tokens)
    share = float(capped.proposal.shares[names.index(small)])
    assert free.proposal.shares[names.index(small)] > 0.06, "the cap must bind"
    assert share * final_tokens / sizes[small] <= 2 + 1e-9  # read at most twice
    assert share > 0.03, "the domain the objective wants stays near its cap"
    assert abs(capped.proposal.shares.sum() - 1.0) <= 1e-12
