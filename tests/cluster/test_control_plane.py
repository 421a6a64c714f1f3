"""The local control plane against itself: real API server, scheduler, garbage collector,
training-operator, with kwok-faked GPU nodes and pod lifecycles (tools/cluster)."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from testsupport.clusterlib import (
    A100,
    H100,
    add_fake_nodes,
    create_pytorchjob,
    delete_fake_nodes,
    get_pytorchjob,
    job_condition,
    job_pods,
    pytorchjob_manifest,
    unique_name,
    wait_for,
)

pytestmark = pytest.mark.cluster


def _gpu_product(core: client.CoreV1Api, node_name: str) -> str | None:
    return (core.read_node(node_name).metadata.labels or {}).get("nvidia.com/gpu.product")


def _scheduled_pods(core: client.CoreV1Api, ns: str, job: str, n: int) -> list[Any] | None:
    pods = job_pods(core.api_client, ns, job)
    if len(pods) == n and all(p.spec.node_name for p in pods):
        return pods
    return None


def _pod_scheduled_condition(pod: Any) -> Any:
    for c in pod.status.conditions or []:
        if c.type == "PodScheduled":
            return c
    return None


def _container(pod: Any, name: str = "pytorch") -> Any:
    for s in pod.status.container_statuses or []:
        if s.name == name:
            return s
    return None


def test_fake_gpu_pool(k8s_client: Any) -> None:
    core = client.CoreV1Api(k8s_client)
    # the default pool only: e2e tests add private pools (labelled datamix.io/e2e-pool) to a shared cluster
    nodes = {n.metadata.name: n for n in core.list_node(
        label_selector="datamix.io/fake-node=true,!datamix.io/e2e-pool").items}
    by_product: dict[str | None, list[Any]] = {}
    for n in nodes.values():
        by_product.setdefault(n.metadata.labels.get("nvidia.com/gpu.product"), []).append(n)
    counts = {product: len(found) for product, found in by_product.items()}
    assert counts.get(H100, 0) >= 2, counts
    assert counts.get(A100, 0) >= 2, counts
    assert counts.get(None, 0) >= 1, counts
    for n in by_product[H100]:
        assert n.metadata.labels["nvidia.com/gpu.memory"] == "81559"
        assert n.metadata.labels["nvidia.com/gpu.count"] == "8"
        assert n.status.allocatable["nvidia.com/gpu"] == "8"
        assert n.metadata.annotations["kwok.x-k8s.io/node"] == "fake"
        assert [(t.key, t.value, t.effect) for t in n.spec.taints] == [("nvidia.com/gpu", "present", "NoSchedule")]
        assert ("Ready", "True") in [(c.type, c.status) for c in n.status.conditions], n.metadata.name
    for n in by_product[A100]:
        assert n.metadata.labels["nvidia.com/gpu.memory"] == "40960"
    assert not by_product[None][0].spec.taints


def test_pytorchjob_scheduled_on_h100_runs_and_succeeds(k8s_client: Any, namespace: str) -> None:
    core = client.CoreV1Api(k8s_client)
    message = json.dumps({"run": "dmx-0001", "final_loss": 2.345, "tokens": 1_000_000})
    create_pytorchjob(k8s_client, namespace,
                      pytorchjob_manifest("h100-job", gpus=8, product=H100, duration="8s", message=message))

    pods = wait_for(lambda: _scheduled_pods(core, namespace, "h100-job", 2), 60,
                    description="master and worker pods scheduled")
    assert sorted(p.metadata.name for p in pods) == ["h100-job-master-0", "h100-job-worker-0"]
    assert {_gpu_product(core, p.spec.node_name) for p in pods} == {H100}
    # 8 GPUs each on 8-GPU nodes: the scheduler must have used both H100 nodes.
    assert len({p.spec.node_name for p in pods}) == 2

    running = wait_for(lambda: job_condition(get_pytorchjob(k8s_client, namespace, "h100-job"), "Running"), 60,
                       description="PyTorchJob Running")
    assert running["reason"] == "PyTorchJobRunning"
    master = core.read_namespaced_pod("h100-job-master-0", namespace)
    assert master.status.phase == "Running"
    assert master.status.pod_ip, "kwok gave the pod an IP"
    env = {e.name: e.value for e in master.spec.containers[0].env or []}
    assert env["MASTER_ADDR"] == "h100-job-master-0"
    assert env["RANK"] == "0"
    assert "WORLD_SIZE" in env, env

    done = wait_for(lambda: job_condition(get_pytorchjob(k8s_client, namespace, "h100-job"), "Succeeded"), 90,
                    description="PyTorchJob Succeeded")
    assert done["reason"] == "PyTorchJobSucceeded"
    master = core.read_namespaced_pod("h100-job-master-0", namespace)
    assert master.status.phase == "Succeeded"
    term = _container(master).state.terminated
    assert term.exit_code == 0
    assert term.message == message
    # The kwok stage held the pod Running for the annotated 8s.
    assert term.finished_at - master.status.start_time >= timedelta(seconds=7)


def test_too_many_gpus_stays_pending_insufficient(k8s_client: Any, namespace: str) -> None:
    create_pytorchjob(k8s_client, namespace, pytorchjob_manifest("greedy", gpus=16, product=H100))

    def unschedulable() -> list[Any] | None:
        pods = job_pods(k8s_client, namespace, "greedy")
        conds = [_pod_scheduled_condition(p) for p in pods]
        if len(pods) == 2 and all(c is not None and c.status == "False" for c in conds):
            return conds
        return None

    conds = wait_for(unschedulable, 60, description="pods marked unschedulable")
    for c in conds:
        assert c.reason == "Unschedulable"
        assert "Insufficient nvidia.com/gpu" in c.message
    for p in job_pods(k8s_client, namespace, "greedy"):
        assert p.status.phase == "Pending"
        assert not p.spec.node_name, f"{p.metadata.name} bound to {p.spec.node_name}"
    assert job_condition(get_pytorchjob(k8s_client, namespace, "greedy"), "Running") is None


def test_absent_gpu_product_stays_pending(k8s_client: Any, namespace: str) -> None:
    create_pytorchjob(k8s_client, namespace, pytorchjob_manifest("nob200", gpus=8, product="NVIDIA-B200"))

    def unschedulable() -> list[Any] | None:
        pods = job_pods(k8s_client, namespace, "nob200")
        conds = [_pod_scheduled_condition(p) for p in pods]
        if len(pods) == 2 and all(c is not None and c.status == "False" for c in conds):
            return conds
        return None

    for c in wait_for(unschedulable, 60, description="pods marked unschedulable"):
        assert c.reason == "Unschedulable"
        assert "didn't match Pod's node affinity/selector" in c.message
    assert job_condition(get_pytorchjob(k8s_client, namespace, "nob200"), "Running") is None


def test_failing_pod_on_failure_restarts(k8s_client: Any, namespace: str) -> None:
    create_pytorchjob(k8s_client, namespace,
                      pytorchjob_manifest("flaky", restart_policy="OnFailure", duration="2s",
                                          exit_code=1, message="CUDA error: device-side assert"))
    cond = wait_for(lambda: job_condition(get_pytorchjob(k8s_client, namespace, "flaky"), "Restarting"), 90,
                    description="PyTorchJob Restarting")
    assert cond["reason"] == "PyTorchJobRestarting"
    job = get_pytorchjob(k8s_client, namespace, "flaky")
    assert job_condition(job, "Failed") is None


def test_failing_pod_never_fails_job_with_exit_code(k8s_client: Any, namespace: str) -> None:
    core = client.CoreV1Api(k8s_client)
    create_pytorchjob(k8s_client, namespace,
                      pytorchjob_manifest("doomed", restart_policy="Never", duration="2s", exit_code=137,
                                          message="killed"))
    cond = wait_for(lambda: job_condition(get_pytorchjob(k8s_client, namespace, "doomed"), "Failed"), 90,
                    description="PyTorchJob Failed")
    assert cond["reason"] == "PyTorchJobFailed"
    master = core.read_namespaced_pod("doomed-master-0", namespace)
    assert master.status.phase == "Failed"
    assert master.spec.restart_policy == "Never"
    term = _container(master).state.terminated
    assert term.exit_code == 137
    assert term.reason == "Error"
    assert term.message == "killed"
    job = get_pytorchjob(k8s_client, namespace, "doomed")
    assert job["status"]["replicaStatuses"]["Master"]["failed"] == 1
    assert job["status"].get("completionTime")
    events = core.list_namespaced_event(namespace, field_selector="involvedObject.name=doomed").items
    assert any("exited with code 137" in (e.message or "") for e in events)


def test_deleting_owner_garbage_collects_job_and_pods(k8s_client: Any, namespace: str) -> None:
    core = client.CoreV1Api(k8s_client)
    owner = core.create_namespaced_config_map(
        namespace, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "experiment"}})
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "experiment", "uid": owner.metadata.uid,
           "blockOwnerDeletion": True}
    create_pytorchjob(k8s_client, namespace, pytorchjob_manifest("owned", duration="600s", owner=ref))
    wait_for(lambda: _scheduled_pods(core, namespace, "owned", 2), 60, description="owned job pods scheduled")
    wait_for(lambda: all(p.status.phase == "Running" for p in job_pods(k8s_client, namespace, "owned")), 60,
             description="owned job pods Running")

    core.delete_namespaced_config_map("experiment", namespace)

    def job_gone() -> bool:
        try:
            get_pytorchjob(k8s_client, namespace, "owned")
        except ApiException as e:
            return e.status == 404
        return False

    wait_for(job_gone, 60, description="PyTorchJob garbage-collected")
    wait_for(lambda: not job_pods(k8s_client, namespace, "owned"), 60, description="job pods garbage-collected")


def test_add_fake_nodes_extends_the_pool(k8s_client: Any, namespace: str) -> None:
    core = client.CoreV1Api(k8s_client)
    product = "NVIDIA-B200"
    names = add_fake_nodes(k8s_client, 1, product, 183359, 8, unique_name("b200"))
    try:
        node = core.read_node(names[0])
        assert node.metadata.labels["nvidia.com/gpu.product"] == product
        assert node.status.allocatable["nvidia.com/gpu"] == "8"
        create_pytorchjob(k8s_client, namespace,
                          pytorchjob_manifest("on-b200", gpus=4, product=product, duration="600s"))
        pods = wait_for(lambda: _scheduled_pods(core, namespace, "on-b200", 2), 60,
                        description="pods scheduled on the added node")
        assert {p.spec.node_name for p in pods} == {names[0]}  # 4 + 4 GPUs fit one 8-GPU node
        client.CustomObjectsApi(k8s_client).delete_namespaced_custom_object(
            "kubeflow.org", "v1", namespace, "pytorchjobs", "on-b200")
        wait_for(lambda: not job_pods(k8s_client, namespace, "on-b200"), 60, description="pods deleted")
    finally:
        delete_fake_nodes(k8s_client, names)
