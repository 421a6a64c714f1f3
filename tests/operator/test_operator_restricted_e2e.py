"""The operator's whole lifecycle in a namespace that enforces Pod Security `restricted`.

The real API server's Pod Security admission refuses a non-compliant pod when the
training-operator creates it: a rendered pod that regresses (root, a capability, a hostPath, a
missing seccomp profile) leaves the job without pods and this test fails at its first wait.
"""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from datamix import GROUP
from testsupport.clusterlib import wait_for
from testsupport.experiments import (
    condition,
    e2e_manifest,
    kubectl_apply,
    lifecycle_scenario,
    list_configmaps,
    list_jobs,
    list_pods,
    run_name_of,
    wait_phase,
)

pytestmark = pytest.mark.cluster


# A data volume restricted pods may mount: a claim (bound by the cluster to a volume its admin made).
DATA = {"persistentVolumeClaim": {"claimName": "corpus", "readOnly": True}}


@pytest.fixture
def restricted(cluster: Any, k8s_client: Any, namespace: str) -> Any:
    cluster.kubectl(
        "label", "namespace", namespace, "--overwrite",
        "pod-security.kubernetes.io/enforce=restricted", "pod-security.kubernetes.io/enforce-version=latest",
    )
    core = client.CoreV1Api(k8s_client)
    pv = f"corpus-{namespace}"[:63]
    core.create_persistent_volume({
        "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadOnlyMany"], "storageClassName": "manual",
                 "hostPath": {"path": "/var/lib/datamix/data"},
                 "claimRef": {"namespace": namespace, "name": "corpus"}},
    })
    core.create_namespaced_persistent_volume_claim(namespace, {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "corpus"},
        "spec": {"accessModes": ["ReadOnlyMany"], "storageClassName": "manual", "volumeName": pv,
                 "resources": {"requests": {"storage": "1Gi"}}},
    })
    wait_for(lambda: core.read_namespaced_persistent_volume_claim(
        "corpus", namespace).status.phase == "Bound", 60, description="the data claim bound")
    yield namespace
    core.delete_persistent_volume(pv)


def test_pod_security_admission_is_enforcing_in_the_namespace(k8s_client: Any, restricted: str) -> None:
    """The guard of the test below: a pod with no security context is refused here."""
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "plain"},
           "spec": {"containers": [{"name": "c", "image": "busybox"}]}}
    with pytest.raises(ApiException) as refused:
        client.CoreV1Api(k8s_client).create_namespaced_pod(restricted, pod)
    assert refused.value.status == 403
    assert "restricted" in str(refused.value.body)


def test_create_run_succeed_edit_suspend_resume_delete_under_restricted(
    cluster: Any, k8s_client: Any, restricted: str, gpu_pool: str, start_operator: Any
) -> None:
    ns = restricted
    op = start_operator([ns])
    # create, run, succeed (with the run result in the status)
    lifecycle_scenario(k8s_client, cluster, ns, pool=gpu_pool, op=op, data_volume=DATA)

    # edit: a new run whose pods are admitted too
    first = e2e_manifest("restricted", pool=gpu_pool, duration="300s", data_volume=DATA)
    kubectl_apply(cluster, ns, first)
    wait_phase(k8s_client, ns, "restricted", "Running", op=op)
    edited = e2e_manifest("restricted", pool=gpu_pool, duration="300s", weights=(1.0, 3.0), data_volume=DATA)
    job = run_name_of(edited, ns)
    kubectl_apply(cluster, ns, edited)
    wait_for(lambda: [j["metadata"]["name"] for j in list_jobs(k8s_client, ns, "restricted")] == [job], 60,
             description="only the edited run's job")
    wait_phase(k8s_client, ns, "restricted", "Running", op=op)

    def pods() -> list[Any]:
        return list_pods(k8s_client, ns, f"training.kubeflow.org/job-name={job}")

    wait_for(lambda: len(pods()) == 1, 60, description="the edited run's pod admitted")

    # suspend, resume
    edited["spec"]["suspend"] = True
    kubectl_apply(cluster, ns, edited)
    exp = wait_phase(k8s_client, ns, "restricted", "Suspended", op=op)
    assert condition(exp, "Suspended")["status"] == "True"
    wait_for(lambda: not pods(), 60, description="pods removed while suspended")
    edited["spec"]["suspend"] = False
    kubectl_apply(cluster, ns, edited)
    wait_phase(k8s_client, ns, "restricted", "Running", op=op)
    wait_for(lambda: len(pods()) == 1, 60, description="the pod admitted again on resume")

    # delete: everything the experiment owns goes
    cluster.kubectl("delete", "dmx", "restricted", "-n", ns, "--wait=true", "--timeout=60s")

    def children() -> list[Any]:
        return [*list_jobs(k8s_client, ns, "restricted"), *list_configmaps(k8s_client, ns, "restricted"),
                *list_pods(k8s_client, ns, f"{GROUP}/experiment=restricted")]

    wait_for(lambda: not children(), 90, description="ConfigMap, PyTorchJob and pods garbage-collected")
