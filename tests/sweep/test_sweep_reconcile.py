"""The sweep reconciler against an in-memory API server, with the real sampler, regression and
proposer (in the bounded fit subprocess): trials within the parallelism, restarts that create
nothing twice, the failure budget, suspend, the proposal against a known law's optimum, the final
run, and a status that stays small at 512 trials x 128 domains."""

from __future__ import annotations

import json
import random
import threading
from typing import Any

import pytest

pytest.importorskip("datamix.search.proposer", reason="the search engine (datamix.search) is not on this branch")

from datamix_operator.sweep.fit import FitRequest, Fitter
from datamix_operator.sweep.metrics import SweepMetrics
from datamix_operator.sweep.plan import SweepPlan, experiment_shares
from datamix_operator.sweep.reconcile import SweepReconciler, Trials
from prometheus_client import CollectorRegistry

from datamix.names import LABEL_SWEEP, LABEL_TRIAL
from tests.sweep.sweep_fakes import (
    LAW_DOMAINS,
    FakeSweepApi,
    law_losses,
    law_objective,
    law_optimum,
    small_sweep,
)


class Harness:
    def __init__(self, api: FakeSweepApi | None = None, fitter: Fitter | None = None) -> None:
        self.api = api or FakeSweepApi()
        self.fitter = fitter or Fitter(workers=1, timeout_seconds=120)
        self.scheduled: list[tuple[str, str, float]] = []
        self.fit_done = threading.Event()
        self.reconciler = SweepReconciler(self.api, self.fitter, metrics=SweepMetrics(CollectorRegistry()),
                                          clock=lambda: "2026-12-03T08:00:00Z", schedule=self._schedule)

    def _schedule(self, namespace: str, name: str, delay: float) -> None:
        self.scheduled.append((namespace, name, delay))
        if delay == 0.0:
            self.fit_done.set()

    def reconcile(self, name: str = "mix") -> dict[str, Any]:
        self.reconciler.reconcile("ns", name)
        return self.api.sweep(name).get("status") or {}

    def run_trials(self, name: str = "mix", seed: int = 0, fail: set[int] = frozenset(),  # type: ignore[assignment]
                   sizes: dict[str, int] | None = None) -> dict[str, Any]:
        """Finish unfinished trials in a random order (results from the law, with `sizes` as the
        datasets' epochTokens) until none is created; checks the parallelism after every step."""
        rng = random.Random(seed)
        plan = SweepPlan.read(self.api.sweep(name))
        status = self.reconcile(name)
        while self.api.unfinished():
            assert len(self.api.unfinished()) <= plan.parallelism
            trial = rng.choice(self.api.unfinished())
            exp = self.api.experiments[("ns", trial)]
            index = int(exp["metadata"]["labels"][LABEL_TRIAL])
            self.api.finish(trial, None if index in fail else law_losses(experiment_shares(exp, LAW_DOMAINS)),
                            sizes=sizes)
            status = self.reconcile(name)
        return status

    def wait_fit(self, name: str = "mix") -> dict[str, Any]:
        assert self.fit_done.wait(120), "the fit did not call back"
        self.fit_done.clear()
        return self.reconcile(name)


def test_trials_are_created_within_parallelism_with_deterministic_mixtures() -> None:
    h = Harness()
    sweep = h.api.add_sweep(small_sweep(trials=16, parallelism=4, minShare={"web": 0.1}))
    status = h.reconcile()
    assert sorted(n for _, n in h.api.experiments) == ["mix-t000", "mix-t001", "mix-t002", "mix-t003"]
    assert status["phase"] == "Running"
    assert status["trials"] == {"total": 16, "created": 4, "active": 4, "succeeded": 0, "failed": 0, "done": "0/16"}
    plan = SweepPlan.read(sweep)
    for (_, name), exp in h.api.experiments.items():
        index = int(name[-3:])
        meta = exp["metadata"]
        assert meta["labels"][LABEL_SWEEP] == "mix"
        assert meta["labels"][LABEL_TRIAL] == str(index)
        assert meta["ownerReferences"][0]["uid"] == sweep["metadata"]["uid"]
        assert meta["ownerReferences"][0]["controller"] is True
        shares = experiment_shares(exp, plan.domains)
        assert shares == pytest.approx(plan.trial_shares(index), abs=1e-9)
        assert sum(shares) == pytest.approx(1.0, abs=1e-9)
        assert shares[0] >= 0.1 - 1e-9
        assert exp["spec"]["model"] == sweep["spec"]["experiment"]["model"]
    assert h.reconcile()["trials"]["created"] == 4, "a second reconcile creates nothing while 4 are active"


