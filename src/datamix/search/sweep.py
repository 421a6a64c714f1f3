"""The DataMixtureSweep manifest: a plain typed reader, and the experiments a sweep creates.

A sweep's `spec.experiment` is a DataMixtureExperiment spec for the proxy trials (its mixture
names the domains, its weights are the prior); `spec.search` says how many trials and how they
are drawn; `spec.objective` weighs the per-domain validation losses; `spec.regression` picks the
fit; `spec.final` (optional) is the model, training and resources of the full-size run with the
proposed mixture. Trial i is the experiment `<sweep>-t<iii>` with trial i's mixture; the final
run is `<sweep>-final`. Both are pure functions of the sweep (the operator creates them, and
`datamix sweep run` trains them here).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from datamix import API_VERSION, KIND
from datamix.errors import UserError
from datamix.experiment import build_run_spec, mixture_shares
from datamix.schema import MAX_NAME_LENGTH
from datamix.search.epochs import Repetition
from datamix.search.fit import SWEEP_FIELDS, FitResult, fit_and_propose
from datamix.search.regression import DEFAULT_REGRESSION, REGRESSIONS
from datamix.search.sampler import SAMPLERS, trial_mixture
from datamix.search.simplex import Bounds
from datamix.search.table import MIN_TRIALS, TrialTable

SWEEP_KIND = "DataMixtureSweep"
MAX_TRIALS = 512
FINAL_SUFFIX = "-final"
TRIAL_SUFFIX_LENGTH = len("-t000")
MAX_SWEEP_NAME_LENGTH = MAX_NAME_LENGTH - max(len(FINAL_SUFFIX), TRIAL_SUFFIX_LENGTH)
SWEEP_LABEL = "datamix.io/sweep"
TRIAL_LABEL = "datamix.io/trial"
# The API requires weight > 0: a share of 0 (a domain held out of training, evaluated only) is
# written as this weight, which megatron's blend never picks in a run of under 10^8 samples
# (it picks the dataset furthest below its target count, and this one is never furthest).
ZERO_SHARE_WEIGHT = 1e-9
FINAL_FIELDS = ("model", "training", "resources")
SEARCH_FIELDS = ("trials", "parallelism", "sampler", "seed", "minShare", "maxShare", "maxEpochs", "maxFailedTrials")
SPEC_FIELDS = ("experiment", "search", "objective", "regression", "final", "suspend")


@dataclass(frozen=True)
class Search:
    trials: int
    parallelism: int = 1
    sampler: str = "dirichlet"
    seed: int = 0
    min_share: dict[str, float] | None = None
    max_share: dict[str, float] | None = None
    max_epochs: float | None = None
    max_failed_trials: int = 0


@dataclass(frozen=True)
class Sweep:
    name: str
    namespace: str | None
    experiment: dict[str, Any]  # a DataMixtureExperiment spec
    search: Search
    objective: dict[str, float] | None
    regression: str
    final: dict[str, Any] | None
    suspend: bool
    domains: tuple[str, ...]
    prior: np.ndarray
    bounds: Bounds

    def trial_name(self, index: int) -> str:
        return f"{self.name}-t{index:03d}"

    @property
    def final_name(self) -> str:
        return self.name + FINAL_SUFFIX

    def trial_shares(self, index: int) -> np.ndarray:
        """Trial `index`'s mixture: a pure function of (seed, index, prior, bounds)."""
        return trial_mixture(self.search.seed, index, self.prior, self.bounds, self.search.sampler)

    def trial_manifest(self, index: int) -> dict[str, Any]:
        return self.experiment_manifest(self.trial_name(index), self.trial_shares(index), {TRIAL_LABEL: str(index)})

    def final_manifest(self, shares: np.ndarray) -> dict[str, Any]:
        manifest = self.experiment_manifest(self.final_name, shares, {TRIAL_LABEL: "final"})
        for key in FINAL_FIELDS:
            if self.final and key in self.final:
                manifest["spec"][key] = copy.deepcopy(self.final[key])
        return manifest

    @property
    def evaluated(self) -> tuple[str, ...]:
        """The domains with validation data: the table's loss columns."""
        return tuple(d["name"] for d in self.experiment["datasets"]["mixture"] if d.get("validationPath"))

    def final_tokens(self) -> int:
        """Tokens the final run trains on: whole steps of global batches of seqLength tokens (the
        run spec's rule for trainSamples, trainTokens or trainSteps), from `final.training`, or
        the trials' own length when there is no `final`."""
        t = build_run_spec(self.final_manifest(self.prior)).training
        return t.train_steps * t.global_batch_size * t.seq_length

    def repetition(self, sizes: Mapping[str, int]) -> Repetition | None:
        """maxEpochs over these domain sizes (tokens per epoch) and the final run; None without
        maxEpochs or sizes."""
        if self.search.max_epochs is None or not sizes:
            return None
        return Repetition(self.search.max_epochs, dict(sizes), self.final_tokens())

    def repetition_bounds(self, sizes: Mapping[str, int]) -> Bounds:
        """The sweep's bounds with maxEpochs's caps; a UserError naming maxEpochs and the fix when
        no mixture meets them."""
        repetition = self.repetition(sizes)
        if repetition is None:
            return self.bounds
        return repetition.bound(self.bounds, SWEEP_FIELDS.max_epochs, SWEEP_FIELDS.final_length)

    def trials_table(self, finished: Sequence[tuple[str, np.ndarray, Sequence[float | None]]]) -> TrialTable:
        """The table of finished trials: (name, shares, validation loss per dataset in mixture order).

        A trial without a loss for some evaluated domain is left out (it cannot be compared)."""
        positions = [self.domains.index(name) for name in self.evaluated]
        rows = [(n, s, losses) for n, s, losses in finished if all(losses[i] is not None for i in positions)]
        if len(rows) < MIN_TRIALS:
            raise UserError(
                f"{self.name}: {len(rows)} trials have every validation loss; a fit needs at least {MIN_TRIALS}"
            )
        return TrialTable(
            trials=tuple(n for n, _, _ in rows),
            domains=self.domains,
            shares=np.stack([s for _, s, _ in rows]),
            loss_domains=self.evaluated,
            losses=np.array([[losses[i] for i in positions] for _, _, losses in rows], dtype=float),
        )

    def observed_objective(self, validation_loss: Sequence[float | None]) -> float | None:
        """A finished run's objective (its validation losses in mixture order), None if one is missing."""
        losses = [validation_loss[self.domains.index(name)] for name in self.evaluated]
        if any(v is None for v in losses):
            return None
        weights = np.array([self.objective.get(n, 0.0) if self.objective else 1.0 for n in self.evaluated])
        return float(np.dot(weights / weights.sum(), np.array(losses, dtype=float)))

    def fit(self, table: TrialTable, domain_tokens: Mapping[str, int] | None = None) -> FitResult:
        """Fit the sweep's regression to its trials and propose (maxEpochs applies when sizes are given)."""
        return fit_and_propose(
            table,
            objective=self.objective,
            regression=self.regression,
            min_share=self.search.min_share,
            max_share=self.search.max_share,
            max_epochs=self.search.max_epochs,
            domain_tokens=domain_tokens,
            final_tokens=self.final_tokens() if domain_tokens and self.search.max_epochs is not None else None,
            prior=self.prior,
            seed=self.search.seed,
            fields=SWEEP_FIELDS,
        )

    def experiment_manifest(self, name: str, shares: np.ndarray, labels: dict[str, str]) -> dict[str, Any]:
        """The sweep's experiment with `shares` as its mixture weights."""
        spec = copy.deepcopy(self.experiment)
        for dataset, share in zip(spec["datasets"]["mixture"], shares, strict=True):
            dataset["weight"] = float(share) if share > 0 else ZERO_SHARE_WEIGHT
        metadata: dict[str, Any] = {"name": name, "labels": {SWEEP_LABEL: self.name, **labels}}
        if self.namespace:
            metadata["namespace"] = self.namespace
        return {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata, "spec": spec}


