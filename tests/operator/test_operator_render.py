"""render_pytorchjob / render_children: the objects the operator creates, offline."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
import yaml
from datamix_operator.render import (
    quantity_mib,
    render_children,
    render_pytorchjob,
)
from operator_fakes import manifest

from datamix.errors import UserError
from datamix.experiment import plan_run, run_id
from datamix.runspec import METRICS_PORT, RUN_SPEC_MOUNT_DIR, RUN_SPEC_PATH, TRAINER_COMMAND, TRAINER_UID, RunSpec


def job_of(m: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return render_pytorchjob(plan_run(m, "ns"), trainer_image_default="trainer:test", **kw)


def template(job: dict[str, Any], replica: str = "Master") -> dict[str, Any]:
    return job["spec"]["pytorchReplicaSpecs"][replica]["template"]  # type: ignore[no-any-return]


def test_children_are_configmap_then_job_with_the_same_deterministic_name() -> None:
    cm, job = render_children(manifest(), "ns", trainer_image_default="trainer:test")
    assert [cm["kind"], job["kind"]] == ["ConfigMap", "PyTorchJob"]
    assert job["apiVersion"] == "kubeflow.org/v1"
    rid = run_id(manifest())
    assert cm["metadata"]["name"] == job["metadata"]["name"] == f"mix-a-{rid}"
    assert cm["metadata"]["labels"] == job["metadata"]["labels"] == {
        "app.kubernetes.io/managed-by": "datamix-operator",
        "app.kubernetes.io/part-of": "datamix",
        "datamix.io/experiment": "mix-a",
        "datamix.io/run": rid,
        "datamix.io/run-id-scheme": "1",
    }
    spec = RunSpec.from_json(cm["data"]["runspec.json"])
    assert spec.run == rid and spec.namespace == "ns" and spec.procs_per_node == 8


def test_integral_floats_render_like_the_api_server_returns_them() -> None:
    """The API server returns `weight: 2.0` as 2: the file and the cluster give the same run."""
    as_file = manifest()
    as_server = manifest()
    as_server["spec"]["datasets"]["mixture"][0]["weight"] = 2
    assert render_children(as_file, "ns") == render_children(as_server, "ns")


def test_master_and_workers() -> None:
    job = job_of(manifest())
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] == 1 and replicas["Worker"]["replicas"] == 1
    assert {r["restartPolicy"] for r in replicas.values()} == {"ExitCode"}
    assert job["spec"]["nprocPerNode"] == "8"
    assert template(job, "Master") == template(job, "Worker")
    single = job_of(manifest(resources={"nodes": 1, "gpusPerNode": 4}))
    assert "Worker" not in single["spec"]["pytorchReplicaSpecs"]
    assert single["spec"]["nprocPerNode"] == "4"


def test_cpu_run_has_one_process_per_node_no_gpu_limit_and_no_gpu_toleration() -> None:
    job = job_of(manifest(resources={"nodes": 1, "gpusPerNode": 0}))
    assert job["spec"]["nprocPerNode"] == "1"
    pod = template(job)["spec"]
    assert "nvidia.com/gpu" not in json.dumps(pod)
    assert "affinity" not in pod and "tolerations" not in pod


def test_container() -> None:
    m = manifest(env=[
        {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}},
        {"name": "MODE", "value": "fast"},
        {"name": "DATAMIX_RUN_SPEC", "value": "/elsewhere"},
    ])
    m["spec"]["resources"].update(cpu=8, memory="64Gi")
    (c,) = template(job_of(m))["spec"]["containers"]
    assert c["name"] == "pytorch" and c["image"] == "trainer:test"
    assert c["command"] == list(TRAINER_COMMAND)
    assert c["env"] == [
        {"name": "DATAMIX_RUN_SPEC", "value": RUN_SPEC_PATH},
        {"name": "HOME", "value": "/tmp"},
        {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}},
        {"name": "MODE", "value": "fast"},
    ]
    assert c["ports"] == [{"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}]
    assert c["resources"] == {"requests": {"cpu": "8", "memory": "64Gi"},
                              "limits": {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": "8"}}
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    mounts = {v["name"]: v for v in c["volumeMounts"]}
    assert mounts["run-spec"] == {"name": "run-spec", "mountPath": RUN_SPEC_MOUNT_DIR, "readOnly": True}
    assert mounts["data"] == {"name": "data", "mountPath": "/data", "readOnly": True}
    assert mounts["output"]["mountPath"] == "/output" and "readOnly" not in mounts["output"]
    assert mounts["dshm"]["mountPath"] == "/dev/shm"
    assert job_of(manifest(image="my/trainer:1"))["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"][
        "containers"][0]["image"] == "my/trainer:1"


def test_volumes() -> None:
    m = manifest(output={"volume": {"nfs": {"server": "nfs.example", "path": "/exports"}}, "path": "/out"})
    pod = template(job_of(m))["spec"]
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["run-spec"]["configMap"]["name"] == job_of(m)["metadata"]["name"]
    assert vols["data"]["persistentVolumeClaim"] == {"claimName": "corpus", "readOnly": True}
    assert vols["output"]["nfs"] == {"server": "nfs.example", "path": "/exports", "readOnly": False}
    assert vols["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "8Gi"}
    assert vols["scratch"]["emptyDir"] == {"sizeLimit": "20Gi"}
    assert {"name": "output", "mountPath": "/out"} in pod["containers"][0]["volumeMounts"]
    # no output volume: an emptyDir (the result still reaches the status via the termination message)
    assert {v["name"]: v for v in template(job_of(manifest()))["spec"]["volumes"]}["output"] == {
        "name": "output", "emptyDir": {"sizeLimit": "20Gi"}}


def test_pods_meet_pod_security_restricted() -> None:
    """The checks of Pod Security `restricted` (v1.36) that a rendered pod could fail."""
    pod = template(job_of(manifest()))["spec"]
    (c,) = pod["containers"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    for volume in pod["volumes"]:
        assert "hostPath" not in volume, volume["name"]
        if "emptyDir" in volume:
            assert "sizeLimit" in volume["emptyDir"], volume["name"]


def test_tenant_sets_groups_and_sizes_but_not_the_user() -> None:
    m = manifest()
    m["spec"]["podTemplate"] = {"securityContext": {"fsGroup": 2000, "supplementalGroups": [3000, 3001]}}
    m["spec"]["resources"].update(sharedMemorySize="16Gi", scratchSize="500Mi")
    pod = template(job_of(m))["spec"]
    assert pod["securityContext"]["fsGroup"] == 2000
    assert pod["securityContext"]["supplementalGroups"] == [3000, 3001]
    assert pod["securityContext"]["runAsUser"] == TRAINER_UID
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["dshm"]["emptyDir"]["sizeLimit"] == "16Gi"
    assert vols["scratch"]["emptyDir"]["sizeLimit"] == "500Mi"


def test_grace_period_for_a_sigterm_checkpoint() -> None:
    assert template(job_of(manifest()))["spec"]["terminationGracePeriodSeconds"] == 900
    m = manifest()
    m["spec"]["terminationGracePeriodSeconds"] = 120
    assert template(job_of(m))["spec"]["terminationGracePeriodSeconds"] == 120


def test_a_tenant_home_is_kept() -> None:
    (c,) = template(job_of(manifest(env=[{"name": "HOME", "value": "/output/home"}])))["spec"]["containers"]
    assert [e["value"] for e in c["env"] if e["name"] == "HOME"] == ["/output/home"]


@pytest.mark.parametrize(
    ("quantity", "mib"),
    [("80Gi", 81920), ("80G", 76294), ("81559Mi", 81559), ("40Gi", 40960), (1048576, 1), ("1.5Gi", 1536)],
)
def test_quantity_mib(quantity: Any, mib: int) -> None:
    assert quantity_mib(quantity) == mib


def test_bad_quantity() -> None:
    with pytest.raises(UserError):
        quantity_mib("lots")


def test_gpu_affinity_products_in_and_memory_gt_so_equal_memory_passes() -> None:
    m = manifest()
    m["spec"]["resources"]["gpu"] = {"products": ["NVIDIA-H100-80GB-HBM3", "NVIDIA-H200"], "minMemory": "81559Mi"}
    (term,) = template(job_of(m))["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert term["matchExpressions"] == [
        {"key": "nvidia.com/gpu.product", "operator": "In", "values": ["NVIDIA-H100-80GB-HBM3", "NVIDIA-H200"]},
        {"key": "nvidia.com/gpu.memory", "operator": "Gt", "values": ["81558"]},
    ]


def test_scheduling_fields() -> None:
    m = manifest()
    m["spec"]["resources"].update(
        nodeSelector={"pool": "a"}, priorityClassName="high",
        tolerations=[{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
    )
    m["spec"]["imagePullSecrets"] = [{"name": "regcred"}]
    pod = template(job_of(m))["spec"]
    assert pod["nodeSelector"] == {"pool": "a"}
    assert pod["priorityClassName"] == "high"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["tolerations"] == [
        {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"},
        {"key": "nvidia.com/gpu", "operator": "Exists"},
    ]


def test_pod_labels_and_annotations_user_cannot_override_project_labels() -> None:
    m = manifest(podTemplate={"metadata": {
        "labels": {"team": "ml", "datamix.io/run": "hijack", "app.kubernetes.io/instance": "argo-app"},
        "annotations": {"datamix.io/fake-duration": "5s"},
    }})
    meta = template(job_of(m))["metadata"]
    assert meta["labels"]["team"] == "ml"
    assert meta["labels"]["datamix.io/run"] == job_of(m)["metadata"]["labels"]["datamix.io/run"]
    assert meta["annotations"] == {"datamix.io/fake-duration": "5s"}
    # pod labels never reach the job's own labels (Argo CD's tracking label would make it prune the job)
    assert "app.kubernetes.io/instance" not in job_of(m)["metadata"]["labels"]


def test_experiment_labels_are_not_copied_to_children() -> None:
    m = manifest()
    m["metadata"]["labels"] = {"app.kubernetes.io/instance": "argo-app"}
    for child in render_children(m, "ns"):
        assert "app.kubernetes.io/instance" not in child["metadata"]["labels"]


def test_run_policy() -> None:
    job = job_of(manifest(activeDeadlineSeconds=3600))
    assert job["spec"]["runPolicy"] == {
        "cleanPodPolicy": "None", "backoffLimit": 3, "suspend": False, "activeDeadlineSeconds": 3600}
    assert job["metadata"]["annotations"] == {"datamix.io/suspend": "false"}
    suspended = job_of(manifest(suspend=True))
    assert suspended["spec"]["runPolicy"]["suspend"] is True
    assert suspended["metadata"]["annotations"] == {"datamix.io/suspend": "true"}
    assert suspended["metadata"]["name"] == job["metadata"]["name"], "suspend does not define the run"


def test_kueue_queue_label_and_created_suspended() -> None:
    m = manifest()
    m["spec"]["resources"]["queueName"] = "team-a"
    job = job_of(m)
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert job["spec"]["runPolicy"]["suspend"] is True, "Kueue admits the job by unsuspending it"
    assert job["metadata"]["annotations"] == {"datamix.io/suspend": "false"}, "the user did not suspend"


def test_owner_reference_when_the_experiment_has_a_uid() -> None:
    m = manifest()
    m["metadata"].update(uid="1234", namespace="ns")
    for child in render_children(m):
        assert child["metadata"]["namespace"] == "ns"
        assert child["metadata"]["ownerReferences"] == [{
            "apiVersion": "datamix.io/v1alpha1", "kind": "DataMixtureExperiment", "name": "mix-a", "uid": "1234",
            "controller": True, "blockOwnerDeletion": True}]


def test_run_defining_change_gives_new_names_other_changes_do_not() -> None:
    base = job_of(manifest())["metadata"]["name"]
    m = manifest()
    m["spec"]["datasets"]["mixture"][1]["weight"] = 3
    assert job_of(m)["metadata"]["name"] != base
    assert job_of(manifest(env=[{"name": "A", "value": "b"}]))["metadata"]["name"] == base


def test_unknown_override_is_a_user_error() -> None:
    with pytest.raises(UserError, match="numLayerz"):
        render_children(manifest(model={"preset": "tiny", "overrides": {"numLayerz": 4}}), "ns")


def test_datamix_render_prints_configmap_and_job(tmp_path: Any) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(manifest()))
    out = subprocess.run([sys.executable, "-m", "datamix_cli", "render", str(path), "-n", "ns"],
                         capture_output=True, text=True, check=True).stdout
    docs = list(yaml.safe_load_all(out))
    assert docs == render_children(manifest(), "ns")