def test_every_trial_runs_once_and_never_more_than_parallelism_unfinished() -> None:
    h = Harness()
    h.api.add_sweep(small_sweep(trials=16, parallelism=4))
    status = h.run_trials()
    assert sorted(n for _, n in h.api.experiments) == [f"mix-t{i:03d}" for i in range(16)]
    assert status["trials"]["succeeded"] == 16
    assert status["phase"] == "Fitting"
    best = min(range(16), key=lambda i: law_objective(experiment_shares(h.api.experiments[("ns", f"mix-t{i:03d}")],
                                                                        LAW_DOMAINS)))
    assert status["best"]["trial"] == f"mix-t{best:03d}"


def test_a_restarted_operator_creates_nothing_twice() -> None:
    h = Harness()
    h.api.add_sweep(small_sweep(trials=16, parallelism=4))
    h.reconcile()
    before = {n: e["metadata"]["uid"] for (_, n), e in h.api.experiments.items()}
    # a crash after creating trial 4 but before anything else saw it: the next incarnation lists
    # it (adopted), and a create racing a stale list gets 409 and adopts it too
    h.api.finish("mix-t000", law_losses((0.3, 0.3, 0.4)))
    restarted = Harness(api=h.api)
    restarted.reconcile()
    assert {n: e["metadata"]["uid"] for (_, n), e in h.api.experiments.items() if n in before} == before
    assert len(h.api.experiments) == 5
    stale = Harness(api=h.api)
    real_list = h.api.list_experiments_labelled
    h.api.list_experiments_labelled = lambda ns, sel: [e for e in real_list(ns, sel)  # type: ignore[method-assign]
                                                       if e["metadata"]["name"] != "mix-t004"]
    stale.reconcile()
    h.api.list_experiments_labelled = real_list  # type: ignore[method-assign]
    assert len(h.api.experiments) == 5
    assert "Stalled" not in json.dumps(h.api.sweep("mix")["status"])


def test_a_trial_name_owned_by_someone_else_stalls_the_sweep() -> None:
    h = Harness()
    h.api.add_sweep(small_sweep(trials=4, parallelism=1))
    h.api.create_experiment("ns", {"metadata": {"name": "mix-t000", "labels": {}}, "spec": {}})
    status = h.reconcile()
    stalled = status["conditions"][0]
    assert (stalled["type"], stalled["reason"]) == ("Stalled", "ChildConflict")
    assert "mix-t000 exists and is not this sweep's" in stalled["message"]


def test_failures_past_the_budget_fail_the_sweep_and_stop_new_trials() -> None:
    h = Harness()
    h.api.add_sweep(small_sweep(trials=16, parallelism=2, maxFailedTrials=1))
    h.reconcile()
    h.api.finish("mix-t000", None)
    status = h.reconcile()
    assert status["phase"] == "Running"
    assert status["trials"]["failed"] == 1
    h.api.finish("mix-t001", None)
    h.api.finish("mix-t002", None)
    status = h.reconcile()
    assert (status["phase"], status["reason"]) == ("Failed", "TooManyFailedTrials")
    assert len(h.api.experiments) == 3, "no trial after the budget is spent"
    assert status["completionTime"] == "2026-12-03T08:00:00Z"


