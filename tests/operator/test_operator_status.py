"""The status state machine (pure): job conditions and master pods to the experiment's status."""

from __future__ import annotations

from typing import Any

import pytest
from datamix_operator.render import render_children
from datamix_operator.status import (
    Observation,
    RunInfo,
    Stall,
    desired_status,
    merge_patch,
    merge_previous_runs,
    read_result,
    result_status,
    run_state,
    same,
    transitions,
)
from operator_fakes import manifest, result_message

from datamix.names import CONDITION_TYPES
from datamix.runspec import RunResult
from datamix.schema import STATUS

T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"


def job(*conditions: str, message: str = "", **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "mix-a-1234abcd"},
        "status": {"conditions": [{"type": c, "status": "True", "reason": f"PyTorchJob{c}", "message": message or c}
                                  for c in conditions], **status},
    }


def master(message: str = "", exit_code: int = 0) -> dict[str, Any]:
    return {"status": {"containerStatuses": [{"name": "pytorch", "state": {"terminated": {
        "exitCode": exit_code, "reason": "Error" if exit_code else "Completed", "message": message}}}]}}


def run_info() -> RunInfo:
    from datamix.runspec import RunSpec

    cm, _ = render_children(manifest(), "ns")
    spec = RunSpec.from_json(cm["data"]["runspec.json"])
    return RunInfo(spec.run, cm["metadata"]["name"], cm["metadata"]["name"], spec)


def experiment(status: dict[str, Any] | None = None, generation: int = 1, **spec: Any) -> dict[str, Any]:
    m = manifest(**spec)
    m["metadata"]["generation"] = generation
    if status is not None:
        m["status"] = status
    return m


