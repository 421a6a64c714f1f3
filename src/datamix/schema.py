"""The DataMixtureExperiment schema: the one source of truth for the custom resource.

`crds/` is generated from `crd_manifest()` (`datamix crd > crds/...`; a test fails when it is
stale), and `datamix validate` checks manifests offline against the same schema and CEL rules.
"""

from __future__ import annotations

from typing import Any

from datamix import GROUP, KIND, PLURAL, VERSION
from datamix.names import PHASES
from datamix.runspec import (
    DEFAULT_TERMINATION_GRACE_SECONDS,
    OPERATOR_MOUNT_PATHS,
    OPERATOR_SCRATCH_PATHS,
    RESERVED_ENV_PREFIX,
    TRAINER_UID,
)

Schema = dict[str, Any]

# Child names are `<name>-<run id>` plus `-worker-NN` for pods (the run id is 8 hex
# characters); all must be DNS-1035 labels of at most 63 characters.
RUN_ID_LENGTH = 8
MAX_NODES = 100
MAX_NAME_LENGTH = 63 - len("-") - RUN_ID_LENGTH - len("-worker-") - len(str(MAX_NODES - 2))
MAX_DATASETS = 128
DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"
RELATIVE_PATH = r"^[^/].*$"
ABSOLUTE_PATH = r"^/.*$"
# A directory the pods mount a volume at: absolute, no empty segment, no trailing slash, not `/`.
MOUNT_PATH = r"^(/[^/]+)+$"
# emptyDir sizes: Mi or Gi only, so that a pattern bounds them the same way on the API server and offline.
SHARED_MEMORY_SIZE = r"^([1-9][0-9]{0,3}Mi|([1-9]|[1-5][0-9]|6[0-4])Gi)$"
SCRATCH_SIZE = r"^([1-9][0-9]{0,3}Mi|[1-9][0-9]{0,2}Gi)$"
DEFAULT_SHARED_MEMORY_SIZE = "8Gi"
DEFAULT_SCRATCH_SIZE = "20Gi"
MAX_ENV_VALUE_LENGTH = 4096

# Every path refuses `..` as a segment: no path may climb out of the directory it is relative to
# (or, for absolute paths, be written in a second way that defeats a prefix allow-list).
NO_PARENT_SEGMENT = (
    "!self.matches('(^|/)[.][.](/|$)')",
    "must not contain '..' as a path segment; write the path without climbing out of its directory",
)


def _mount_path_rules() -> list[dict[str, str]]:
    reserved = ", ".join(f"'{p}'" for p in OPERATOR_MOUNT_PATHS)
    return [
        {
            "rule": "!self.matches('(^|/)[.]{1,2}(/|$)')",
            "message": "must not contain '.' or '..' as a path segment; write the plain absolute directory",
        },
        {
            "rule": f"![{reserved}].exists(p, self == p || self.startsWith(p + '/') || p.startsWith(self + '/'))",
            "message": f"must not be, contain or sit inside a path the operator mounts "
            f"({', '.join(OPERATOR_MOUNT_PATHS)}); choose another directory",
        },
        {
            "rule": f"![{', '.join(repr(p) for p in OPERATOR_SCRATCH_PATHS)}].exists(p, self == p)",
            "message": f"must not be the pods' scratch directory ({', '.join(OPERATOR_SCRATCH_PATHS)}); "
            "a directory inside it is fine",
        },
    ]


def path_string(description: str, max_length: int, pattern: str | None = None, **extra: Any) -> Schema:
    """A file-system path: bounded, and never with a `..` segment."""
    rule, message = NO_PARENT_SEGMENT
    schema = string(description, maxLength=max_length, **({"pattern": pattern} if pattern else {}), **extra)
    schema["x-kubernetes-validations"] = [{"rule": rule, "message": message}]
    return schema


def mount_path(description: str) -> Schema:
    """A directory where the pods mount a volume: plain, absolute, clear of the operator's mounts."""
    schema = string(description, maxLength=1024, pattern=MOUNT_PATH)
    schema["x-kubernetes-validations"] = _mount_path_rules()
    return schema


