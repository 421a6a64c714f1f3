"""The DataMixtureSweep schema: a mixture search as a custom resource.

Built from the same pieces as the experiment (`datamix.schema`): the trials' `experiment` field
*is* the experiment's spec schema, and `final` reuses its model, training and resources. The CRD
is generated from `sweep_crd_manifest()` beside the experiment's (`datamix crd --write`).

Names: trial i is the experiment `<sweep>-t<NNN>` (three digits, i < 512), the full-size run
`<sweep>-final`; both must be valid experiment names, which bounds the sweep's name.
"""

from __future__ import annotations

from datamix.names import SWEEP_PHASES as PHASES
from datamix.schema import (
    MAX_DATASETS,
    MAX_NAME_LENGTH,
    MODEL,
    RESOURCES,
    SPEC,
    TRAINING,
    Column,
    Schema,
    array,
    boolean,
    integer,
    namespaced_crd,
    number,
    obj,
    string,
)

SWEEP_KIND = "DataMixtureSweep"
SWEEP_PLURAL = "datamixturesweeps"
SWEEP_SHORT_NAME = "dms"
MAX_TRIALS = 512
MIN_TRIALS = 4  # fewer cannot be cross-validated
TRIAL_DIGITS = 3  # trial names <sweep>-t000 .. <sweep>-t511
FINAL_SUFFIX = "-final"
MAX_SWEEP_NAME_LENGTH = MAX_NAME_LENGTH - max(len(FINAL_SUFFIX), len("-t") + TRIAL_DIGITS)
SAMPLERS = ("dirichlet",)
REGRESSIONS = ("loglinear", "lightgbm")
DEFAULT_SAMPLER = "dirichlet"
DEFAULT_REGRESSION = "loglinear"
DEFAULT_PARALLELISM = 1
DEFAULT_SEED = 0
DEFAULT_MAX_FAILED_TRIALS = 0


def trial_name(sweep: str, index: int) -> str:
    return f"{sweep}-t{index:0{TRIAL_DIGITS}d}"


def final_name(sweep: str) -> str:
    return sweep + FINAL_SUFFIX


def share_map(description: str) -> Schema:
    return {
        "type": "object",
        "description": description,
        "maxProperties": MAX_DATASETS,
        "additionalProperties": {"type": "number", "minimum": 0, "maximum": 1},
    }


def unchanged(field: str) -> str:
    """CEL: an optional field neither added, removed nor changed (transition rules on a field
    itself fire only when both old and new have it)."""
    return f"has(self.{field}) == has(oldSelf.{field}) && (!has(self.{field}) || self.{field} == oldSelf.{field})"


_MIXTURE = "self.experiment.datasets.mixture"


def _names_known(field: str) -> str:
    return f"!has(self.{field}) || self.{field}.all(k, {_MIXTURE}.exists(d, d.name == k))"


SEARCH_FIELDS = ("trials", "sampler", "seed", "minShare", "maxShare", "maxEpochs", "maxFailedTrials")

SEARCH = obj(
    "How many proxy trials, how their mixtures are sampled, and how many run at once. Only "
    "parallelism may change after creation.",
    {
        "trials": integer(
            "Proxy trials to run (RegMix used 512; Olmix: grow with the number of domains).",
            minimum=MIN_TRIALS,
            maximum=MAX_TRIALS,
        ),
        "parallelism": integer(
            f"Trials unfinished at any time (default {DEFAULT_PARALLELISM}); may be changed.",
            minimum=1,
            maximum=MAX_TRIALS,
        ),
        "sampler": string(
            f"How trial mixtures are drawn: `dirichlet` around the prior (the mixture's weights) with "
            f"a spread of concentrations, as RegMix does. Default {DEFAULT_SAMPLER}.",
            enum=list(SAMPLERS),
        ),
        "seed": integer(
            f"Trial i's mixture is a pure function of seed and i (default {DEFAULT_SEED}).",
            minimum=0,
            maximum=2**31 - 1,
        ),
        "minShare": share_map("Least share per dataset name, for the trials and the proposal."),
        "maxShare": share_map("Largest share per dataset name (0 holds a domain out of training)."),
        "maxEpochs": number(
            "No dataset is repeated more than this many times in the final run (its size is read "
            "from the trials' results).",
            exclusiveMinimum=True,
            minimum=0,
        ),
        "maxFailedTrials": integer(
            f"Failed trials tolerated before the sweep fails (default {DEFAULT_MAX_FAILED_TRIALS}).",
            minimum=0,
            maximum=MAX_TRIALS,
        ),
    },
    required=("trials",),
    rules=(
        (
            "!has(self.minShare) || !has(self.maxShare) || "
            "self.minShare.all(k, !(k in self.maxShare) || self.minShare[k] <= self.maxShare[k])",
            "minShare must not exceed maxShare for the same dataset",
            ".minShare",
        ),
        (
            "!has(self.maxFailedTrials) || self.maxFailedTrials < self.trials",
            "maxFailedTrials must be smaller than trials",
            ".maxFailedTrials",
        ),
        (
            " && ".join(unchanged(f) for f in SEARCH_FIELDS),
            "search cannot be changed after creation, except parallelism: create a new sweep",
        ),
    ),
)

