"""Children someone else touched: a running run's ConfigMap deleted by hand is created again,
identical; a job made with a run-id scheme this operator does not know is left alone."""

from __future__ import annotations

import copy

from datamix_operator.metrics import Metrics
from datamix_operator.reconcile import Reconciler
from operator_fakes import Driven, FakeKube, manifest, result_message
from prometheus_client import CollectorRegistry

from datamix.experiment import RUN_ID_SCHEME
from datamix.names import LABEL_RUN_ID_SCHEME


def make() -> tuple[FakeKube, Driven]:
    kube = FakeKube()
    return kube, Driven(Reconciler(kube, trainer_image="trainer:test", metrics=Metrics(CollectorRegistry())))


def reasons(kube: FakeKube) -> list[str]:
    return [e["reason"] for e in kube.events]


def condition(kube: FakeKube, ctype: str) -> dict[str, str]:
    return {c["type"]: c for c in kube.experiment()["status"]["conditions"]}[ctype]


def test_children_carry_the_run_id_scheme() -> None:
    kube, rec = make()
    kube.apply(manifest())
    rec.reconcile("ns", "mix-a")
    for child in (*kube.jobs(), *kube.configmaps()):
        assert child["metadata"]["labels"][LABEL_RUN_ID_SCHEME] == RUN_ID_SCHEME


def test_a_running_runs_configmap_deleted_by_hand_is_created_again_identical() -> None:
    kube, rec = make()
    kube.apply(manifest())
    rec.reconcile("ns", "mix-a")
    (job,), (cm,) = kube.jobs(), kube.configmaps()
    kube.set_job_conditions(job["metadata"]["name"], "Created", "Running")
    rec.on_job("ns", kube.jobs()[0])
    kube.delete_configmap("ns", cm["metadata"]["name"])
    rec.on_configmap("ns", cm, deleted=True)
    (again,) = kube.configmaps()
    assert again["data"] == cm["data"]
    assert again["immutable"] is True
    assert again["metadata"]["labels"] == cm["metadata"]["labels"]
    assert again["metadata"]["ownerReferences"] == cm["metadata"]["ownerReferences"]
    assert reasons(kube).count("ConfigMapRecreated") == 1
    assert kube.jobs() == [kube.jobs()[0]], "the job is kept"
    assert kube.jobs()[0]["metadata"]["uid"] == job["metadata"]["uid"]


def test_a_finished_runs_configmap_is_not_created_again() -> None:
    kube, rec = make()
    kube.apply(manifest())
    rec.reconcile("ns", "mix-a")
    (job,), (cm,) = kube.jobs(), kube.configmaps()
    name = job["metadata"]["name"]
    kube.add_master_pod(name, message=result_message(job["metadata"]["labels"]["datamix.io/run"]))
    kube.set_job_conditions(name, "Created", "Succeeded")
    rec.on_job("ns", kube.jobs()[0])
    assert kube.experiment()["status"]["phase"] == "Succeeded"
    kube.delete_configmap("ns", cm["metadata"]["name"])
    rec.on_configmap("ns", cm, deleted=True)
    assert kube.configmaps() == []
    assert "ConfigMapRecreated" not in reasons(kube)


def test_the_configmap_of_a_retired_run_stays_deleted() -> None:
    kube, rec = make()
    kube.apply(manifest())
    rec.reconcile("ns", "mix-a")
    (old_cm,) = kube.configmaps()
    edited = manifest()
    edited["spec"]["datasets"]["mixture"][0]["weight"] = 9
    kube.apply(edited)
    rec.reconcile("ns", "mix-a")
    (new_cm,) = kube.configmaps()
    assert new_cm["metadata"]["name"] != old_cm["metadata"]["name"]
    rec.on_configmap("ns", old_cm, deleted=True)  # the echo of the operator's own retirement
    assert [c["metadata"]["name"] for c in kube.configmaps()] == [new_cm["metadata"]["name"]]


def test_a_configmap_of_another_owner_in_the_runs_name_stalls() -> None:
    kube, rec = make()
    kube.apply(manifest())
    rec.reconcile("ns", "mix-a")
    (cm,) = kube.configmaps()
    kube.delete_configmap("ns", cm["metadata"]["name"])
    impostor = copy.deepcopy(cm)
    impostor["metadata"]["ownerReferences"] = []
    impostor["data"] = {"run.json": "{}"}
    kube.create_configmap("ns", impostor)
    rec.on_configmap("ns", cm, deleted=True)
    stalled = condition(kube, "Stalled")
    assert stalled["status"] == "True"
    assert stalled["reason"] == "ChildConflict"
    assert "is not this experiment's" in stalled["message"]


def foreign_job(kube: FakeKube, scheme: str) -> dict:
    """A job of this experiment as another version's operator would have made it."""
    exp = kube.experiment()
    job = {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {
            "name": "mix-a-0123abcd",
            "labels": {"app.kubernetes.io/managed-by": "datamix-operator", "datamix.io/experiment": "mix-a",
                       "datamix.io/run": "0123abcd", LABEL_RUN_ID_SCHEME: scheme},
            "ownerReferences": [{"apiVersion": exp["apiVersion"], "kind": exp["kind"], "name": "mix-a",
                                 "uid": exp["metadata"]["uid"], "controller": True}],
        },
        "spec": {},
    }
    return kube.create_job("ns", job)


def test_a_job_of_an_unknown_run_id_scheme_is_left_alone_and_said_so() -> None:
    kube, rec = make()
    kube.apply(manifest())
    foreign = foreign_job(kube, scheme="2")
    rec.reconcile("ns", "mix-a", full=True)
    assert kube.jobs() == [foreign], "neither deleted nor joined by a second run"
    assert kube.configmaps() == []
    stalled = condition(kube, "Stalled")
    assert stalled["reason"] == "UnknownRunIdScheme"
    assert "mix-a-0123abcd" in stalled["message"]
    assert "'2'" in stalled["message"]
    assert [(e["type"], e["reason"]) for e in kube.events] == [("Warning", "UnknownRunIdScheme")]
    # Its deletion (by the user, or by the operator version that made it) lets this one start.
    kube.delete_job("ns", foreign["metadata"]["name"])
    rec.on_job("ns", foreign, deleted=True)
    (job,) = kube.jobs()
    assert job["metadata"]["labels"][LABEL_RUN_ID_SCHEME] == RUN_ID_SCHEME
    assert condition(kube, "Stalled")["status"] == "False"


def test_an_unlabelled_job_is_of_this_scheme() -> None:
    """Children made before the label existed: same recipe (tests/api pins the ids), so ours."""
    kube, rec = make()
    kube.apply(manifest())
    rec.reconcile("ns", "mix-a")
    (job,) = kube.jobs()
    del kube.objects[("job", "ns", job["metadata"]["name"])]["metadata"]["labels"][LABEL_RUN_ID_SCHEME]
    rec.reconcile("ns", "mix-a", full=True)
    assert [j["metadata"]["uid"] for j in kube.jobs()] == [job["metadata"]["uid"]]
    assert condition(kube, "Stalled")["status"] == "False"