def test_suspend_stops_new_trials_and_resume_continues() -> None:
    h = Harness()
    h.api.add_sweep(small_sweep(trials=8, parallelism=2))
    h.reconcile()
    h.api.edit_sweep("mix", suspend=True)
    h.api.finish("mix-t000", law_losses((0.2, 0.3, 0.5)))
    status = h.reconcile()
    assert status["phase"] == "Suspended"
    assert len(h.api.experiments) == 2
    h.api.edit_sweep("mix", suspend=False)
    status = h.reconcile()
    assert status["phase"] == "Running"
    assert len(h.api.experiments) == 3


def test_unreachable_bounds_stall_with_invalid_spec() -> None:
    h = Harness()
    h.api.add_sweep(small_sweep(minShare={"web": 0.6, "code": 0.6}))
    status = h.reconcile()
    assert status["phase"] == "Pending"
    assert status["conditions"][0]["reason"] == "InvalidSpec"
    assert "spec.search.minShare" in status["conditions"][0]["message"]
    assert h.api.experiments == {}


def test_the_proposal_is_near_the_law_optimum_and_the_final_run_gets_it() -> None:
    h = Harness()
    sweep = small_sweep(trials=24, parallelism=6)
    sweep["spec"]["final"] = {"model": {"preset": "small"}}
    h.api.add_sweep(sweep)
    assert h.run_trials()["phase"] == "Fitting"
    status = h.wait_fit()
    proposal = status["proposal"]
    shares = [m["share"] for m in proposal["mixture"]]
    assert [m["name"] for m in proposal["mixture"]] == list(LAW_DOMAINS)
    assert sum(shares) == pytest.approx(1.0, abs=1e-5)
    _, optimum = law_optimum()
    uniform = law_objective((1 / 3, 1 / 3, 1 / 3))
    print(f"proposal {shares}: true {law_objective(shares):.5f}, optimum {optimum:.5f}, uniform {uniform:.5f}")
    assert law_objective(shares) <= optimum * 1.01
    assert law_objective(shares) - optimum < 0.1 * (uniform - optimum), "most of the way from uniform to the optimum"
    assert law_objective(shares) < law_objective(SweepPlan.read(sweep).prior)
    assert law_objective(shares) < law_objective((1 / 3, 1 / 3, 1 / 3))
    assert proposal["predictedObjective"] < proposal["uniformPredictedObjective"]
    assert status["fit"]["regression"] == "loglinear"
    assert status["fit"]["trials"] == 24
    assert status["fit"]["spearman"] > 0.8
    # the final run: the trials' experiment with the final's model and the proposed shares
    final = h.api.experiments[("ns", "mix-final")]
    assert final["metadata"]["labels"][LABEL_TRIAL] == "final"
    assert final["spec"]["model"] == {"preset": "small"}
    assert experiment_shares(final, LAW_DOMAINS) == pytest.approx(shares, abs=1e-6)
    assert (status["phase"], status["reason"]) == ("Running", "FinalRunning")
    h.api.finish("mix-final", law_losses(shares))
    status = h.reconcile()
    assert (status["phase"], status["reason"]) == ("Succeeded", "FinalSucceeded")
    assert status["final"]["observedObjective"] == pytest.approx(law_objective(shares))
    assert status["final"]["predictedObjective"] == proposal["predictedObjective"]
    # a restart neither refits nor touches the final run
    again = Harness(api=h.api)
    assert again.reconcile() == status
    assert not again.fit_done.is_set()


def test_a_fit_that_runs_too_long_fails_the_sweep_with_the_reason() -> None:
    h = Harness(fitter=Fitter(workers=1, timeout_seconds=0.05))
    h.api.add_sweep(small_sweep(trials=4, parallelism=4))
    h.run_trials()
    status = h.wait_fit()
    assert (status["phase"], status["reason"]) == ("Failed", "FitFailed")
    assert "longer than 0.05 s" in status["message"]


def test_a_fit_past_its_memory_cap_is_stopped() -> None:
    request = FitRequest(trials=["a", "b", "c", "d"], domains=["a", "b"], shares=[[0.5, 0.5]] * 4, loss_domains=["a"],
                         losses=[[1.0]] * 4, objective={"a": 1.0}, prior=[0.5, 0.5], min_share={}, max_share={},
                         regression="loglinear", seed=0)
    result = Fitter(memory_mib=64).run_bounded(request)
    assert result.shares is None
    assert result.error is not None
    assert "64 MiB" in result.error or "exited with code" in result.error


