"""The objects the operator creates for an experiment's current run, as plain dicts.

Pure functions (no kopf, no API calls): `datamix render` prints exactly these, and the
reconciler creates exactly these. The training backend (a Kubeflow PyTorchJob, v1) is rendered
here and only here, so a second backend (e.g. Trainer v2's TrainJob) is one more function.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from datamix.errors import UserError
from datamix.experiment import DEFAULT_BASE_DIR, DEFAULT_OUTPUT_PATH, RUN_ID_SCHEME, RunPlan, plan_run
from datamix.names import (
    ANNOTATION_SUSPEND,
    KUEUE_QUEUE_LABEL,
    LABEL_EXPERIMENT,
    LABEL_MANAGED_BY,
    LABEL_PART_OF,
    LABEL_RUN,
    LABEL_RUN_ID_SCHEME,
    MANAGED_BY,
    PART_OF,
    PYTORCHJOB_API_VERSION,
    PYTORCHJOB_CONTAINER,
    PYTORCHJOB_KIND,
)
from datamix.runspec import (
    DEFAULT_TERMINATION_GRACE_SECONDS,
    METRICS_PORT,
    METRICS_PORT_NAME,
    RUN_SPEC_ENV,
    RUN_SPEC_KEY,
    RUN_SPEC_MOUNT_DIR,
    RUN_SPEC_PATH,
    SCRATCH_MOUNT_PATH,
    SHM_MOUNT_PATH,
    TERMINATION_LOG_PATH,
    TRAINER_COMMAND,
    TRAINER_UID,
)
from datamix.schema import DEFAULT_SCRATCH_SIZE, DEFAULT_SHARED_MEMORY_SIZE

DEFAULT_TRAINER_IMAGE = os.environ.get("DATAMIX_TRAINER_IMAGE", "datamix-trainer:0.1.0")
GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_MEMORY_LABEL = "nvidia.com/gpu.memory"  # MiB, from GPU Feature Discovery
# The training-operator's ExitCode policy: exit codes 1-127 are the program's own errors and fail
# the job; 128+ (signals: OOM kill 137, preemption 143) are infrastructure and the pod is
# recreated, at most BACKOFF_LIMIT times.
RESTART_POLICY = "ExitCode"
BACKOFF_LIMIT = 3
# Pods stay after the job ends: the master's termination message carries the run result, read
# once by the operator; the whole job goes away with its run (retired) or its experiment.
CLEAN_POD_POLICY = "None"
OUTPUT_VOLUME = "output"
DATA_VOLUME = "data"
RUN_SPEC_VOLUME = "run-spec"
SHM_VOLUME = "dshm"
SCRATCH_VOLUME = "scratch"
RESERVED_ENV = frozenset({RUN_SPEC_ENV})

_SUFFIXES = {
    "": Decimal(1),
    "m": Decimal("0.001"),
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12,
    "P": Decimal(10) ** 15,
    "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50,
    "Ei": Decimal(2) ** 60,
}


def quantity_bytes(value: int | str) -> Decimal:
    """A Kubernetes quantity (`80Gi`, `40G`, `81559Mi`, 1024) as a number of bytes."""
    if isinstance(value, bool):
        raise UserError(f"{value!r} is not a quantity")
    if isinstance(value, int):
        return Decimal(value)
    text = str(value).strip()
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if suffix and text.endswith(suffix):
            number, factor = text[: -len(suffix)], _SUFFIXES[suffix]
            break
    else:
        number, factor = text, _SUFFIXES[""]
    try:
        amount = Decimal(number)
    except InvalidOperation as err:
        raise UserError(f"{value!r} is not a quantity (e.g. 40Gi, 80G)") from err
    if not amount.is_finite() or amount < 0:
        raise UserError(f"{value!r} is not a quantity (e.g. 40Gi, 80G)")
    return amount * factor


def quantity_mib(value: int | str) -> int:
    """A memory quantity in whole MiB, rounded up (the unit of `nvidia.com/gpu.memory`)."""
    return math.ceil(quantity_bytes(value) / _SUFFIXES["Mi"])


def child_labels(plan: RunPlan) -> dict[str, str]:
    """The project's own labels; never the parent's (Argo CD would prune children carrying its
    tracking label)."""
    return {
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_PART_OF: PART_OF,
        LABEL_EXPERIMENT: plan.owner.name,
        LABEL_RUN: plan.id,
        LABEL_RUN_ID_SCHEME: RUN_ID_SCHEME,
    }


def owner_references(plan: RunPlan) -> list[dict[str, Any]]:
    owner = plan.owner
    if not owner.uid:
        return []  # rendered offline: the API server has not assigned a uid yet
    return [
        {
            "apiVersion": owner.api_version,
            "kind": owner.kind,
            "name": owner.name,
            "uid": owner.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]


def child_metadata(plan: RunPlan) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": plan.name,
        "namespace": plan.namespace,
        "labels": child_labels(plan),
    }
    owners = owner_references(plan)
    if owners:
        meta["ownerReferences"] = owners
    return meta


def render_configmap(plan: RunPlan) -> dict[str, Any]:
    """The ConfigMap holding the run spec that every trainer process reads."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": child_metadata(plan),
        # A run's spec never changes (a change is a new run, a new name): the API server refuses
        # edits, and a deleted one is created again identical (the same plan renders it).
        "immutable": True,
        "data": {RUN_SPEC_KEY: plan.spec.to_json()},
    }