def conditions(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


@pytest.mark.parametrize(
    ("conds", "phase", "reason"),
    [
        ((), "Pending", "JobPending"),
        (("Created",), "Pending", "JobPending"),
        (("Created", "Running"), "Running", "JobRunning"),
        (("Created", "Restarting"), "Running", "JobRestarting"),
        (("Created", "Suspended"), "Suspended", "Suspended"),
        (("Created", "Succeeded"), "Succeeded", "JobSucceeded"),
        (("Created", "Failed"), "Failed", "JobFailed"),
    ],
)
def test_run_state_from_job_conditions(conds: tuple[str, ...], phase: str, reason: str) -> None:
    state = run_state(job(*conds))
    assert (state.phase, state.reason) == (phase, reason)


def test_failed_state_carries_the_job_reason_message_and_exit_code() -> None:
    state = run_state(job("Created", "Failed", message="PyTorchJob ns/x is failed because 1 Master replica(s) failed."),
                      master(exit_code=3))
    assert state.phase == "Failed"
    assert "PyTorchJobFailed" in state.message and "1 Master replica(s) failed" in state.message
    assert "exited with code 3 (Error)" in state.message


def test_result_from_the_termination_message() -> None:
    text = result_message("1234abcd", loss=2.345678)
    result, problem = read_result(master(text))
    assert problem is None and result == RunResult.decode(text)
    state = run_state(job("Created", "Succeeded", startTime=T0, completionTime=T1), master(text))
    assert state.result is not None and state.result.train_loss == 2.3457
    assert "(loss 2.346)" in state.message
    assert (state.start_time, state.completion_time) == (T0, T1)


@pytest.mark.parametrize(
    ("pod", "problem"),
    [(None, "master pod is gone"), (master(""), "no termination message"), (master("not json"), "not a run result")],
)
def test_missing_or_bad_result_is_explained(pod: dict[str, Any] | None, problem: str) -> None:
    result, why = read_result(pod)
    assert result is None and why is not None and problem in why
    state = run_state(job("Succeeded"), pod)
    assert state.phase == "Succeeded" and problem in state.message


def test_result_maps_per_dataset_arrays_to_names() -> None:
    result = RunResult.decode(result_message("r"))
    out = result_status(result, ["web", "code"])
    assert out["datasets"] == [
        {"name": "web", "validationLoss": 2.6, "tokens": 1000, "share": 1000 / 1500},
        {"name": "code", "tokens": 500, "share": 500 / 1500},
    ]
    assert out["meanValidationLoss"] == 2.6 and out["trainLoss"] == 2.5
    truncated = RunResult(run="r", train_loss=1.0, validation_loss=(), tokens=(), steps=1, consumed_samples=1,
                          wall_seconds=1.0, detail_truncated=True)
    assert "datasets" not in result_status(truncated, ["web", "code"])


def test_result_with_epoch_tokens_and_without_consumed_tokens_maps_what_it_has() -> None:
    """A result whose consumed tokens were left out to fit the message (RunResult.encode) still
    gives the losses and the epoch sizes (a sweep's maxEpochs reads them)."""
    result = RunResult(run="r", train_loss=1.0, validation_loss=(2.6, None), tokens=(), steps=1, consumed_samples=1,
                       wall_seconds=1.0, detail_truncated=True, epoch_tokens=(7000, 900))
    assert result_status(result, ["web", "code"])["datasets"] == [
        {"name": "web", "validationLoss": 2.6, "epochTokens": 7000},
        {"name": "code", "epochTokens": 900},
    ]


def test_pending_status_before_the_job_exists() -> None:
    run = run_info()
    status = desired_status(experiment(), Observation(run=run, state=None), T0)
    assert status["phase"] == "Pending" and status["observedGeneration"] == 1
    assert status["shape"] == "2x8"
    assert status["mixture"] == [{"name": "web", "share": 2 / 3}, {"name": "code", "share": 1 / 3}]
    assert status["run"] == {"id": run.id, "configMap": run.config_map, "job": run.job, "phase": "Pending",
                             "reason": "JobNotCreated"}
    assert status["progress"] == {"targetSamples": 1600}
    assert [c["type"] for c in status["conditions"]] == list(CONDITION_TYPES)
    assert all(c["status"] == "False" and c["lastTransitionTime"] == T0 for c in status["conditions"])


def test_lifecycle_conditions_and_stable_transition_times() -> None:
    run = run_info()
    exp = experiment()
    created = desired_status(exp, Observation(run, run_state(job("Created"))), T0)
    assert conditions(created)["Created"] == ("True", "JobCreated")
    exp["status"] = created
    running = desired_status(exp, Observation(run, run_state(job("Created", "Running", startTime=T0))), T1)
    assert running["phase"] == "Running" and running["startTime"] == T0
    assert conditions(running)["Running"] == ("True", "JobRunning")
    by_type = {c["type"]: c for c in running["conditions"]}
    assert by_type["Created"]["lastTransitionTime"] == T0, "unchanged status keeps its transition time"
    assert by_type["Running"]["lastTransitionTime"] == T1
    exp["status"] = running
    # reconciling the same world again gives the identical document (no write, no churn)
    later = "2030-01-01T00:00:00Z"
    again = desired_status(exp, Observation(run, run_state(job("Created", "Running", startTime=T0))), later)
    assert same(again, running)

    text = result_message(run.id, loss=2.5, samples=800)
    done = desired_status(exp, Observation(run, run_state(
        job("Created", "Succeeded", startTime=T0, completionTime=T1), master(text))), T1)
    assert done["phase"] == "Succeeded" and done["loss"] == "2.5"
    assert done["progress"] == {
        "targetSamples": 1600, "consumedSamples": 800, "percent": 50,
        # the final losses, as the live reading showed them while it ran
        "trainLoss": 2.5, "meanValidationLoss": 2.6, "validationStep": 100,
    }
    assert done["result"]["trainLoss"] == 2.5 and done["result"]["datasets"][0]["name"] == "web"
    assert done["run"]["trainLoss"] == 2.5 and done["run"]["completionTime"] == T1
    assert conditions(done)["Succeeded"] == ("True", "JobSucceeded")
    assert conditions(done)["Running"][0] == "False"


def test_restarting() -> None:
    status = desired_status(experiment(), Observation(run_info(), run_state(
        job("Created", "Restarting", message="worker-0 exited with code 137"))), T0)
    assert status["phase"] == "Running"
    assert conditions(status)["Restarting"] == ("True", "JobRestarting")
    assert conditions(status)["Running"][0] == "False"


def test_suspended_only_when_the_user_asked() -> None:
    suspended_job = run_state(job("Created", "Suspended"))
    status = desired_status(experiment(suspend=True), Observation(run_info(), suspended_job), T0)
    assert status["phase"] == "Suspended" and conditions(status)["Suspended"] == ("True", "Suspended")
    # suspended by Kueue (queued): not the user's suspension
    queued = desired_status(experiment(), Observation(run_info(), suspended_job, queue="team-a"), T0)
    assert queued["phase"] == "Pending" and conditions(queued)["Suspended"][0] == "False"
    assert conditions(queued)["Running"][1] == "JobQueued"


@pytest.mark.parametrize("reason", ["InvalidSpec", "PyTorchJobCRDMissing"])
def test_stalled(reason: str) -> None:
    status = desired_status(experiment(generation=3), Observation(None, None, Stall(reason, "why")), T0)
    assert status["phase"] == "Pending" and status["observedGeneration"] == 3
    assert conditions(status)["Stalled"] == ("True", reason)
    assert conditions(status)["Created"] == ("False", reason)
    assert {c["observedGeneration"] for c in status["conditions"]} == {3}
    assert "run" not in status and status["mixture"][0]["name"] == "web"


def test_status_fits_the_crd_schema() -> None:
    """Every field written is declared: the API server would prune an undeclared one, and the
    operator would then write it again on every reconcile."""
    run = run_info()
    previous = [{"id": "0000aaaa", "configMap": "x", "job": "x", "phase": "Succeeded", "reason": "JobSucceeded",
                 "trainLoss": 1.0, "meanValidationLoss": 1.1, "startTime": T0, "completionTime": T1}]
    status = desired_status(experiment(), Observation(run, run_state(
        job("Created", "Succeeded", startTime=T0, completionTime=T1), master(result_message(run.id))),
        Stall("InvalidSpec", "x"), previous), T0)

    def check(value: Any, schema: dict[str, Any], path: str) -> None:
        if isinstance(value, dict):
            props = schema.get("properties") or {}
            for k, v in value.items():
                assert k in props, f"{path}.{k} is not in the CRD's status schema"
                check(v, props[k], f"{path}.{k}")
        elif isinstance(value, list):
            for i, v in enumerate(value):
                check(v, schema["items"], f"{path}[{i}]")
        else:
            expected = schema.get("type")
            ok = {"string": str, "integer": int, "number": (int, float), "boolean": bool}[expected]
            assert isinstance(value, ok), f"{path}: {value!r} is not {expected}"
            if "enum" in schema:
                assert value in schema["enum"]

    check(status, STATUS, "status")
    assert set(status) >= {"observedGeneration", "phase", "shape", "loss", "conditions", "mixture", "run",
                           "previousRuns", "startTime", "completionTime", "progress", "result"}


def test_previous_runs_newest_first_unique_and_bounded() -> None:
    old = [{"id": f"{i:08x}"} for i in range(16)]
    merged = merge_previous_runs(old, [{"id": "new00000"}, {"id": "00000003", "phase": "Succeeded"}])
    assert len(merged) == 16
    assert merged[0]["id"] == "new00000" and merged[1] == {"id": "00000003", "phase": "Succeeded"}
    assert [r["id"] for r in merged].count("00000003") == 1


def test_merge_patch() -> None:
    old = {"phase": "Running", "run": {"id": "a", "startTime": T0}, "result": {"x": 1}, "conditions": [1]}
    new = {"phase": "Running", "run": {"id": "b"}, "conditions": [1, 2]}
    assert merge_patch(old, new) == {"run": {"id": "b", "startTime": None}, "result": None, "conditions": [1, 2]}
    assert merge_patch(new, new) == {}
    assert same({"a": 2}, {"a": 2.0}) and not same({"a": True}, {"a": 1})


def test_transitions_become_events() -> None:
    run = run_info()
    exp = experiment()
    pending = desired_status(exp, Observation(run, run_state(job("Created"))), T0)
    assert [t.reason for t in transitions({}, pending)] == ["JobCreated"]
    exp["status"] = pending
    failed = desired_status(exp, Observation(run, run_state(job("Created", "Failed"))), T1)
    events = transitions(pending, failed)
    assert [(t.type, t.reason) for t in events] == [("Warning", "JobFailed")]
    assert transitions(failed, failed) == []
    other = dict(failed, run={"id": "bbbbbbbb"})
    assert [t.reason for t in transitions(failed, other)] == ["RunStarted"]


def _bad_loss(loss: object) -> str:
    return result_message("1234abcd").replace('"loss":2.5', f'"loss":{loss}')


@pytest.mark.parametrize(
    ("message", "problem"),
    [
        (_bad_loss('"low"'), "not a finite number"),
        (_bad_loss("NaN"), "not a finite number"),
        (_bad_loss("[1]"), "not a finite number"),
        (result_message("1234abcd").replace('"steps":100', '"steps":-1'), "not a count"),
        (result_message("1234abcd").replace('"v":1', '"pad":"' + "x" * 4096 + '","v":1'), "over 4096 bytes"),
        (result_message("99999999"), "for run '99999999', not for this run (1234abcd)"),
    ],
)
def test_an_untrusted_result_is_refused_with_a_message_not_an_error(message: str, problem: str) -> None:
    result, why = read_result(master(message), run_id="1234abcd")
    assert result is None
    assert why is not None
    assert problem in why
    state = run_state(job("Succeeded"), master(message), run_id="1234abcd")
    assert state.phase == "Succeeded"
    assert problem in state.message
    assert state.result is None


def test_a_non_finite_loss_exit_fails_with_its_own_reason() -> None:
    from datamix.runspec import NON_FINITE_LOSS_EXIT_CODE

    state = run_state(job("Failed"), master("non-finite training at step 7", exit_code=NON_FINITE_LOSS_EXIT_CODE))
    assert state.phase == "Failed"
    assert state.reason == "NonFiniteLoss"
    assert "step 7" in state.message
    assert run_state(job("Failed"), master("boom", exit_code=1)).reason == "JobFailed"
