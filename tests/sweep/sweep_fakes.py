"""An in-memory API server for the sweep reconciler's unit tests (sweeps and experiments), and a
known per-domain loss law to play the trials' results."""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Sequence
from typing import Any

from datamix_operator.kube import AlreadyExists
from datamix_operator.status import same

from datamix.sweep_schema import SWEEP_KIND
from tests.sweep.sweep_manifests import valid_sweep

_uids = itertools.count(1)


def apply_merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = apply_merge_patch(out.get(key), value)
    return out


class FakeSweepApi:
    def __init__(self) -> None:
        self.sweeps: dict[tuple[str, str], dict[str, Any]] = {}
        self.experiments: dict[tuple[str, str], dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.calls: list[str] = []
        self.status_writes = 0
        self._rv = itertools.count(1)

    # test helpers

    def add_sweep(self, body: dict[str, Any], namespace: str = "ns") -> dict[str, Any]:
        obj = copy.deepcopy(body)
        obj["metadata"].update(namespace=namespace, uid=f"uid-{next(_uids)}", generation=1,
                               resourceVersion=str(next(self._rv)))
        self.sweeps[(namespace, obj["metadata"]["name"])] = obj
        return obj

    def edit_sweep(self, name: str, namespace: str = "ns", **spec: Any) -> None:
        obj = self.sweeps[(namespace, name)]
        obj["spec"].update(spec)
        obj["metadata"]["generation"] += 1

    def sweep(self, name: str, namespace: str = "ns") -> dict[str, Any]:
        return self.sweeps[(namespace, name)]

    def finish(self, name: str, losses: dict[str, float] | None, namespace: str = "ns",
               sizes: dict[str, int] | None = None) -> None:
        """Play the experiment operator: the experiment succeeded with these losses (None: failed)
        and, given `sizes`, these per-dataset epochTokens."""
        exp = self.experiments[(namespace, name)]
        if losses is None:
            exp["status"] = {"phase": "Failed"}
        else:
            datasets: list[dict[str, Any]] = [{"name": n, "validationLoss": v} for n, v in losses.items()]
            for d in datasets:
                if sizes and d["name"] in sizes:
                    d["epochTokens"] = sizes[d["name"]]
            exp["status"] = {"phase": "Succeeded", "result": {"datasets": datasets}}

    def unfinished(self, namespace: str = "ns") -> list[str]:
        return sorted(n for (ns, n), e in self.experiments.items()
                      if ns == namespace and (e.get("status") or {}).get("phase") not in ("Succeeded", "Failed"))

    # SweepApi

    def get_sweep(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.calls.append("get_sweep")
        obj = self.sweeps.get((namespace, name))
        return copy.deepcopy(obj) if obj else None

    def list_sweeps(self, namespace: str | None) -> list[dict[str, Any]]:
        return [copy.deepcopy(o) for (ns, _), o in self.sweeps.items() if namespace in (None, ns)]

    def patch_sweep_status(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        self.calls.append("patch_sweep_status")
        obj = self.sweeps[(namespace, name)]
        new = apply_merge_patch(obj.get("status") or {}, patch["status"])
        if not same(new, obj.get("status") or {}):
            obj["status"] = new
            obj["metadata"]["resourceVersion"] = str(next(self._rv))
        self.status_writes += 1
        return copy.deepcopy(obj)

    def list_experiments_labelled(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        self.calls.append("list_experiments")
        key, _, value = selector.partition("=")
        return [copy.deepcopy(e) for (ns, _), e in self.experiments.items()
                if ns == namespace and (e["metadata"].get("labels") or {}).get(key) == value]

    def create_experiment(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append("create_experiment")
        key = (namespace, body["metadata"]["name"])
        if key in self.experiments:
            raise AlreadyExists(409, f"{key[1]} already exists", {"reason": "AlreadyExists"})
        obj = copy.deepcopy(body)
        obj["metadata"].update(namespace=namespace, uid=f"uid-{next(_uids)}", generation=1)
        self.experiments[key] = obj
        return copy.deepcopy(obj)

    def get_experiment(self, namespace: str, name: str) -> dict[str, Any] | None:
        obj = self.experiments.get((namespace, name))
        return copy.deepcopy(obj) if obj else None

    def create_event(self, namespace: str, body: dict[str, Any]) -> None:
        self.events.append(body)


def small_sweep(name: str = "mix", trials: int = 16, parallelism: int = 4, **search: Any) -> dict[str, Any]:
    sweep = valid_sweep(name)
    sweep["spec"]["search"] = {"trials": trials, "parallelism": parallelism, "seed": 3, **search}
    sweep["spec"].pop("final")
    sweep["spec"]["objective"] = {"web": 1, "code": 1, "math": 1}
    assert sweep["kind"] == SWEEP_KIND
    return sweep


# A Data Mixing Law (Ye et al. 2024) per domain: L_j(r) = c_j + k_j exp(sum_i t_ji r_i). Training on
# a domain lowers its own loss and helps its neighbours a little. Its optimum, about
# (0.56, 0.25, 0.19), is far from the uniform mixture (2.9% worse) and inside the simplex.
LAW_DOMAINS = ("web", "code", "math")
LAW_C = (2.0, 1.2, 1.5)
LAW_K = (3.0, 1.0, 0.8)
LAW_T = ((-4.0, -0.3, -0.2), (-0.2, -2.0, -0.4), (-0.1, -0.5, -2.5))


def law_losses(shares: Sequence[float]) -> dict[str, float]:
    return {d: LAW_C[j] + LAW_K[j] * math.exp(sum(t * r for t, r in zip(LAW_T[j], shares, strict=True)))
            for j, d in enumerate(LAW_DOMAINS)}


def law_objective(shares: Sequence[float]) -> float:
    return sum(law_losses(shares).values()) / len(LAW_DOMAINS)


def law_optimum(min_share: Sequence[float] = (0, 0, 0), max_share: Sequence[float] = (1, 1, 1),
                step: float = 0.0025) -> tuple[tuple[float, float, float], float]:
    """The law's best mixture on a fine grid of the 3-simplex within the bounds."""
    best: tuple[tuple[float, float, float], float] = ((1 / 3, 1 / 3, 1 / 3), math.inf)
    n = round(1 / step)
    for a in range(n + 1):
        for b in range(n + 1 - a):
            r = (a * step, b * step, 1 - (a + b) * step)
            if all(lo - 1e-12 <= x <= hi + 1e-12 for x, lo, hi in zip(r, min_share, max_share, strict=True)):
                value = law_objective(r)
                if value < best[1]:
                    best = (r, value)
    return best