def string(description: str, **extra: Any) -> Schema:
    return {"type": "string", "description": description, **extra}


def integer(description: str, minimum: int | None = None, maximum: int | None = None) -> Schema:
    schema: Schema = {"type": "integer", "description": description, "format": "int64"}
    if minimum is not None:
        schema["minimum"] = minimum
    if maximum is not None:
        schema["maximum"] = maximum
    return schema


def number(description: str, **extra: Any) -> Schema:
    return {"type": "number", "description": description, **extra}


def boolean(description: str) -> Schema:
    return {"type": "boolean", "description": description}


def quantity(description: str) -> Schema:
    # The structural form of int-or-string: the pattern sits beside anyOf, not in a branch.
    return {
        "description": description,
        "x-kubernetes-int-or-string": True,
        "anyOf": [{"type": "integer"}, {"type": "string"}],
        "pattern": QUANTITY,
    }


def array(description: str, items: Schema, max_items: int, **extra: Any) -> Schema:
    return {"type": "array", "description": description, "items": items, "maxItems": max_items, **extra}


def string_map(description: str, max_properties: int = 64) -> Schema:
    return {
        "type": "object",
        "description": description,
        "maxProperties": max_properties,
        "additionalProperties": {"type": "string", "maxLength": 4096},
    }


def obj(
    description: str,
    properties: dict[str, Schema],
    required: tuple[str, ...] = (),
    rules: tuple[tuple[str, str] | tuple[str, str, str], ...] = (),
) -> Schema:
    """An object schema; each rule is (CEL expression, message[, fieldPath])."""
    schema: Schema = {"type": "object", "description": description, "properties": properties}
    if required:
        schema["required"] = list(required)
    if rules:
        schema["x-kubernetes-validations"] = [
            {"rule": r[0], "message": r[1], **({"fieldPath": r[2]} if len(r) > 2 else {})} for r in rules
        ]
    return schema


def exactly_one(*fields: str) -> str:
    return " + ".join(f"(has(self.{f}) ? 1 : 0)" for f in fields) + " == 1"


def volume_source(what: str) -> Schema:
    return obj(
        f"Where {what} comes from: exactly one of persistentVolumeClaim, nfs or hostPath.",
        {
            "persistentVolumeClaim": obj(
                "An existing PersistentVolumeClaim in the experiment's namespace.",
                {
                    "claimName": string("Name of the claim.", maxLength=253, minLength=1),
                    "readOnly": boolean("Mount read-only."),
                },
                required=("claimName",),
            ),
            "nfs": obj(
                "An NFS export.",
                {
                    "server": string("NFS server host name or address.", maxLength=253, minLength=1),
                    "path": path_string("Exported path.", 1024, ABSOLUTE_PATH),
                    "readOnly": boolean("Mount read-only."),
                },
                required=("server", "path"),
            ),
            "hostPath": obj(
                "A directory on every node (single-node clusters and tests).",
                {"path": path_string("Directory on the node.", 1024, ABSOLUTE_PATH)},
                required=("path",),
            ),
        },
        rules=(
            (
                exactly_one("persistentVolumeClaim", "nfs", "hostPath"),
                "set exactly one of persistentVolumeClaim, nfs or hostPath",
            ),
        ),
    )


DATASET = obj(
    "One source of the blend.",
    {
        "name": string(
            "Dataset name (a DNS-1123 label); used in metrics, status and results.",
            maxLength=63,
            minLength=1,
            pattern=DNS1123_LABEL,
        ),
        "path": string(
            "Megatron indexed-dataset prefix (`<path>.bin`/`<path>.idx`) relative to datasets.baseDir, "
            "e.g. `Nemotron-CC-high-actual-actual-high/part_142_text_document`.",
            maxLength=512,
            minLength=1,
            pattern=RELATIVE_PATH,
        ),
        "weight": number(
            "Relative weight: the dataset's share is weight / sum of all weights.",
            exclusiveMinimum=True,
            minimum=0,
        ),
        "validationPath": string(
            "Held-out data of the same domain (indexed-dataset prefix relative to baseDir); "
            "the run reports a validation loss for this dataset.",
            maxLength=512,
            minLength=1,
            pattern=RELATIVE_PATH,
        ),
    },
    required=("name", "path", "weight"),
    rules=(
        ("!self.path.contains('..')", "path must stay inside baseDir: remove '..'", ".path"),
        (
            "!has(self.validationPath) || !self.validationPath.contains('..')",
            "validationPath must stay inside baseDir: remove '..'",
            ".validationPath",
        ),
        (
            "!has(self.validationPath) || self.validationPath != self.path",
            "validationPath must be held-out data, not the training path itself",
            ".validationPath",
        ),
    ),
)