def _volume_source(volume: dict[str, Any], read_only: bool) -> dict[str, Any]:
    """A pod volume source from the spec's `{persistentVolumeClaim|nfs|hostPath}`."""
    if "persistentVolumeClaim" in volume:
        pvc = volume["persistentVolumeClaim"]
        return {
            "persistentVolumeClaim": {
                "claimName": pvc["claimName"],
                "readOnly": bool(read_only or pvc.get("readOnly", False)),
            }
        }
    if "nfs" in volume:
        nfs = volume["nfs"]
        return {
            "nfs": {
                "server": nfs["server"],
                "path": nfs["path"],
                "readOnly": bool(read_only or nfs.get("readOnly", False)),
            }
        }
    if "hostPath" in volume:
        return {"hostPath": {"path": volume["hostPath"]["path"]}}
    raise UserError("set exactly one of persistentVolumeClaim, nfs or hostPath")


def _node_affinity(resources: dict[str, Any]) -> dict[str, Any] | None:
    gpu = resources.get("gpu") or {}
    expressions: list[dict[str, Any]] = []
    if gpu.get("products"):
        expressions.append({"key": GPU_PRODUCT_LABEL, "operator": "In", "values": list(gpu["products"])})
    if gpu.get("minMemory") is not None:
        try:
            mib = quantity_mib(gpu["minMemory"])
        except UserError as err:
            raise UserError(f"spec.resources.gpu.minMemory: {err}") from err
        # `Gt` is strict: a node with exactly minMemory must pass.
        expressions.append({"key": GPU_MEMORY_LABEL, "operator": "Gt", "values": [str(mib - 1)]})
    if not expressions:
        return None
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": expressions}]}
        }
    }


