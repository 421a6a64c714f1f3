"""A valid DataMixtureSweep, and invalid ones (creation and edits) with the field path and
message both `datamix validate` and the real API server report."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from tests.api.manifests import valid_manifest

Manifest = dict[str, Any]


def valid_sweep(name: str = "mix-search") -> Manifest:
    experiment = valid_manifest()["spec"]
    experiment["model"] = {"preset": "tiny"}
    experiment["training"]["trainSamples"] = 20480
    for d in experiment["datasets"]["mixture"]:
        d["validationPath"] = d["path"].replace("part_0", "valid")
    return {
        "apiVersion": "datamix.io/v1alpha1",
        "kind": "DataMixtureSweep",
        "metadata": {"name": name},
        "spec": {
            "experiment": experiment,
            "search": {"trials": 16, "parallelism": 4, "seed": 7, "minShare": {"web": 0.1},
                       "maxShare": {"math": 0.6}, "maxEpochs": 4, "maxFailedTrials": 2},
            "objective": {"web": 1, "code": 0.5},
            "regression": "loglinear",
            "final": {"model": {"preset": "small"}},
        },
    }


def _case(mutate: Callable[[Manifest], None]) -> Manifest:
    m = valid_sweep()
    mutate(m)
    return m


def _spec(m: Manifest) -> dict[str, Any]:
    spec: dict[str, Any] = m["spec"]
    return spec


def _set(path: str, value: Any) -> Callable[[Manifest], None]:
    def mutate(m: Manifest) -> None:
        node: Any = m
        *head, last = path.split(".")
        for part in head:
            node = node[int(part)] if part.isdigit() else node[part]
        node[int(last) if last.isdigit() else last] = value

    return mutate


def _delete(path: str) -> Callable[[Manifest], None]:
    def mutate(m: Manifest) -> None:
        node: Any = m
        *head, last = path.split(".")
        for part in head:
            node = node[int(part)] if part.isdigit() else node[part]
        del node[last]

    return mutate


def _no_validation(m: Manifest) -> None:
    _spec(m).pop("objective")
    for d in _spec(m)["experiment"]["datasets"]["mixture"]:
        d.pop("validationPath")


INVALID_SWEEPS: list[tuple[str, Manifest, str, str]] = [
    ("too-many-trials", _case(_set("spec.search.trials", 513)), "spec.search.trials",
     "less than or equal to 512"),
    ("three-trials", _case(_set("spec.search.trials", 3)), "spec.search.trials", "greater than or equal to 4"),
    ("no-search", _case(_delete("spec.search")), "spec.search", "Required value"),
    ("zero-parallelism", _case(_set("spec.search.parallelism", 0)), "spec.search.parallelism",
     "greater than or equal to 1"),
    ("unknown-sampler", _case(_set("spec.search.sampler", "grid")), "spec.search.sampler", "Unsupported value"),
    ("unknown-regression", _case(_set("spec.regression", "gp")), "spec.regression", "Unsupported value"),
    ("share-above-one", _case(_set("spec.search.maxShare", {"math": 1.5})), "spec.search.maxShare.math",
     "less than or equal to 1"),
    ("min-above-max", _case(_set("spec.search.minShare", {"math": 0.7})), "spec.search.minShare",
     "minShare must not exceed maxShare"),
    ("min-share-unknown-dataset", _case(_set("spec.search.minShare", {"books": 0.1})), "spec.search.minShare",
     "names a dataset that is not in experiment.datasets.mixture"),
    ("max-share-unknown-dataset", _case(_set("spec.search.maxShare", {"books": 0.1})), "spec.search.maxShare",
     "names a dataset that is not in experiment.datasets.mixture"),
    ("objective-unknown-dataset", _case(_set("spec.objective", {"books": 1})), "spec.objective",
     "must name datasets of experiment.datasets.mixture that have a validationPath"),
    ("objective-all-zero", _case(_set("spec.objective", {"web": 0})), "spec.objective",
     "at least one objective weight must be above 0"),
    ("objective-negative", _case(_set("spec.objective", {"web": -1})), "spec.objective.web",
     "greater than or equal to 0"),
    ("no-validation-data", _case(_no_validation), "spec.experiment.datasets.mixture",
     "the objective needs validation data"),
    ("one-dataset", _case(lambda m: _spec(m)["experiment"]["datasets"]["mixture"].__delitem__(slice(1, None))),
     "spec.experiment.datasets.mixture", "needs at least 2 datasets"),
    ("failures-not-below-trials", _case(_set("spec.search.maxFailedTrials", 16)), "spec.search.maxFailedTrials",
     "must be smaller than trials"),
    ("zero-max-epochs", _case(_set("spec.search.maxEpochs", 0)), "spec.search.maxEpochs", "greater than 0"),
    ("experiment-rule-applies", _case(_set("spec.experiment.datasets.mixture.0.weight", 0)),
     "spec.experiment.datasets.mixture[0].weight", "should be greater than 0"),
    ("final-batch-not-divisible", _case(_set("spec.final", {"resources": {"nodes": 3, "gpusPerNode": 8}})),
     "spec.final", "the final run's globalBatchSize must be a multiple"),
    ("unknown-search-field", _case(_set("spec.search.epochs", 3)), "spec.search.epochs", "unknown field"),
    ("name-too-long", _case(_set("metadata.name", "s" * 39)), "metadata.name", "at most 38 characters"),
    ("name-not-dns1035", _case(_set("metadata.name", "1sweep")), "metadata.name", "must start with a letter"),
]

# Found by the operator's own checks (the schema cannot see them).
OPERATOR_ONLY_INVALID_SWEEPS: list[tuple[str, Manifest, str, str]] = [
    ("unknown-model-setting", _case(_set("spec.experiment.model.overrides", {"numLayerz": 2})),
     "spec.experiment.model.overrides.numLayerz", "unknown model setting"),
    ("final-unknown-model-setting", _case(_set("spec.final.model", {"preset": "tiny", "overrides": {"x": 1}})),
     "spec.final.model.overrides.x", "unknown model setting"),
]


def _edit(mutate: Callable[[Manifest], None]) -> Callable[[Manifest], Manifest]:
    def edited(m: Manifest) -> Manifest:
        out = copy.deepcopy(m)
        mutate(out)
        return out

    return edited


# (id, edit of a created sweep, field path, message): the API server refuses these updates.
REFUSED_EDITS: list[tuple[str, Callable[[Manifest], Manifest], str, str]] = [
    ("trials", _edit(_set("spec.search.trials", 32)), "spec.search", "search cannot be changed after creation"),
    ("seed", _edit(_set("spec.search.seed", 8)), "spec.search", "search cannot be changed after creation"),
    ("add-min-share", _edit(_set("spec.search.minShare", {"web": 0.1, "code": 0.1})), "spec.search",
     "search cannot be changed after creation"),
    ("remove-max-epochs", _edit(_delete("spec.search.maxEpochs")), "spec.search",
     "search cannot be changed after creation"),
    ("prior", _edit(_set("spec.experiment.datasets.mixture.0.weight", 5)), "spec.experiment",
     "experiment cannot be changed after creation"),
    ("objective", _edit(_set("spec.objective", {"web": 1})), "spec.objective",
     "objective cannot be changed after creation"),
    ("drop-objective", _edit(_delete("spec.objective")), "spec.objective",
     "objective cannot be changed after creation"),
    ("regression", _edit(_set("spec.regression", "lightgbm")), "spec.regression",
     "regression cannot be changed after creation"),
]

# Edits the API server accepts.
ALLOWED_EDITS: list[tuple[str, Callable[[Manifest], Manifest]]] = [
    ("parallelism", _edit(_set("spec.search.parallelism", 8))),
    ("suspend", _edit(_set("spec.suspend", True))),
    ("final", _edit(_set("spec.final", {"model": {"preset": "tiny"}}))),
    ("drop-final", _edit(_delete("spec.final"))),
]
