"""A DataMixtureSweep end to end on the real control plane (API server, scheduler, garbage
collector, training-operator, kwok) with the real operator, sampler, regression and proposer.

The trials' pods are held Running by the kwok stage (`datamix.io/fake-hold`) until a fake trainer
in this test plays them: it reads the trial experiment's mixture, computes the per-dataset
validation losses of a known law (a Data Mixing Law per domain, tests/sweep/sweep_fakes.py), and
ends the pod with that run result as its termination message, as the real trainer would. So the
proposal can be judged against the law's true optimum.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from datamix import GROUP, PLURAL, VERSION
from datamix.sweep_schema import SWEEP_PLURAL
from testsupport.clusterlib import wait_for
from testsupport.experiments import apply_sweep_crd, capture, core, custom, e2e_manifest, kubectl_apply

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]
pytest.importorskip("datamix.search.proposer", reason="the search engine (datamix.search) is not on this branch")

from tests.sweep.fake_trainer import FakeTrainer, hold_pods  # noqa: E402
from tests.sweep.sweep_fakes import LAW_DOMAINS, law_objective, law_optimum  # noqa: E402

LABEL_SWEEP = f"{GROUP}/sweep"


def sweep_manifest(name: str, pool: str, trials: int = 16, parallelism: int = 4) -> dict[str, Any]:
    experiment = e2e_manifest("template", nodes=1, gpus=8, pool=pool, weights=(1.0, 1.0, 1.0), result=False,
                              duration="1s")["spec"]
    for d in experiment["datasets"]["mixture"]:
        d["validationPath"] = f"{d['name']}/valid_text_document"
    hold_pods(experiment)
    assert [d["name"] for d in experiment["datasets"]["mixture"]] == ["web", "code", "math"] == list(LAW_DOMAINS)
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "DataMixtureSweep", "metadata": {"name": name},
        "spec": {
            "experiment": experiment,
            "search": {"trials": trials, "parallelism": parallelism, "seed": 11},
            "final": {"training": {**experiment["training"], "trainSamples": 3200}},
        },
    }


def sweep_of(api: Any, namespace: str, name: str) -> dict[str, Any]:
    return custom(api).get_namespaced_custom_object(GROUP, VERSION, namespace, SWEEP_PLURAL, name)  # type: ignore[no-any-return]


def experiments_of(api: Any, namespace: str, sweep: str) -> dict[str, dict[str, Any]]:
    items = custom(api).list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                                      label_selector=f"{LABEL_SWEEP}={sweep}")["items"]
    return {i["metadata"]["name"]: i for i in items}


def unfinished(experiments: dict[str, dict[str, Any]]) -> list[str]:
    return [n for n, e in experiments.items() if n.rsplit("-", 1)[-1].startswith("t")
            and (e.get("status") or {}).get("phase") not in ("Succeeded", "Failed")]


@contextmanager
def watching_parallelism(api: Any, namespace: str, sweep: str) -> Iterator[list[int]]:
    """Samples the number of unfinished trials every 0.2 s (the largest is checked)."""
    seen: list[int] = []
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            seen.append(len(unfinished(experiments_of(api, namespace, sweep))))
            stop.wait(0.2)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join(10)


def test_sweep_proposes_near_the_optimum_and_launches_the_final_run(
    cluster: Any, k8s_client: Any, namespace: str, gpu_pool: str, start_operator: Any, tmp_path: Path
) -> None:
    apply_sweep_crd(cluster)
    op = start_operator([namespace])
    name = "law"
    manifest = sweep_manifest(name, gpu_pool)
    captured: set[str] = set()

    def phase_is(*phases: str) -> dict[str, Any] | None:
        if op.returncode is not None:
            raise AssertionError(f"the operator exited ({op.returncode}):\n{op.log_tail()}")
        sweep = sweep_of(k8s_client, namespace, name)
        phase = (sweep.get("status") or {}).get("phase")
        if phase and phase not in captured:
            captured.add(phase)
            capture(f"sweep-{phase.lower()}", sweep)
        return sweep if phase in phases else None

    with FakeTrainer(k8s_client, namespace) as trainer, \
            watching_parallelism(k8s_client, namespace, name) as seen:
        kubectl_apply(cluster, namespace, manifest)
        wait_for(lambda: len([e for e in experiments_of(k8s_client, namespace, name).values()
                              if (e.get("status") or {}).get("phase") == "Succeeded"]) >= 5,
                 240, interval=0.5, description="5 trials succeeded")
        # Kill the operator mid-sweep (SIGKILL: no clean-up) and start another.
        before = {n: e["metadata"]["uid"] for n, e in experiments_of(k8s_client, namespace, name).items()}
        op.kill()
        time.sleep(2)
        op.start()
        done = wait_for(lambda: phase_is("Succeeded", "Failed"), 600, interval=0.5,
                        description="the sweep and its final run finished")
        assert not trainer.errors, trainer.errors

    status = done["status"]
    assert status["phase"] == "Succeeded", (status, op.log_tail())
    assert max(seen) <= 4, f"at most parallelism (4) unfinished trials; seen {max(seen)}"
    assert max(seen) == 4, "the sweep used its parallelism"
    children = experiments_of(k8s_client, namespace, name)
    trials = sorted(n for n in children if n != f"{name}-final")
    assert trials == [f"{name}-t{i:03d}" for i in range(16)], "each trial exactly once"
    assert {n: children[n]["metadata"]["uid"] for n in before} == before, "the restart re-created nothing"
    assert all(ref["uid"] == done["metadata"]["uid"] for c in children.values()
               for ref in c["metadata"]["ownerReferences"])
    assert status["trials"] == {"total": 16, "created": 16, "active": 0, "succeeded": 16, "failed": 0,
                                "done": "16/16"}

    # the best observed trial is the one the law says is best
    best = min(trials, key=lambda n: trainer.played[n])
    assert status["best"]["trial"] == best
    assert status["best"]["objective"] == pytest.approx(trainer.played[best], rel=1e-4)

    # the proposal: near the law's optimum, better than the prior (uniform here) and the best trial
    shares = [m["share"] for m in status["proposal"]["mixture"]]
    assert [m["name"] for m in status["proposal"]["mixture"]] == list(LAW_DOMAINS)
    _, optimum = law_optimum()
    true = law_objective(shares)
    uniform = law_objective((1 / 3, 1 / 3, 1 / 3))
    assert true <= optimum * 1.01, (shares, true, optimum)
    assert true - optimum < 0.1 * (uniform - optimum), (shares, true, optimum, uniform)
    assert true <= trainer.played[best]
    assert status["fit"]["trials"] == 16
    assert status["fit"]["spearman"] > 0.8

    # the final run: created with the proposed shares and the final's training, then observed
    final = children[f"{name}-final"]
    weights = {d["name"]: d["weight"] for d in final["spec"]["datasets"]["mixture"]}
    assert [weights[d] / sum(weights.values()) for d in LAW_DOMAINS] == pytest.approx(shares, abs=1e-5)
    assert final["spec"]["training"]["trainSamples"] == 3200
    assert final["status"]["phase"] == "Succeeded"
    assert status["final"]["experiment"] == f"{name}-final"
    assert status["final"]["observedObjective"] == pytest.approx(true, rel=1e-4)
    assert status["final"]["predictedObjective"] == status["proposal"]["predictedObjective"]
    printed = cluster.kubectl("get", "dms", name, "-n", namespace).stdout
    assert "Succeeded" in printed, printed
    assert "16/16" in printed, printed

    # `datamix sweep report` from the cluster: the trials table and the plot
    report = subprocess.run([sys.executable, "-m", "datamix_cli", "sweep", "report", name, "-n", namespace,
                             "--output-dir", str(tmp_path)], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig)})
    assert report.returncode == 0, report.stderr
    rows = (tmp_path / "trials.csv").read_text().splitlines()
    assert rows[0] == "trial,share:web,share:code,share:math,loss:web,loss:code,loss:math"
    assert len(rows) == 17
    assert (tmp_path / "sweep.png").stat().st_size > 10_000

    # deleting the sweep garbage-collects the trials, the final run and their jobs and pods
    cluster.kubectl("delete", "dms", name, "-n", namespace, "--wait=false")

    def collected() -> bool:
        jobs = custom(k8s_client).list_namespaced_custom_object("kubeflow.org", "v1", namespace, "pytorchjobs")
        pods = core(k8s_client).list_namespaced_pod(namespace).items
        return not experiments_of(k8s_client, namespace, name) and not jobs["items"] and not pods

    wait_for(collected, 180, interval=1, description="the sweep's experiments, jobs and pods deleted")


def test_sweep_status_documents_fit_the_crd(k8s_client: Any, namespace: str, cluster: Any) -> None:
    """The API server stores a sweep with every status field the operator writes (a structural
    schema would silently prune unknown ones)."""
    apply_sweep_crd(cluster)
    manifest = sweep_manifest("shape", "none", trials=4, parallelism=2)
    kubectl_apply(cluster, namespace, manifest)
    status = {
        "observedGeneration": 1, "phase": "Succeeded", "reason": "FinalSucceeded", "message": "m",
        "trials": {"total": 4, "created": 4, "active": 0, "succeeded": 4, "failed": 0, "done": "4/4"},
        "best": {"trial": "shape-t002", "objective": 2.5},
        "fit": {"regression": "loglinear", "spearman": 0.9, "trials": 4, "seconds": 0.5},
        "proposal": {"mixture": [{"name": "web", "share": 0.5}, {"name": "code", "share": 0.5}],
                     "predictedObjective": 2.4, "priorPredictedObjective": 2.6, "uniformPredictedObjective": 2.6},
        "final": {"experiment": "shape-final", "phase": "Succeeded", "predictedObjective": 2.4,
                  "observedObjective": 2.41},
        "startTime": "2026-12-03T08:00:00Z", "completionTime": "2026-12-03T08:10:00Z",
        "conditions": [{"type": "Stalled", "status": "False", "reason": "AsExpected", "message": "",
                        "lastTransitionTime": "2026-12-03T08:00:00Z", "observedGeneration": 1}],
    }
    custom(k8s_client).patch_namespaced_custom_object_status(GROUP, VERSION, namespace, SWEEP_PLURAL, "shape",
                                                             {"status": copy.deepcopy(status)})
    assert sweep_of(k8s_client, namespace, "shape")["status"] == status


def test_max_epochs_caps_the_proposal_with_sizes_from_the_trials_termination_messages(
    cluster: Any, k8s_client: Any, namespace: str, gpu_pool: str, start_operator: Any
) -> None:
    """The trials' results carry each dataset's epoch tokens (the fake trainer's termination
    messages); the experiment operator puts them in status.result (the CRD keeps them), the sweep
    reads them and caps web, the domain the law wants most (about 56%), at 20% of the final run
    with maxEpochs 2; the final experiment is created with the capped proposal."""
    from datamix.search.sweep import parse_sweep

    apply_sweep_crd(cluster)
    start_operator([namespace])
    name = "epochs"
    manifest = sweep_manifest(name, gpu_pool, trials=8, parallelism=4)
    manifest["spec"]["search"]["maxEpochs"] = 2
    final_tokens = parse_sweep(manifest).final_tokens()
    sizes = {"web": final_tokens // 10, "code": 10**12, "math": 10**12}
    with FakeTrainer(k8s_client, namespace, epoch_tokens=sizes) as trainer:
        kubectl_apply(cluster, namespace, manifest)
        done = wait_for(lambda: (s := sweep_of(k8s_client, namespace, name)).get("status", {}).get("final")
                        and s, 400, interval=0.5, description="the capped proposal and its final run")
        assert not trainer.errors, trainer.errors
    trial = experiments_of(k8s_client, namespace, name)[f"{name}-t000"]
    reported = {d["name"]: d.get("epochTokens") for d in trial["status"]["result"]["datasets"]}
    assert reported == sizes, "the CRD keeps status.result.datasets[].epochTokens"
    shares = {m["name"]: m["share"] for m in done["status"]["proposal"]["mixture"]}
    assert shares["web"] * final_tokens / sizes["web"] <= 2 + 1e-4, shares
    assert law_optimum()[0][0] > 0.3, "uncapped, the law wants web above the cap"
    final = experiments_of(k8s_client, namespace, name)[f"{name}-final"]
    weights = {d["name"]: d["weight"] for d in final["spec"]["datasets"]["mixture"]}
    assert weights["web"] / sum(weights.values()) == pytest.approx(shares["web"], abs=1e-5)