DATASETS = obj(
    "What to blend and where the data is.",
    {
        "baseDir": mount_path(
            "Directory where the data volume is mounted in the pods; mixture paths are relative to it. Default /data."
        ),
        "volume": volume_source("the datasets"),
        "mixture": {
            **array(
                "The blend: datasets keyed by name, each with a relative weight.",
                DATASET,
                MAX_DATASETS,
                minItems=1,
            ),
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["name"],
            "x-kubernetes-validations": [
                {
                    "rule": "self.all(a, self.exists_one(b, b.path == a.path))",
                    "message": "each dataset path may appear only once in the mixture",
                }
            ],
        },
    },
    required=("mixture",),
)

MODEL = obj(
    "Which model to train.",
    {
        "preset": string(
            "Model preset: `tiny` (CPU, minutes), `small` (~100M dense) or `openseek-small` "
            "(OpenSeek-Small v1, 1.4B total / 0.4B active MoE).",
            enum=["tiny", "small", "openseek-small"],
        ),
        "overrides": {
            "type": "object",
            "description": "Model settings replacing the preset's (Megatron argument names in camelCase, "
            "e.g. numLayers, hiddenSize). Unknown names are reported by the operator as InvalidSpec.",
            "maxProperties": 64,
            # Values are numbers, strings or booleans. A structural schema cannot say "scalar" and the
            # API server cannot type an open value for CEL ("unable to convert structural schema to CEL
            # declarations"), so the bound here is the number of settings; each value's type and a
            # string's length are checked against presets.MODEL_SETTINGS by `datamix validate` and the
            # operator (InvalidSpec) before anything is created.
            "additionalProperties": {"x-kubernetes-preserve-unknown-fields": True},
        },
    },
    required=("preset",),
)

LEARNING_RATE = obj(
    "Learning-rate schedule.",
    {
        "peak": number("Peak learning rate after warm-up.", exclusiveMinimum=True, minimum=0),
        "min": number("Final learning rate of the decay.", minimum=0),
        "warmupSamples": integer("Samples of linear warm-up.", minimum=0),
        "decay": string("Decay after warm-up.", enum=["cosine", "linear", "constant"]),
    },
    required=("peak",),
    rules=(("!has(self.min) || self.min <= self.peak", "min must not exceed peak", ".min"),),
)

TOKENIZER = obj(
    "The tokenizer the data was preprocessed with; the trainer reads token ids and needs only the "
    "vocabulary size and the end-of-document id.",
    {
        "type": string("Tokenizer name, e.g. byte, QwenTokenizerFS, HuggingFaceTokenizer.", maxLength=128),
        "path": path_string("Tokenizer files (for the record and for GPU trainers that load it).", 1024),
        "vocabSize": integer("Vocabulary size (embedding rows).", minimum=2, maximum=4194304),
        "eodToken": integer("End-of-document token id.", minimum=0),
    },
    required=("type", "vocabSize"),
    rules=(
        (
            "!has(self.eodToken) || self.eodToken < self.vocabSize",
            "eodToken must be smaller than vocabSize",
            ".eodToken",
        ),
    ),
)