def test_status_stays_small_at_512_trials_and_128_domains() -> None:
    domains = [f"domain-{i:03d}" for i in range(128)]
    sweep = small_sweep(trials=512, parallelism=64)
    sweep["spec"]["experiment"]["datasets"]["mixture"] = [
        {"name": d, "path": f"{d}/part_0_text_document", "weight": 1, "validationPath": f"{d}/valid"}
        for d in domains]
    sweep["spec"]["objective"] = {d: 1 for d in domains}
    sweep["metadata"].update(uid="u", namespace="ns")
    plan = SweepPlan.read(sweep)
    trials = Trials(experiments={i: {} for i in range(512)},
                    succeeded={i: ([1 / 128] * 128, [3.0] * 128, 3.0 + i / 1000) for i in range(500)},
                    failed=set(range(500, 512)))
    h = Harness()
    status = h.reconciler._status(sweep, plan, trials, {})
    from datamix_operator.sweep.fit import FitResult
    status["fit"], status["proposal"] = h.reconciler._fit_status(plan, FitResult(
        shares=[1 / 128] * 128, predicted=3.0, predicted_prior=3.1, predicted_uniform=3.1, spearman=0.9,
        trials=500, seconds=1.0))
    size = len(json.dumps(status))
    print(f"status at 512 trials x 128 domains: {size} bytes")
    assert size < 16 * 1024


def test_metrics_follow_the_sweep_and_go_with_it() -> None:
    registry = CollectorRegistry()
    h = Harness()
    h.reconciler.metrics = SweepMetrics(registry)
    h.api.add_sweep(small_sweep(trials=4, parallelism=2))
    h.reconcile()
    h.api.finish("mix-t000", law_losses((0.2, 0.3, 0.5)))
    h.reconcile()
    labels = {"sweep_namespace": "ns", "sweep": "mix"}
    value = registry.get_sample_value
    assert value("datamix_operator_sweep_trials", {**labels, "state": "succeeded"}) == 1
    assert value("datamix_operator_sweep_trials", {**labels, "state": "active"}) == 2
    assert value("datamix_operator_sweep_trials", {**labels, "state": "pending"}) == 1
    assert value("datamix_operator_sweep_trial_objective", {**labels, "trial": "mix-t000"}) == pytest.approx(
        law_objective((0.2, 0.3, 0.5)))
    assert value("datamix_operator_sweep_best_objective", labels) == pytest.approx(law_objective((0.2, 0.3, 0.5)))
    assert value("datamix_operator_sweeps", {"phase": "Running"}) == 1
    del h.api.sweeps[("ns", "mix")]
    h.reconciler.reconcile("ns", "mix")
    assert value("datamix_operator_sweep_trials", {**labels, "state": "succeeded"}) is None
    assert value("datamix_operator_sweep_trial_objective", {**labels, "trial": "mix-t000"}) is None
    assert value("datamix_operator_sweeps", {"phase": "Running"}) == 0


def test_the_kueue_queue_passes_to_the_trials_and_the_final_run() -> None:
    sweep = small_sweep()
    sweep["spec"]["experiment"]["resources"]["queueName"] = "proxies"
    sweep["spec"]["final"] = {"resources": {"nodes": 4, "gpusPerNode": 8}}
    sweep["metadata"].update(uid="u", namespace="ns")
    assert SweepPlan.read(sweep).trial_experiment(3)["spec"]["resources"]["queueName"] == "proxies"
    assert SweepPlan.read(sweep).final_experiment((0.2, 0.3, 0.5))["spec"]["resources"] == {
        "nodes": 4, "gpusPerNode": 8, "queueName": "proxies"}
    sweep["spec"]["final"]["resources"]["queueName"] = "big"
    assert SweepPlan.read(sweep).final_experiment((0.2, 0.3, 0.5))["spec"]["resources"]["queueName"] == "big"


