"""The objects the operator creates for an experiment's current run, as plain dicts.

Pure functions (no kopf, no API calls): `datamix render` prints exactly these, and the
reconciler creates exactly these.
"""

from __future__ import annotations

from typing import Any

from datamix import GROUP
from datamix.experiment import build_run_spec, run_id, run_name
from datamix.runspec import RUN_SPEC_KEY

MANAGED_BY = "datamix-operator"
LABEL_EXPERIMENT = f"{GROUP}/experiment"
LABEL_RUN = f"{GROUP}/run"


def child_labels(manifest: dict[str, Any]) -> dict[str, str]:
    """The project's own labels; never the parent's (Argo CD would prune children carrying its
    tracking label)."""
    return {
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/part-of": "datamix",
        LABEL_EXPERIMENT: manifest["metadata"]["name"],
        LABEL_RUN: run_id(manifest),
    }


def owner_references(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    meta = manifest["metadata"]
    if not meta.get("uid"):
        return []  # rendered offline: the API server has not assigned a uid yet
    return [
        {
            "apiVersion": manifest["apiVersion"],
            "kind": manifest["kind"],
            "name": meta["name"],
            "uid": meta["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]


def child_metadata(manifest: dict[str, Any], namespace: str) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": run_name(manifest),
        "namespace": namespace,
        "labels": child_labels(manifest),
    }
    owners = owner_references(manifest)
    if owners:
        meta["ownerReferences"] = owners
    return meta


def render_configmap(manifest: dict[str, Any], namespace: str) -> dict[str, Any]:
    spec = build_run_spec(manifest, namespace=namespace)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": child_metadata(manifest, namespace),
        "data": {RUN_SPEC_KEY: spec.to_json()},
    }


def render_children(manifest: dict[str, Any], namespace: str | None = None) -> list[dict[str, Any]]:
    """Every object the operator creates for the manifest's current run, in creation order."""
    ns = namespace or manifest["metadata"].get("namespace") or "default"
    return [render_configmap(manifest, ns)]