TRAINING = obj(
    "How long and how to train. Set exactly one of trainSamples, trainTokens or trainSteps.",
    {
        "seqLength": integer("Tokens per sample.", minimum=8, maximum=1048576),
        "globalBatchSize": integer("Samples per optimizer step, across all data-parallel ranks.", minimum=1),
        "microBatchSize": integer("Samples per forward pass on one rank.", minimum=1),
        "trainSamples": integer("Train for this many samples.", minimum=1),
        "trainTokens": integer("Train for this many tokens (rounded up to whole samples).", minimum=1),
        "trainSteps": integer("Train for this many optimizer steps.", minimum=1),
        "learningRate": LEARNING_RATE,
        "seed": integer("Random seed of data shuffling and initialisation.", minimum=0),
        "checkpointInterval": integer("Steps between checkpoints.", minimum=1),
        "evalInterval": integer("Steps between per-dataset validation evaluations.", minimum=1),
        "evalSamples": integer("Validation samples per dataset per evaluation.", minimum=1, maximum=1000000),
        "logInterval": integer("Steps between log lines.", minimum=1),
        "tokenizer": TOKENIZER,
    },
    required=("seqLength", "globalBatchSize", "microBatchSize", "learningRate", "tokenizer"),
    rules=(
        (
            exactly_one("trainSamples", "trainTokens", "trainSteps"),
            "set exactly one of trainSamples, trainTokens or trainSteps",
        ),
        (
            "self.globalBatchSize % self.microBatchSize == 0",
            "globalBatchSize must be a multiple of microBatchSize",
            ".globalBatchSize",
        ),
    ),
)

TOLERATION = obj(
    "A toleration added to the training pods.",
    {
        "key": string("Taint key.", maxLength=316),
        "operator": string("Exists or Equal.", enum=["Exists", "Equal"]),
        "value": string("Taint value.", maxLength=63),
        "effect": string("Taint effect.", enum=["NoSchedule", "PreferNoSchedule", "NoExecute"]),
        "tolerationSeconds": integer("How long a NoExecute taint is tolerated.", minimum=0),
    },
)

RESOURCES = obj(
    "Where and on how much hardware to train.",
    {
        "nodes": integer("Nodes (pods): one master and nodes-1 workers.", minimum=1, maximum=MAX_NODES),
        "gpusPerNode": integer("GPUs per node; also processes per node. 0 trains on CPU.", minimum=0, maximum=16),
        "gpu": obj(
            "Which GPUs: matched against GPU Feature Discovery node labels.",
            {
                "products": array(
                    "Acceptable `nvidia.com/gpu.product` label values, e.g. NVIDIA-H100-80GB-HBM3.",
                    string("A GPU product name.", maxLength=128, minLength=1),
                    16,
                ),
                "minMemory": quantity("Least GPU memory (e.g. 40Gi); matched against `nvidia.com/gpu.memory`."),
                "peakTFLOPS": number(
                    "Peak dense bf16 TFLOP/s of one GPU, for model FLOPs utilisation; known products need none.",
                    exclusiveMinimum=True,
                    minimum=0,
                ),
            },
        ),
        "nodeSelector": string_map("Node labels the pods must match (added to the GPU selection)."),
        "tolerations": array("Tolerations added to the pods.", TOLERATION, 32),
        "cpu": quantity("CPU request and limit of each pod."),
        "memory": quantity("Memory request and limit of each pod."),
        "priorityClassName": string("PriorityClass of the pods.", maxLength=253),
        "sharedMemorySize": string(
            f"Size limit of the memory-backed /dev/shm of each pod (counts against its memory), at most 64Gi. "
            f"Default {DEFAULT_SHARED_MEMORY_SIZE}.",
            pattern=SHARED_MEMORY_SIZE,
            maxLength=8,
        ),
        "scratchSize": string(
            f"Size limit of each pod's writable scratch directory (/tmp, also $HOME) and, without an output volume, "
            f"of the output emptyDir; at most 999Gi. Default {DEFAULT_SCRATCH_SIZE}.",
            pattern=SCRATCH_SIZE,
            maxLength=8,
        ),
        "queueName": string("Kueue LocalQueue to submit to (label kueue.x-k8s.io/queue-name).", maxLength=63),
    },
    required=("nodes", "gpusPerNode"),
    rules=(
        (
            "!has(self.gpu) || self.gpusPerNode > 0",
            "resources.gpu needs gpusPerNode of at least 1",
            ".gpu",
        ),
    ),
)