def load_sweep(path: str | Path) -> Sweep:
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise UserError(f"{path}: cannot read the file ({err.strerror}); check the path") from err
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as err:
        raise UserError(f"{path}: malformed YAML; fix the syntax ({str(err).splitlines()[0]})") from err
    if len(docs) != 1 or not isinstance(docs[0], dict):
        raise UserError(f"{path}: expected exactly one YAML mapping (a {SWEEP_KIND}), found {len(docs)} documents")
    try:
        return parse_sweep(docs[0])
    except UserError as err:
        raise UserError(f"{path}: {err}") from None


def parse_sweep(manifest: dict[str, Any]) -> Sweep:
    """Read and check a DataMixtureSweep; the first problem is a UserError naming the field."""
    from datamix.validation import validate_manifest

    if manifest.get("kind") != SWEEP_KIND or manifest.get("apiVersion") != API_VERSION:
        raise UserError(
            f"apiVersion/kind are {manifest.get('apiVersion')!r}/{manifest.get('kind')!r}; "
            f"expected {API_VERSION}/{SWEEP_KIND}"
        )
    meta = _mapping(manifest.get("metadata"), "metadata")
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise UserError("metadata.name: Required value: give the sweep a name")
    if len(name) > MAX_SWEEP_NAME_LENGTH:
        raise UserError(
            f"metadata.name: {len(name)} characters; at most {MAX_SWEEP_NAME_LENGTH} (trial names add "
            f"`-t000` and the final run `{FINAL_SUFFIX}`)"
        )
    spec = _mapping(manifest.get("spec"), "spec")
    _known(spec, SPEC_FIELDS, "spec")
    experiment = _mapping(spec.get("experiment"), "spec.experiment")

    probe = {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": name + FINAL_SUFFIX}, "spec": experiment}
    problems = validate_manifest(probe)
    if problems:
        first = problems[0]
        where = "spec.experiment" + first.path[len("spec") :] if first.path.startswith("spec") else first.path
        raise UserError(f"{where}: {first.message}")
    mixture = experiment["datasets"]["mixture"]
    domains = tuple(d["name"] for d in mixture)

    raw = _mapping(spec.get("search"), "spec.search")
    _known(raw, SEARCH_FIELDS, "spec.search")
    trials = _integer(raw.get("trials"), "spec.search.trials", 1, MAX_TRIALS, required=True)
    parallelism = _integer(raw.get("parallelism", 1), "spec.search.parallelism", 1, MAX_TRIALS)
    if parallelism > trials:
        raise UserError(f"spec.search.parallelism: {parallelism} is above trials ({trials}); lower it")
    sampler = raw.get("sampler", "dirichlet")
    if sampler not in SAMPLERS:
        raise UserError(f"spec.search.sampler: {sampler!r} is not one of {', '.join(SAMPLERS)}")
    search = Search(
        trials=trials,
        parallelism=parallelism,
        sampler=sampler,
        seed=_integer(raw.get("seed", 0), "spec.search.seed", 0, 2**32 - 1),
        min_share=_share_map(raw.get("minShare"), "spec.search.minShare"),
        max_share=_share_map(raw.get("maxShare"), "spec.search.maxShare"),
        max_epochs=_positive(raw.get("maxEpochs"), "spec.search.maxEpochs"),
        max_failed_trials=_integer(raw.get("maxFailedTrials", 0), "spec.search.maxFailedTrials", 0, MAX_TRIALS),
    )
    bounds = Bounds.make(domains, search.min_share, search.max_share, "spec.search.minShare", "spec.search.maxShare")

    objective = _share_map(spec.get("objective"), "spec.objective", upper=math.inf)
    if objective:
        evaluated = {d["name"] for d in mixture if d.get("validationPath")}
        for domain in objective:
            if domain not in evaluated:
                raise UserError(
                    f"spec.objective: {domain!r} has no validationPath in spec.experiment.datasets.mixture; "
                    "weight only domains with validation data"
                )
        if not any(w > 0 for w in objective.values()):
            raise UserError("spec.objective: every weight is 0; give at least one domain a weight above 0")
    elif not any(d.get("validationPath") for d in mixture):
        raise UserError("spec.experiment.datasets.mixture: no dataset has a validationPath; the objective needs one")
    regression = spec.get("regression", DEFAULT_REGRESSION)
    if regression not in REGRESSIONS:
        raise UserError(f"spec.regression: {regression!r} is not one of {', '.join(REGRESSIONS)}")
    final = spec.get("final")
    if final is not None:
        final = _mapping(final, "spec.final")
        _known(final, FINAL_FIELDS, "spec.final")
        probe["spec"] = {**experiment, **final}
        problems = validate_manifest(probe)
        if problems:
            first = problems[0]
            where = "spec.final" + first.path[len("spec") :] if first.path.startswith("spec") else first.path
            raise UserError(f"{where}: {first.message}")
    suspend = spec.get("suspend", False)
    if not isinstance(suspend, bool):
        raise UserError(f"spec.suspend: {suspend!r} is not true or false")
    return Sweep(
        name=name,
        namespace=meta.get("namespace"),
        experiment=experiment,
        search=search,
        objective=objective,
        regression=regression,
        final=final,
        suspend=suspend,
        domains=domains,
        prior=np.array(mixture_shares(mixture)),
        bounds=bounds,
    )


def _mapping(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise UserError(f"{field}: Required value: expected a mapping, got {type(value).__name__}")
    return value


def _known(value: dict[str, Any], fields: tuple[str, ...], where: str) -> None:
    for key in value:
        if key not in fields:
            raise UserError(f"{where}.{key}: unknown field; expected one of {', '.join(fields)}")


def _integer(value: Any, field: str, low: int, high: int, required: bool = False) -> int:
    if value is None and required:
        raise UserError(f"{field}: Required value: give a whole number from {low} to {high}")
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise UserError(f"{field}: {value!r}; give a whole number from {low} to {high}")
    return value


def _positive(value: Any, field: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise UserError(f"{field}: {value!r}; give a number above 0")
    return float(value)


def _share_map(value: Any, field: str, upper: float = 1.0) -> dict[str, float] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise UserError(f"{field}: expected a mapping of domain name to number, got {type(value).__name__}")
    out: dict[str, float] = {}
    for key, number in value.items():
        if isinstance(number, bool) or not isinstance(number, int | float) or not 0 <= number <= upper:
            bound = "from 0 to 1" if upper == 1.0 else "of at least 0"
            raise UserError(f"{field}.{key}: {number!r}; give a number {bound}")
        out[str(key)] = float(number)
    return out
