"""How ClientKube parses what it reads: the parts the operator never reads are dropped while
the JSON is parsed (a LIST of a thousand jobs never holds their pod templates all at once)."""

from __future__ import annotations

import json

from datamix_operator.kube import without_managed_fields, without_replica_specs

MANAGED = [{"manager": "kubectl", "operation": "Update", "fieldsV1": {"f:spec": {"f:x": {}}}}]


def job(name: str) -> dict[str, object]:
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": name, "uid": f"uid-{name}", "labels": {"a": "b"}, "managedFields": MANAGED,
                     "annotations": {"pytorchReplicaSpecs": "a tenant's", "managedFields": "kept"}},
        "spec": {
            "runPolicy": {"suspend": True, "cleanPodPolicy": "None"},
            "pytorchReplicaSpecs": {"Master": {"replicas": 1, "template": {"spec": {"containers": [{"name": "c"}]}}}},
        },
        "status": {"conditions": [{"type": "Created", "status": "True"}]},
    }


def test_a_job_list_keeps_metadata_run_policy_and_status_only() -> None:
    raw = json.dumps({"kind": "PyTorchJobList", "metadata": {"resourceVersion": "7"}, "items": [job("a"), job("b")]})
    items = json.loads(raw, object_hook=without_replica_specs)["items"]
    assert [i["metadata"]["name"] for i in items] == ["a", "b"]
    for item in items:
        assert "managedFields" not in item["metadata"]
        assert item["metadata"]["labels"] == {"a": "b"}
        assert item["metadata"]["annotations"] == {"pytorchReplicaSpecs": "a tenant's", "managedFields": "kept"}
        assert item["spec"] == {"runPolicy": {"suspend": True, "cleanPodPolicy": "None"}}
        assert item["status"]["conditions"][0]["type"] == "Created"


def test_a_job_without_a_run_policy_keeps_an_empty_spec() -> None:
    body = job("a")
    del body["spec"]["runPolicy"]  # type: ignore[attr-defined]
    assert json.loads(json.dumps(body), object_hook=without_replica_specs)["spec"] == {}


def test_an_experiment_loses_managed_fields_only() -> None:
    exp = {"metadata": {"name": "e", "uid": "u", "managedFields": MANAGED, "labels": {"managedFields": "x"}},
           "spec": {"datasets": {"mixture": [{"name": "a"}]},
                    "podTemplate": {"metadata": {"annotations": {"managedFields": "a tenant's"}}}},
           "status": {"phase": "Running"}}
    parsed = json.loads(json.dumps(exp), object_hook=without_managed_fields)
    del exp["metadata"]["managedFields"]  # type: ignore[attr-defined]
    assert parsed == exp