ENV_VAR = obj(
    "An environment variable of the trainer container.",
    {
        "name": string(
            f"Variable name; names starting with {RESERVED_ENV_PREFIX} are the operator's and the trainer's.",
            maxLength=256,
            minLength=1,
            pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$",
        ),
        "value": string("Literal value.", maxLength=MAX_ENV_VALUE_LENGTH),
        "valueFrom": obj(
            "Value from a Secret or ConfigMap key (tokens belong in Secrets).",
            {
                "secretKeyRef": obj(
                    "A key of a Secret in the experiment's namespace.",
                    {
                        "name": string("Secret name.", maxLength=253),
                        "key": string("Key.", maxLength=253),
                        "optional": boolean("Allow the Secret or key to be missing."),
                    },
                    required=("name", "key"),
                ),
                "configMapKeyRef": obj(
                    "A key of a ConfigMap in the experiment's namespace.",
                    {
                        "name": string("ConfigMap name.", maxLength=253),
                        "key": string("Key.", maxLength=253),
                        "optional": boolean("Allow the ConfigMap or key to be missing."),
                    },
                    required=("name", "key"),
                ),
            },
            rules=(
                (exactly_one("secretKeyRef", "configMapKeyRef"), "set exactly one of secretKeyRef or configMapKeyRef"),
            ),
        ),
    },
    required=("name",),
    rules=(
        (
            "!(has(self.value) && has(self.valueFrom))",
            "set value or valueFrom, not both",
        ),
        (
            f"!self.name.startsWith('{RESERVED_ENV_PREFIX}')",
            f"names starting with {RESERVED_ENV_PREFIX} are reserved for the operator and the trainer; "
            "rename the variable",
            ".name",
        ),
    ),
)

_DP_SIZE = "(self.resources.nodes * (self.resources.gpusPerNode > 0 ? self.resources.gpusPerNode : 1))"
# The defaults are datamix.experiment's DEFAULT_BASE_DIR and DEFAULT_OUTPUT_PATH.
_BASE_DIR = "(has(self.datasets.baseDir) ? self.datasets.baseDir : '/data')"
_OUTPUT_PATH = "(has(self.output) && has(self.output.path) ? self.output.path : '/output')"

SPEC = obj(
    "What to blend, which model, how long, and on which GPUs.",
    {
        "datasets": DATASETS,
        "model": MODEL,
        "training": TRAINING,
        "resources": RESOURCES,
        "image": string("Trainer image; default: the operator's --trainer-image.", maxLength=512),
        "imagePullSecrets": array(
            "Secrets for pulling the image.",
            obj("A Secret reference.", {"name": string("Secret name.", maxLength=253)}, required=("name",)),
            16,
        ),
        "env": {
            **array("Extra environment variables of the trainer.", ENV_VAR, 64),
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["name"],
        },
        "output": obj(
            "Where checkpoints, logs and results go: <path>/<namespace>/<experiment>/<run>/.",
            {
                "volume": volume_source("the output directory"),
                "path": mount_path("Mount path of the output volume. Default /output."),
            },
        ),
        "podTemplate": obj(
            "Additions to the training pods.",
            {
                "metadata": obj(
                    "Labels and annotations added to the pods.",
                    {
                        "labels": string_map("Pod labels."),
                        "annotations": string_map("Pod annotations."),
                    },
                ),
                "securityContext": obj(
                    "Groups of the training processes, e.g. for a volume owned by a group. The user is fixed "
                    f"(uid {TRAINER_UID}, non-root) and the pods meet Pod Security `restricted` whatever is set here.",
                    {
                        "fsGroup": integer(
                            f"Group that owns the pods' volumes (default {TRAINER_UID}).", minimum=1, maximum=2147483647
                        ),
                        "supplementalGroups": array(
                            "Extra groups of the training processes.",
                            integer("A group id.", minimum=1, maximum=2147483647),
                            16,
                        ),
                    },
                ),
            },
        ),
        "activeDeadlineSeconds": integer("Fail a run that takes longer than this.", minimum=1),
        "terminationGracePeriodSeconds": integer(
            "How long a stopped pod (preemption, suspend, a node drain) has to save a checkpoint before it is "
            f"killed. Default {DEFAULT_TERMINATION_GRACE_SECONDS}.",
            minimum=30,
            maximum=7200,
        ),
        "progressDeadlineSeconds": integer(
            "Report a running run that completes no training step for this long: condition Progressing "
            "False, reason ProgressDeadlineExceeded, and a Warning event. The run is not stopped.",
            minimum=1,
        ),
        "suspend": boolean("Suspend the current run (its pods are removed); false resumes it."),
    },
    required=("datasets", "model", "training", "resources"),
    rules=(
        (
            f"self.training.globalBatchSize % (self.training.microBatchSize * {_DP_SIZE}) == 0",
            "training.globalBatchSize must be a multiple of microBatchSize x data-parallel size (nodes x gpusPerNode)",
            ".training.globalBatchSize",
        ),
        (
            f"!({_OUTPUT_PATH} == {_BASE_DIR} || {_OUTPUT_PATH}.startsWith({_BASE_DIR} + '/') "
            f"|| {_BASE_DIR}.startsWith({_OUTPUT_PATH} + '/'))",
            "output.path and datasets.baseDir are mounted separately: they must not be the same directory or "
            "inside one another",
            ".output.path",
        ),
    ),
)

