"""The API calls of the sweep reconciler (every one is in docs/operator.md's RBAC table)."""

from __future__ import annotations

import contextlib
from typing import Any, Protocol

from datamix import GROUP, PLURAL, VERSION
from datamix.sweep_schema import SWEEP_PLURAL
from datamix_operator.kube import MERGE_PATCH, ClientKube, NotFound


class SweepApi(Protocol):
    """What the sweep reconciler needs from the API server (a fake implements it in unit tests)."""

    def get_sweep(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    def list_sweeps(self, namespace: str | None) -> list[dict[str, Any]]: ...
    def patch_sweep_status(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]: ...
    def list_experiments_labelled(self, namespace: str, selector: str) -> list[dict[str, Any]]: ...
    def create_experiment(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]: ...
    def get_experiment(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    def create_event(self, namespace: str, body: dict[str, Any]) -> None: ...


class SweepClient:
    """SweepApi over the experiment reconciler's client (same pool, credentials and errors)."""

    def __init__(self, client: ClientKube) -> None:
        self.client = client

    def _path(self, plural: str, namespace: str | None, name: str = "", sub: str = "") -> str:
        ns = f"/namespaces/{namespace}" if namespace else ""
        return f"/apis/{GROUP}/{VERSION}{ns}/{plural}" + (f"/{name}" if name else "") + (f"/{sub}" if sub else "")

    def get_sweep(self, namespace: str, name: str) -> dict[str, Any] | None:
        with contextlib.suppress(NotFound):
            return self.client._request("GET", self._path(SWEEP_PLURAL, namespace, name))  # type: ignore[no-any-return]
        return None

    def list_sweeps(self, namespace: str | None) -> list[dict[str, Any]]:
        return list(self.client._request("GET", self._path(SWEEP_PLURAL, namespace)).get("items") or [])

    def patch_sweep_status(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return self.client._request(  # type: ignore[no-any-return]
            "PATCH", self._path(SWEEP_PLURAL, namespace, name, "status"), body=patch, content_type=MERGE_PATCH
        )

    def list_experiments_labelled(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        doc = self.client._request("GET", self._path(PLURAL, namespace), query={"labelSelector": selector})
        return list(doc.get("items") or [])

    def create_experiment(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.client._request("POST", self._path(PLURAL, namespace), body=body)  # type: ignore[no-any-return]

    def get_experiment(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.client.get_experiment(namespace, name)

    def create_event(self, namespace: str, body: dict[str, Any]) -> None:
        self.client.create_event(namespace, body)