def _container_resources(resources: dict[str, Any]) -> dict[str, Any]:
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    for key in ("cpu", "memory"):
        if resources.get(key) is not None:
            requests[key] = limits[key] = str(resources[key])
    gpus = int(resources.get("gpusPerNode", 0))
    if gpus > 0:
        limits[GPU_RESOURCE] = str(gpus)
    out: dict[str, Any] = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def _env(spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [{"name": RUN_SPEC_ENV, "value": RUN_SPEC_PATH}]
    if not any(item["name"] == "HOME" for item in spec.get("env") or []):
        env.append({"name": "HOME", "value": SCRATCH_MOUNT_PATH})  # the image's home is read-only
    for item in spec.get("env") or []:
        if item["name"] in RESERVED_ENV:
            continue  # the operator's own; a user value would point the trainer elsewhere
        var: dict[str, Any] = {"name": item["name"]}
        if "valueFrom" in item:
            var["valueFrom"] = copy.deepcopy(item["valueFrom"])
        else:
            var["value"] = str(item.get("value", ""))
        env.append(var)
    return env


def _pod_security_context(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Pod Security `restricted`: a fixed non-root user; the tenant chooses only groups."""
    groups = (spec.get("podTemplate") or {}).get("securityContext") or {}
    context: dict[str, Any] = {
        "runAsNonRoot": True,
        "runAsUser": TRAINER_UID,
        "runAsGroup": TRAINER_UID,
        "fsGroup": int(groups.get("fsGroup", TRAINER_UID)),
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    if groups.get("supplementalGroups"):
        context["supplementalGroups"] = [int(g) for g in groups["supplementalGroups"]]
    return context


def _pod_template(plan: RunPlan, *, trainer_image_default: str) -> dict[str, Any]:
    spec = plan.workload
    resources = spec["resources"]
    datasets = spec["datasets"]
    output = spec.get("output") or {}
    gpus = int(resources.get("gpusPerNode", 0))

    scratch_size = resources.get("scratchSize", DEFAULT_SCRATCH_SIZE)
    mounts: list[dict[str, Any]] = [
        {"name": RUN_SPEC_VOLUME, "mountPath": RUN_SPEC_MOUNT_DIR, "readOnly": True},
        {"name": OUTPUT_VOLUME, "mountPath": output.get("path", DEFAULT_OUTPUT_PATH)},
        {"name": SHM_VOLUME, "mountPath": SHM_MOUNT_PATH},
        {"name": SCRATCH_VOLUME, "mountPath": SCRATCH_MOUNT_PATH},
    ]
    volumes: list[dict[str, Any]] = [
        {"name": RUN_SPEC_VOLUME, "configMap": {"name": plan.name}},
        {
            "name": OUTPUT_VOLUME,
            **(
                _volume_source(output["volume"], read_only=False)
                if output.get("volume")
                else {"emptyDir": {"sizeLimit": scratch_size}}
            ),
        },
        # NCCL and the data loader workers share tensors through /dev/shm (64 MiB by default).
        {
            "name": SHM_VOLUME,
            "emptyDir": {
                "medium": "Memory",
                "sizeLimit": resources.get("sharedMemorySize", DEFAULT_SHARED_MEMORY_SIZE),
            },
        },
        {"name": SCRATCH_VOLUME, "emptyDir": {"sizeLimit": scratch_size}},
    ]
    if datasets.get("volume"):
        base_dir = datasets.get("baseDir", DEFAULT_BASE_DIR)
        mounts.insert(1, {"name": DATA_VOLUME, "mountPath": base_dir, "readOnly": True})
        volumes.insert(1, {"name": DATA_VOLUME, **_volume_source(datasets["volume"], read_only=True)})

    container: dict[str, Any] = {
        "name": PYTORCHJOB_CONTAINER,
        "image": spec.get("image") or trainer_image_default,
        "command": list(TRAINER_COMMAND),
        "env": _env(spec),
        "ports": [{"name": METRICS_PORT_NAME, "containerPort": METRICS_PORT, "protocol": "TCP"}],
        "resources": _container_resources(resources),
        "volumeMounts": mounts,
        "terminationMessagePath": TERMINATION_LOG_PATH,
        # The trainer writes its run result to the file; a trainer that dies first leaves its
        # last log lines instead, so the experiment's Failed message says why.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
        },
    }
    if not container["resources"]:
        del container["resources"]

    pod_spec: dict[str, Any] = {
        "containers": [container],
        "volumes": volumes,
        # The trainer needs no API access: no token for anyone who gets into the pod to use.
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": int(
            spec.get("terminationGracePeriodSeconds", DEFAULT_TERMINATION_GRACE_SECONDS)
        ),
        "securityContext": _pod_security_context(spec),
    }
    affinity = _node_affinity(resources)
    if affinity:
        pod_spec["affinity"] = affinity
    if resources.get("nodeSelector"):
        pod_spec["nodeSelector"] = dict(sorted(resources["nodeSelector"].items()))
    tolerations = [copy.deepcopy(t) for t in resources.get("tolerations") or []]
    if gpus > 0:
        # GPU pools usually carry this taint; tolerate every effect of it.
        tolerations.append({"key": GPU_RESOURCE, "operator": "Exists"})
    if tolerations:
        pod_spec["tolerations"] = tolerations
    if resources.get("priorityClassName"):
        pod_spec["priorityClassName"] = resources["priorityClassName"]
    if spec.get("imagePullSecrets"):
        pod_spec["imagePullSecrets"] = [{"name": s["name"]} for s in spec["imagePullSecrets"]]

    pod_meta = (spec.get("podTemplate") or {}).get("metadata") or {}
    # The project's labels win: a user label `datamix.io/run` would detach the pods from their run.
    labels = {**dict(sorted((pod_meta.get("labels") or {}).items())), **child_labels(plan)}
    metadata: dict[str, Any] = {"labels": labels}
    if pod_meta.get("annotations"):
        metadata["annotations"] = dict(sorted(pod_meta["annotations"].items()))
    return {"metadata": metadata, "spec": pod_spec}


def render_pytorchjob(plan: RunPlan, *, trainer_image_default: str = DEFAULT_TRAINER_IMAGE) -> dict[str, Any]:
    """The Kubeflow PyTorchJob of a run: Master 1 + Workers nodes-1."""
    spec = plan.workload
    resources = spec["resources"]
    nodes = int(resources["nodes"])
    gpus = int(resources.get("gpusPerNode", 0))
    queue = plan.queue
    template = _pod_template(plan, trainer_image_default=trainer_image_default)

    replicas: dict[str, Any] = {
        "Master": {"replicas": 1, "restartPolicy": RESTART_POLICY, "template": template},
    }
    if nodes > 1:
        replicas["Worker"] = {
            "replicas": nodes - 1,
            "restartPolicy": RESTART_POLICY,
            "template": copy.deepcopy(template),
        }
    suspend = plan.suspend
    run_policy: dict[str, Any] = {
        "cleanPodPolicy": CLEAN_POD_POLICY,
        "backoffLimit": BACKOFF_LIMIT,
        # With a queue, Kueue admits the job by unsuspending it: create it suspended.
        "suspend": True if queue else suspend,
    }
    if spec.get("activeDeadlineSeconds"):
        run_policy["activeDeadlineSeconds"] = int(spec["activeDeadlineSeconds"])

    metadata = child_metadata(plan)
    if queue:
        metadata["labels"][KUEUE_QUEUE_LABEL] = queue
    metadata["annotations"] = {ANNOTATION_SUSPEND: "true" if suspend else "false"}
    return {
        "apiVersion": PYTORCHJOB_API_VERSION,
        "kind": PYTORCHJOB_KIND,
        "metadata": metadata,
        "spec": {
            "nprocPerNode": str(gpus) if gpus > 0 else "1",
            "runPolicy": run_policy,
            "pytorchReplicaSpecs": replicas,
        },
    }


def render_run(plan: RunPlan, *, trainer_image_default: str = DEFAULT_TRAINER_IMAGE) -> list[dict[str, Any]]:
    """Every object the operator creates for a run, in creation order: the run-spec ConfigMap, then
    the PyTorchJob that mounts it."""
    return [render_configmap(plan), render_pytorchjob(plan, trainer_image_default=trainer_image_default)]


def render_children(
    manifest: dict[str, Any],
    namespace: str | None = None,
    *,
    trainer_image_default: str = DEFAULT_TRAINER_IMAGE,
) -> list[dict[str, Any]]:
    """Every object the operator creates for the manifest's current run (`datamix render`)."""
    return render_run(plan_run(manifest, namespace), trainer_image_default=trainer_image_default)