CONDITION = obj(
    "A condition of the experiment.",
    {
        "type": string(
            "Created, Running, Restarting, Progressing, Succeeded, Failed, Suspended or Stalled.", maxLength=64
        ),
        "status": string("True, False or Unknown.", enum=["True", "False", "Unknown"]),
        "reason": string("One CamelCase word.", maxLength=128),
        "message": string("A sentence for people.", maxLength=4096),
        "lastTransitionTime": string("When status last changed.", format="date-time"),
        "observedGeneration": integer("metadata.generation the condition was computed from.", minimum=0),
    },
    required=("type", "status"),
)

RUN_SUMMARY_PROPS: dict[str, Schema] = {
    "id": string("Run id: a hash of the run-defining spec.", maxLength=16),
    "configMap": string("The run spec ConfigMap.", maxLength=63),
    "job": string("The PyTorchJob.", maxLength=63),
    "phase": string("Pending, Running, Succeeded, Failed or Suspended.", maxLength=16),
    "reason": string("Why the run is in its phase.", maxLength=128),
    "startTime": string("When the run's job started.", format="date-time"),
    "completionTime": string("When the run's job finished.", format="date-time"),
    "trainLoss": number("Final training loss."),
    "meanValidationLoss": number("Final mean per-dataset validation loss."),
}