def test_a_suspended_sweep_proposes_but_holds_the_final_run() -> None:
    h = Harness()
    sweep = small_sweep(trials=4, parallelism=4)
    sweep["spec"]["final"] = {"model": {"preset": "small"}}
    h.api.add_sweep(sweep)
    h.run_trials()
    h.api.edit_sweep("mix", suspend=True)
    status = h.wait_fit()
    assert status["phase"] == "Suspended"
    assert status["proposal"]["mixture"]
    assert ("ns", "mix-final") not in h.api.experiments
    h.api.edit_sweep("mix", suspend=False)
    assert h.reconcile()["reason"] == "FinalRunning"
    assert ("ns", "mix-final") in h.api.experiments


def test_the_controller_runs_sweeps_from_its_queue_and_retries_errors() -> None:
    from datamix_operator.kube import KubeError
    from datamix_operator.sweep.controller import SweepController

    h = Harness()
    controller = SweepController(h.reconciler, workers=1)
    h.api.add_sweep(small_sweep(trials=4, parallelism=2))
    controller.on_experiment("ns", {"datamix.io/sweep": "mix"})  # a trial's event names its sweep
    controller.enqueue("ns", "mix")  # coalesced with the first
    assert controller.process_next(timeout=1)
    assert len(h.api.experiments) == 2
    assert not controller.process_next(timeout=0.1), "one reconciliation for both triggers"
    real = h.api.get_sweep

    def down(namespace: str, name: str) -> dict[str, Any] | None:
        raise KubeError(0, "API server unreachable")

    h.api.get_sweep = down  # type: ignore[method-assign]
    controller.enqueue("ns", "mix")
    assert controller.process_next(timeout=1)
    assert 1.9 < controller.queue.delayed()[("ns", "mix")] <= 2.2, "retried after the backoff"
    h.api.get_sweep = real  # type: ignore[method-assign]
    controller.reconciler.schedule("ns", "mix", 0.0)  # what a finished fit does
    assert controller.process_next(timeout=1)
    controller.on_sweep("ns", "mix", deleted=True)
    controller.stop()


# maxEpochs: the trials' experiment trains 20480 samples of 4096 tokens; without `final` that is
# the length maxEpochs divides by.
PROXY_TOKENS = 20480 * 4096
LARGE = 10**12  # a domain no mixture repeats