OBJECTIVE = {
    **share_map(
        "What the search minimises: a weighted mean of per-dataset validation losses, as a weight per "
        "dataset name (each dataset needs a validationPath; normalised to sum 1). Default: the mean "
        "over every dataset with a validationPath."
    ),
    "additionalProperties": {"type": "number", "minimum": 0},
    "minProperties": 1,
    "x-kubernetes-validations": [
        {"rule": "self.exists(k, self[k] > 0)", "message": "at least one objective weight must be above 0"},
    ],
}

FINAL = obj(
    "The full-size run to launch with the proposed mixture as `<sweep>-final`: the trials' "
    "experiment with these fields replaced. May be added or changed at any time before it is created.",
    {"model": MODEL, "training": TRAINING, "resources": RESOURCES},
)


def _final_or_trial(field: str) -> str:
    """CEL: the final run's value of `section.key`, else the trials' (scalars only: the two
    sections are different object types to CEL)."""
    section = field.split(".")[0]
    return f"(has(self.final.{section}) ? self.final.{field} : self.experiment.{field})"


_FINAL_GPUS = _final_or_trial("resources.gpusPerNode")
_FINAL_DP = f"({_final_or_trial('resources.nodes')} * ({_FINAL_GPUS} > 0 ? {_FINAL_GPUS} : 1))"

SWEEP_SPEC = obj(
    "Proxy trials around a prior mixture, a regression from mixture to loss, and the proposal.",
    {
        "experiment": {
            **SPEC,
            "description": "The proxy trials' experiment (a small model, short training). Its mixture "
            "names the domains, its weights are the prior; each trial replaces the weights.",
        },
        "search": SEARCH,
        "objective": OBJECTIVE,
        "regression": string(
            "Regression from mixture to objective: loglinear (default) or lightgbm. Its quality is "
            "the k-fold cross-validated Spearman correlation.",
            enum=list(REGRESSIONS),
        ),
        "final": FINAL,
        "suspend": boolean("Create no further trials (running ones finish); false resumes."),
    },
    required=("experiment", "search"),
    rules=(
        (
            _names_known("search.minShare"),
            "search.minShare names a dataset that is not in experiment.datasets.mixture",
            ".search.minShare",
        ),
        (
            _names_known("search.maxShare"),
            "search.maxShare names a dataset that is not in experiment.datasets.mixture",
            ".search.maxShare",
        ),
        (
            f"!has(self.objective) || self.objective.all(k, {_MIXTURE}.exists(d, d.name == k && "
            "has(d.validationPath)))",
            "objective must name datasets of experiment.datasets.mixture that have a validationPath",
            ".objective",
        ),
        (
            f"has(self.objective) || {_MIXTURE}.exists(d, has(d.validationPath))",
            "the objective needs validation data: give a dataset a validationPath",
            ".experiment.datasets.mixture",
        ),
        (
            f"{_MIXTURE}.size() >= 2",
            "a mixture search needs at least 2 datasets in experiment.datasets.mixture",
            ".experiment.datasets.mixture",
        ),
        (
            f"!has(self.final) || {_final_or_trial('training.globalBatchSize')} % "
            f"({_final_or_trial('training.microBatchSize')} * {_FINAL_DP}) == 0",
            "the final run's globalBatchSize must be a multiple of microBatchSize x data-parallel size "
            "(nodes x gpusPerNode)",
            ".final",
        ),
        (
            "self.experiment == oldSelf.experiment",
            "experiment cannot be changed after creation: create a new sweep",
            ".experiment",
        ),
        (unchanged("objective"), "objective cannot be changed after creation: create a new sweep", ".objective"),
        (unchanged("regression"), "regression cannot be changed after creation: create a new sweep", ".regression"),
    ),
)

MIXTURE_STATUS = array(
    "A mixture: dataset shares summing to 1.",
    obj("A dataset's share.", {"name": string("Dataset name.", maxLength=63), "share": number("Share.")}),
    MAX_DATASETS,
)

