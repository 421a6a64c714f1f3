"""A missing PyTorchJob CRD: Stalled/PyTorchJobCRDMissing, retried slowly, no crash loop; the
operator carries on once the CRD appears.

The shared `pytorchjobs.kubeflow.org` CRD is never touched (deleting it would delete every
PyTorchJob of every test on the cluster and upset the training-operator): the operator is pointed
with `--pytorchjob-api` at a group of this test's own that does not exist, which is exactly what
a cluster without the training-operator looks like to it. The test then creates a CRD for that
group and removes it at the end.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import pytest

from testsupport.clusterlib import wait_for
from testsupport.experiments import (
    capture,
    condition,
    custom,
    e2e_manifest,
    get_experiment,
    kubectl_apply,
    wait_condition,
)

pytestmark = pytest.mark.cluster


def job_crd(group: str) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"pytorchjobs.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"kind": "PyTorchJob", "plural": "pytorchjobs", "singular": "pytorchjob",
                      "listKind": "PyTorchJobList"},
            "versions": [{"name": "v1", "served": True, "storage": True, "subresources": {"status": {}},
                          "schema": {"openAPIV3Schema": {"type": "object",
                                                         "x-kubernetes-preserve-unknown-fields": True}}}],
        },
    }


def test_missing_pytorchjob_crd_stalls_without_a_crash_loop_and_recovers(
    cluster: Any, k8s_client: Any, namespace: str, start_operator: Any
) -> None:
    group = f"e2e{uuid.uuid4().hex[:8]}.datamix.io"
    op = start_operator([namespace], extra_args=["--pytorchjob-api", f"{group}/v1", "--crd-retry-seconds", "2"])
    kubectl_apply(cluster, namespace, e2e_manifest("no-crd", duration="300s"))
    exp = wait_condition(k8s_client, namespace, "no-crd", "Stalled", "PyTorchJobCRDMissing", op=op)
    capture("stalled-crd-missing", exp)
    stalled = condition(exp, "Stalled")
    assert f"pytorchjobs.{group}/v1" in stalled["message"], stalled
    assert "training-operator" in stalled["message"], stalled
    assert exp["status"]["phase"] == "Pending"
    rv = exp["metadata"]["resourceVersion"]
    # retried every 2s (--crd-retry-seconds) without crashing and without rewriting the status
    reconciles = _count(op.metrics(), "datamix_operator_reconcile_duration_seconds_count")
    wait_for(lambda: _count(op.metrics(), "datamix_operator_reconcile_duration_seconds_count") >= reconciles + 2,
             30, description="slow retries")
    assert op.returncode is None
    assert _count(op.metrics(), "datamix_operator_reconcile_errors_total") == 0
    assert get_experiment(k8s_client, namespace, "no-crd")["metadata"]["resourceVersion"] == rv

    crd = job_crd(group)
    cluster.kubectl("create", "-f", "-", input=json.dumps(crd))
    try:
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{crd['metadata']['name']}", "--timeout=60s")

        def job_created() -> bool:
            items = custom(k8s_client).list_namespaced_custom_object(group, "v1", namespace, "pytorchjobs")["items"]
            exp = get_experiment(k8s_client, namespace, "no-crd")
            return len(items) == 1 and condition(exp, "Created").get("status") == "True"

        wait_for(job_created, 60, description="the job created once the CRD exists")
        exp = get_experiment(k8s_client, namespace, "no-crd")
        assert condition(exp, "Stalled")["status"] == "False"
    finally:
        cluster.kubectl("delete", "crd", crd["metadata"]["name"], "--wait=false", check=False)


def _count(metrics: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", metrics, re.M)
    return float(match.group(1)) if match else 0.0
