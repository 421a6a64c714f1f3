"""The names the operator writes and reads, each defined once: label and annotation keys, the
training backend's API, phases, condition types and reasons.

Imported by the renderer, the API client, the status code and the schema; users and dashboards
select on these strings, so a change here is a change of the API.
"""

from __future__ import annotations

from typing import Final

from datamix import GROUP

# ---- labels and annotations on every child of an experiment ------------------------------------
MANAGED_BY: Final = "datamix-operator"
PART_OF: Final = "datamix"
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
LABEL_PART_OF: Final = "app.kubernetes.io/part-of"
LABEL_EXPERIMENT: Final = f"{GROUP}/experiment"
LABEL_RUN: Final = f"{GROUP}/run"
# How the run id in LABEL_RUN was computed (experiment.RUN_ID_SCHEME). An operator leaves children
# of a scheme it does not know alone: another version's operator made them, and its ids are not ours.
LABEL_RUN_ID_SCHEME: Final = f"{GROUP}/run-id-scheme"
# What the user last asked for with spec.suspend, as applied by the operator to the job. With a
# Kueue queue, runPolicy.suspend belongs to Kueue; the operator acts only when this changes.
ANNOTATION_SUSPEND: Final = f"{GROUP}/suspend"
KUEUE_QUEUE_LABEL: Final = "kueue.x-k8s.io/queue-name"

# ---- the training backend: the Kubeflow training-operator's PyTorchJob (v1) --------------------
PYTORCHJOB_GROUP: Final = "kubeflow.org"
PYTORCHJOB_VERSION: Final = "v1"
PYTORCHJOB_API_VERSION: Final = f"{PYTORCHJOB_GROUP}/{PYTORCHJOB_VERSION}"
PYTORCHJOB_PLURAL: Final = "pytorchjobs"
PYTORCHJOB_KIND: Final = "PyTorchJob"
PYTORCHJOB_CONTAINER: Final = "pytorch"  # the training-operator requires this container name
# Labels the training-operator puts on the job's pods.
JOB_NAME_LABEL: Final = "training.kubeflow.org/job-name"
REPLICA_TYPE_LABEL: Final = "training.kubeflow.org/replica-type"
MASTER_REPLICA: Final = "master"


class JobCondition:
    """Condition types of a PyTorchJob (training-operator v1)."""

    CREATED: Final = "Created"
    RUNNING: Final = "Running"
    RESTARTING: Final = "Restarting"
    SUCCEEDED: Final = "Succeeded"
    FAILED: Final = "Failed"
    SUSPENDED: Final = "Suspended"


# ---- the experiment's status -------------------------------------------------------------------
class Phase:
    """status.phase of an experiment, and of a run in status.run / status.previousRuns."""

    PENDING: Final = "Pending"
    RUNNING: Final = "Running"
    SUCCEEDED: Final = "Succeeded"
    FAILED: Final = "Failed"
    SUSPENDED: Final = "Suspended"


PHASES: Final = (Phase.PENDING, Phase.RUNNING, Phase.SUCCEEDED, Phase.FAILED, Phase.SUSPENDED)
TERMINAL_PHASES: Final = frozenset({Phase.SUCCEEDED, Phase.FAILED})


class Condition:
    """Condition types of an experiment (status.conditions, in this order)."""

    CREATED: Final = "Created"
    RUNNING: Final = "Running"
    RESTARTING: Final = "Restarting"
    PROGRESSING: Final = "Progressing"
    SUCCEEDED: Final = "Succeeded"
    FAILED: Final = "Failed"
    SUSPENDED: Final = "Suspended"
    STALLED: Final = "Stalled"


CONDITION_TYPES: Final = (
    Condition.CREATED,
    Condition.RUNNING,
    Condition.RESTARTING,
    Condition.PROGRESSING,
    Condition.SUCCEEDED,
    Condition.FAILED,
    Condition.SUSPENDED,
    Condition.STALLED,
)


class Reason:
    """Reasons of phases, conditions and Events (one CamelCase word each)."""

    JOB_CREATED: Final = "JobCreated"
    JOB_PENDING: Final = "JobPending"
    JOB_QUEUED: Final = "JobQueued"
    JOB_RUNNING: Final = "JobRunning"
    JOB_RESTARTING: Final = "JobRestarting"
    JOB_SUCCEEDED: Final = "JobSucceeded"
    JOB_FAILED: Final = "JobFailed"
    NON_FINITE_LOSS: Final = "NonFiniteLoss"  # the trainer stopped on a NaN/Inf loss or gradient
    SUSPENDED: Final = "Suspended"
    INVALID_SPEC: Final = "InvalidSpec"
    POLICY_VIOLATION: Final = "PolicyViolation"  # the cluster's DataMix policy refuses the spec
    TOO_LARGE: Final = "TooLarge"  # a rendered child would exceed what the API server stores
    CRD_MISSING: Final = "PyTorchJobCRDMissing"
    CHILD_CONFLICT: Final = "ChildConflict"
    UNKNOWN_RUN_ID_SCHEME: Final = "UnknownRunIdScheme"  # a job made by another operator version
    NOT_CREATED: Final = "JobNotCreated"
    AS_EXPECTED: Final = "AsExpected"
    SUPERSEDED: Final = "Superseded"
    STEPS_COMPLETING: Final = "StepsCompleting"
    PROGRESS_DEADLINE_EXCEEDED: Final = "ProgressDeadlineExceeded"
    # Events only
    RUN_STARTED: Final = "RunStarted"
    RUN_RETIRED: Final = "RunRetired"
    JOB_RECREATED: Final = "JobRecreated"  # the running run's job was deleted by hand: created again
    CONFIGMAP_RECREATED: Final = "ConfigMapRecreated"  # ... its run spec ConfigMap: created again, identical
    RESUMED: Final = "Resumed"
    PROGRESS_RESUMED: Final = "ProgressResumed"
    FOREIGN_POD: Final = "ForeignPodIgnored"  # a pod labelled like the run's master, not owned by its job


# ---- a DataMixtureSweep's experiments (trials and the final run) -------------------------------
LABEL_SWEEP: Final = f"{GROUP}/sweep"  # the sweep's name, on its trial and final experiments
LABEL_TRIAL: Final = f"{GROUP}/trial"  # the trial's index, or FINAL_TRIAL on the final run
FINAL_TRIAL: Final = "final"


class SweepPhase:
    """status.phase of a sweep."""

    PENDING: Final = "Pending"
    RUNNING: Final = "Running"
    FITTING: Final = "Fitting"
    SUCCEEDED: Final = "Succeeded"
    FAILED: Final = "Failed"
    SUSPENDED: Final = "Suspended"


SWEEP_PHASES: Final = (SweepPhase.PENDING, SweepPhase.RUNNING, SweepPhase.FITTING, SweepPhase.SUCCEEDED,
                       SweepPhase.FAILED, SweepPhase.SUSPENDED)