SWEEP_CONDITION = obj(
    "A condition of the sweep.",
    {
        "type": string("Stalled or Fitted.", maxLength=64),
        "status": string("True, False or Unknown.", enum=["True", "False", "Unknown"]),
        "reason": string("One CamelCase word.", maxLength=128),
        "message": string("A sentence for people.", maxLength=4096),
        "lastTransitionTime": string("When status last changed.", format="date-time"),
        "observedGeneration": integer("metadata.generation the condition was computed from.", minimum=0),
    },
    required=("type", "status"),
)

SWEEP_STATUS = obj(
    "Observed state, written by the operator. Per-trial detail stays in the trial experiments.",
    {
        "observedGeneration": integer("metadata.generation the status reflects.", minimum=0),
        "phase": string(" ".join(PHASES[:-1]) + " or " + PHASES[-1] + ".", enum=list(PHASES)),
        "reason": string("Why the sweep is in its phase (one CamelCase word).", maxLength=128),
        "message": string("The phase's detail, for people.", maxLength=4096),
        "trials": obj(
            "Trial counts.",
            {
                "total": integer("spec.search.trials.", minimum=0),
                "created": integer("Trial experiments created so far.", minimum=0),
                "active": integer("Created and not finished.", minimum=0),
                "succeeded": integer("Finished with a result.", minimum=0),
                "failed": integer("Failed, or finished without a usable result.", minimum=0),
                "done": string("succeeded/total, for kubectl get.", maxLength=16),
            },
        ),
        "best": obj(
            "The best observed trial.",
            {"trial": string("Trial experiment name.", maxLength=63), "objective": number("Its objective.")},
        ),
        "fit": obj(
            "The regression from mixture to objective.",
            {
                "regression": string("loglinear or lightgbm.", maxLength=32),
                "spearman": number("k-fold cross-validated Spearman correlation of predicted and observed."),
                "trials": integer("Trials the fit used.", minimum=0),
                "seconds": number("Wall time of the fit and proposal."),
            },
        ),
        "proposal": obj(
            "The proposed mixture and predictions for comparison.",
            {
                "mixture": MIXTURE_STATUS,
                "predictedObjective": number("Predicted objective of the proposal."),
                "priorPredictedObjective": number("Predicted objective of the prior (the experiment's weights)."),
                "uniformPredictedObjective": number("Predicted objective of the uniform mixture."),
            },
        ),
        "final": obj(
            "The full-size run with the proposed mixture.",
            {
                "experiment": string("Its DataMixtureExperiment.", maxLength=63),
                "phase": string("Its phase.", maxLength=16),
                "predictedObjective": number("The proposal's predicted objective (of the proxies)."),
                "observedObjective": number("Its observed objective when it finished."),
            },
        ),
        "startTime": string("When the first trial was created.", format="date-time"),
        "completionTime": string("When the sweep succeeded or failed.", format="date-time"),
        "conditions": {
            **array("Conditions keyed by type.", SWEEP_CONDITION, 8),
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
    },
)


def sweep_crd_manifest() -> Schema:
    name = string(
        "Sweep name; it prefixes its trials' and final run's names.",
        **{
            "x-kubernetes-validations": [
                {
                    "rule": f"self.size() <= {MAX_SWEEP_NAME_LENGTH}",
                    "message": f"metadata.name must be at most {MAX_SWEEP_NAME_LENGTH} characters so that trial "
                    f"and final experiment names (name-tNNN, name-final) are valid experiment names",
                },
                {
                    "rule": "self.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",
                    "message": "metadata.name must start with a letter and contain only lowercase letters, "
                    "digits and '-' (a DNS-1035 label), because it prefixes experiment names",
                },
            ]
        },
    )
    columns: list[Column] = [
        ("Phase", "string", ".status.phase", "Phase of the sweep."),
        ("Trials", "string", ".status.trials.done", "Trials succeeded / total."),
        ("Best", "number", ".status.best.objective", "Best observed objective."),
        ("Predicted", "number", ".status.proposal.predictedObjective", "Predicted objective of the proposal."),
        ("Age", "date", ".metadata.creationTimestamp", "Age."),
    ]
    return namespaced_crd(
        kind=SWEEP_KIND,
        plural=SWEEP_PLURAL,
        short_names=[SWEEP_SHORT_NAME],
        categories=["datamix"],
        description="A data mixture sweep: proxy trials, a fitted regression and the proposed mixture.",
        name=name,
        spec=SWEEP_SPEC,
        status=SWEEP_STATUS,
        columns=columns,
    )