STATUS = obj(
    "Observed state, written by the operator.",
    {
        "observedGeneration": integer("metadata.generation the status reflects.", minimum=0),
        "phase": string(
            "Pending, Running, Succeeded, Failed or Suspended.",
            enum=list(PHASES),
        ),
        "shape": string("nodes x GPUs per node, e.g. 2x8.", maxLength=16),
        "loss": string("Latest or final training loss, for kubectl get.", maxLength=32),
        "conditions": {
            **array("Conditions keyed by type.", CONDITION, 16),
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
        "mixture": array(
            "The normalised mixture of the current run.",
            obj(
                "A dataset's share.",
                {
                    "name": string("Dataset name.", maxLength=63),
                    "share": number("weight / sum of weights."),
                },
            ),
            MAX_DATASETS,
        ),
        "run": obj("The current run.", dict(RUN_SUMMARY_PROPS)),
        "previousRuns": array(
            "Earlier runs of this experiment, newest first (at most 16).",
            obj("An earlier run.", dict(RUN_SUMMARY_PROPS)),
            16,
        ),
        "startTime": string("When the current run started.", format="date-time"),
        "completionTime": string("When the current run finished.", format="date-time"),
        "progress": obj(
            "Progress of the current run: read live from the trainer's metrics while it runs, from its "
            "result when it has finished.",
            {
                "consumedSamples": integer("Samples trained on so far.", minimum=0),
                "targetSamples": integer("Samples the run trains on.", minimum=0),
                "percent": integer("consumedSamples / targetSamples in percent.", minimum=0, maximum=100),
                "tokensPerSecond": number("Training tokens per second of the whole job (last step)."),
                "trainLoss": number("Training loss of the last step."),
                "meanValidationLoss": number("Mean per-dataset validation loss of the last evaluation."),
                "validationStep": integer("The step of that evaluation.", minimum=0),
                "estimatedCompletionTime": string(
                    "When the run should reach targetSamples at its rate so far.", format="date-time"
                ),
                "lastProgressTime": string("When a training step was last seen completing.", format="date-time"),
                "readingTime": string("When these values were read from the trainer.", format="date-time"),
            },
        ),
        "result": obj(
            "Result of the current run, from the master pod's termination message.",
            {
                "trainLoss": number("Final training loss."),
                "meanValidationLoss": number("Mean of the per-dataset validation losses."),
                "steps": integer("Optimizer steps.", minimum=0),
                "consumedSamples": integer("Samples trained on.", minimum=0),
                "wallSeconds": number("Wall time of training."),
                "datasets": array(
                    "Per dataset: validation loss, tokens and realised share.",
                    obj(
                        "One dataset's result.",
                        {
                            "name": string("Dataset name.", maxLength=63),
                            "validationLoss": number("Final validation loss."),
                            "tokens": integer("Training tokens consumed.", minimum=0),
                            "share": number("Realised share of training tokens."),
                            "epochTokens": integer(
                                "Tokens in one epoch of the dataset's training data (the sum of its "
                                "sequence lengths): what a sweep's maxEpochs divides by.",
                                minimum=0,
                            ),
                        },
                    ),
                    MAX_DATASETS,
                ),
            },
        ),
    },
)


Column = tuple[str, str, str, str]  # printer column: name, type, JSON path, description


def namespaced_crd(
    *,
    kind: str,
    plural: str,
    short_names: list[str],
    categories: list[str],
    description: str,
    name: Schema,
    spec: Schema,
    status: Schema,
    columns: list[Column],
) -> Schema:
    """A namespaced, status-subresourced CustomResourceDefinition of the group's one version."""
    root = obj(
        description,
        {
            "apiVersion": string("API version."),
            "kind": string("Kind."),
            "metadata": {"type": "object", "properties": {"name": name}},
            "spec": spec,
            "status": status,
        },
        required=("spec",),
    )
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": short_names,
                "categories": categories,
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": n, "type": t, "jsonPath": p, "description": d} for n, t, p, d in columns
                    ],
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }


def crd_manifest() -> Schema:
    # CRDs may constrain only metadata.name (and generateName); the rules sit on the name itself.
    name = string(
        "Experiment name; it prefixes every child's name.",
        **{
            "x-kubernetes-validations": [
                {
                    "rule": f"self.size() <= {MAX_NAME_LENGTH}",
                    "message": f"metadata.name must be at most {MAX_NAME_LENGTH} characters so that child names "
                    "(name-<run id>-worker-NN) fit in 63",
                },
                {
                    "rule": "self.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",
                    "message": "metadata.name must start with a letter and contain only lowercase letters, "
                    "digits and '-' (a DNS-1035 label), because it names Services of the training job",
                },
            ]
        },
    )
    columns: list[Column] = [
        ("Phase", "string", ".status.phase", "Phase of the current run."),
        ("Shape", "string", ".status.shape", "nodes x GPUs per node."),
        ("Progress", "integer", ".status.progress.percent", "Percent of target samples consumed."),
        ("Loss", "string", ".status.loss", "Latest or final training loss."),
        ("Run", "string", ".status.run.id", "Current run id."),
        ("Age", "date", ".metadata.creationTimestamp", "Age."),
    ]
    return namespaced_crd(
        kind=KIND,
        plural=PLURAL,
        short_names=["dmx"],
        categories=["datamix", "kubeflow"],
        description="A data mixture experiment: one model trained on a weighted blend of datasets.",
        name=name,
        spec=SPEC,
        status=STATUS,
        columns=columns,
    )
