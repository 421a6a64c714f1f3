"""Rules with two copies are held to the same answers: the schema's CEL rules (the API server's copy)
and the Python function every Python caller uses."""

from __future__ import annotations

import math

import pytest

from datamix.experiment import plan_run, train_samples_of
from datamix.runspec import batch_problem, train_steps
from datamix.validation import schema_problems
from tests.api.manifests import valid_manifest

BATCH_FIELD = "spec.training.globalBatchSize"
# (globalBatchSize, microBatchSize, nodes, gpusPerNode)
BATCH_CASES = [
    (1024, 1, 2, 8),
    (1024, 4, 2, 8),
    (1000, 4, 2, 8),
    (96, 3, 1, 8),
    (96, 4, 3, 8),
    (16, 16, 1, 0),
    (16, 3, 1, 0),
    (48, 2, 3, 0),
    (7, 1, 7, 1),
    (7, 2, 1, 1),
    (12, 5, 1, 1),
]


def with_batch(gbs: int, mbs: int, nodes: int, gpus: int) -> dict:
    m = valid_manifest()
    m["spec"]["training"].update(globalBatchSize=gbs, microBatchSize=mbs)
    m["spec"]["resources"].update(nodes=nodes, gpusPerNode=gpus)
    if gpus == 0:
        del m["spec"]["resources"]["gpu"]
        m["spec"]["model"] = {"preset": "tiny"}
    return m


@pytest.mark.parametrize(("gbs", "mbs", "nodes", "gpus"), BATCH_CASES)
def test_cel_and_python_agree_on_the_batch_rule(gbs: int, mbs: int, nodes: int, gpus: int) -> None:
    manifest = with_batch(gbs, mbs, nodes, gpus)
    problems = schema_problems(manifest)
    assert all(p.path == BATCH_FIELD for p in problems), problems  # the case differs only in the batch
    refused_by_cel = bool(problems)
    refused_by_python = batch_problem(gbs, mbs, nodes * max(gpus, 1)) is not None
    assert refused_by_cel == refused_by_python, (problems, batch_problem(gbs, mbs, nodes * max(gpus, 1)))


def test_the_batch_cases_hold_both_verdicts() -> None:
    verdicts = {batch_problem(g, m, n * max(p, 1)) is None for g, m, n, p in BATCH_CASES}
    assert verdicts == {True, False}


def test_the_plan_refuses_what_the_batch_rule_refuses() -> None:
    manifest = with_batch(1024, 1, 2, 8)
    with pytest.raises(Exception, match="not a multiple of microBatchSize x data-parallel size \\(1 x 24\\)"):
        plan_run(manifest, procs_per_node=12)  # `datamix run --nproc 12` on a 2-node manifest


@pytest.mark.parametrize(
    ("training", "samples"),
    [
        ({"trainSamples": 1000}, 1000),
        ({"trainTokens": 4097 * 10}, 11),
        ({"trainSteps": 5}, 5 * 64),
    ],
)
def test_train_samples_and_steps_have_one_home(training: dict, samples: int) -> None:
    manifest = valid_manifest()
    t = manifest["spec"]["training"]
    for key in ("trainSamples", "trainTokens", "trainSteps"):
        t.pop(key, None)
    t.update(training, seqLength=4096, globalBatchSize=64, microBatchSize=1)
    manifest["spec"]["resources"].update(nodes=1, gpusPerNode=8)
    assert train_samples_of(t) == samples
    plan = plan_run(manifest)
    assert plan.spec.training.train_samples == samples
    assert plan.spec.training.train_steps == train_steps(samples, 64) == math.ceil(samples / 64)