def test_max_epochs_caps_a_small_domain_with_sizes_from_the_trials_results() -> None:
    """web is the domain the law wants most (about 56%); with 2 epochs of its 0.1 x final-run
    tokens it may have 20%, and the proposal is the law's best mixture under that cap."""
    h = Harness()
    h.api.add_sweep(small_sweep(trials=24, parallelism=6, maxEpochs=2))
    # 17 tokens short of 10%: the cap, 0.19999996, is recorded (6 places) as 0.2
    sizes = {"web": PROXY_TOKENS // 10 - 17, "code": LARGE, "math": LARGE}
    h.run_trials(sizes=sizes)
    status = h.wait_fit()
    assert (status["phase"], status["reason"]) == ("Succeeded", "Proposed")
    shares = {m["name"]: m["share"] for m in status["proposal"]["mixture"]}
    assert shares["web"] * PROXY_TOKENS / sizes["web"] <= 2 + 1e-5  # read at most twice
    assert law_optimum()[0][0] > 0.3, "the cap must bind for this test to mean anything"
    _, capped_optimum = law_optimum(max_share=(0.2, 1, 1))
    ordered = [shares[d] for d in LAW_DOMAINS]
    assert law_objective(ordered) <= capped_optimum * 1.01
    assert "maxEpochs not applied" not in status["message"]
    # a restart does not refit: the recorded proposal (shares rounded to 6 places) meets the cap
    again = Harness(api=h.api)
    assert again.reconcile() == status
    assert not again.fit_done.wait(2)


def test_sizes_that_disagree_across_trials_take_the_largest() -> None:
    h = Harness()
    h.api.add_sweep(small_sweep(trials=4, parallelism=4, maxEpochs=2))
    h.reconcile()
    small, grown = PROXY_TOKENS // 10, PROXY_TOKENS // 5
    for i, trial in enumerate(h.api.unfinished()):
        exp = h.api.experiments[("ns", trial)]
        web = grown if i == 2 else small  # shards appended while the sweep ran
        h.api.finish(trial, law_losses(experiment_shares(exp, LAW_DOMAINS)), sizes={"web": web, "code": LARGE})
    h.reconcile()
    status = h.wait_fit()
    shares = {m["name"]: m["share"] for m in status["proposal"]["mixture"]}
    assert shares["web"] <= 0.4 + 1e-6
    assert shares["web"] > 0.2 + 1e-3, "capped by the smaller size, not the largest"
    # math reported no size: not capped, and the status says so
    assert "maxEpochs not applied to math" in status["message"]


def test_max_epochs_that_no_mixture_meets_stops_the_sweep_with_the_fix() -> None:
    """Every domain holds 0.1 of the final run: 2 epochs of each fill 60%. The first result shows
    it; no further trial is created; the message names maxEpochs and the fixes; a final run as
    short as the message says makes the sweep go on."""
    h = Harness()
    sweep = small_sweep(trials=8, parallelism=2, maxEpochs=2)
    h.api.add_sweep(sweep)
    h.reconcile()
    first = h.api.unfinished()[0]
    sizes = dict.fromkeys(LAW_DOMAINS, PROXY_TOKENS // 10)
    h.api.finish(first, law_losses(experiment_shares(h.api.experiments[("ns", first)], LAW_DOMAINS)), sizes=sizes)
    status = h.reconcile()
    assert (status["phase"], status["reason"]) == ("Failed", "MaxEpochsInfeasible")
    assert status["conditions"][0]["reason"] == "MaxEpochsInfeasible"
    message = status["message"]
    assert message.startswith("spec.search.maxEpochs (2): ")
    assert "raise spec.search.maxEpochs to at least 3.33" in message
    created = len(h.api.experiments)
    h.reconcile()
    assert len(h.api.experiments) == created, "no trial is created for a proposal that cannot be made"

    longest = int(message.split("spec.final.training) on at most ")[1].split(" tokens")[0].replace(",", ""))
    assert longest <= 0.6 * PROXY_TOKENS
    training = {**sweep["spec"]["experiment"]["training"], "trainSamples": longest // 4096}
    h.api.edit_sweep("mix", final={"training": training})
    status = h.reconcile()
    assert status["phase"] == "Running"
    assert "conditions" not in status
    assert len(h.api.experiments) > created


def test_a_proposal_that_a_longer_final_run_would_over_repeat_is_refitted() -> None:
    """Proposed without `final` (the trials' length); `final` added later trains 4x longer: the
    recorded proposal would read web 4x as often, so it is refitted under the new cap before the
    final run is created."""
    h = Harness()
    sweep = small_sweep(trials=12, parallelism=6, maxEpochs=2)
    h.api.add_sweep(sweep)
    sizes = {"web": PROXY_TOKENS // 3, "code": LARGE, "math": LARGE}  # cap 2/3: not binding
    h.run_trials(sizes=sizes)
    status = h.wait_fit()
    web = {m["name"]: m["share"] for m in status["proposal"]["mixture"]}["web"]
    assert 0.3 < web < 2 / 3
    training = {**sweep["spec"]["experiment"]["training"], "trainSamples": 4 * 20480}
    h.api.edit_sweep("mix", final={"training": training})
    assert h.reconcile()["phase"] == "Fitting"
    assert ("ns", "mix-final") not in h.api.experiments
    status = h.wait_fit()
    final = h.api.experiments[("ns", "mix-final")]
    web = dict(zip(LAW_DOMAINS, experiment_shares(final, LAW_DOMAINS), strict=True))["web"]
    assert web * 4 * PROXY_TOKENS / sizes["web"] <= 2 + 1e-5
