"""The few Kubernetes API calls the operator makes, over the official client (no kopf here).

Every call returns plain dicts (JSON as the API server sent it). Every verb used here is in the
RBAC table of docs/operator.md; keep the two in step.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from typing import Any, Protocol

from datamix import GROUP, PLURAL, VERSION
from datamix_operator.render import PYTORCHJOB_GROUP, PYTORCHJOB_PLURAL, PYTORCHJOB_VERSION

MERGE_PATCH = "application/merge-patch+json"


class KubeError(Exception):
    """An API call failed; `status` is the HTTP status (0: no response)."""

    def __init__(self, status: int, message: str, body: dict[str, Any] | None = None) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.body = body or {}


class NotFound(KubeError):
    pass


class AlreadyExists(KubeError):
    pass


class ResourceMissing(KubeError):
    """The API server does not serve the resource at all (its CRD is missing)."""


@dataclass(frozen=True)
class JobApi:
    """Where PyTorchJobs are served (kubeflow.org/v1 everywhere but in the missing-CRD test)."""

    group: str = PYTORCHJOB_GROUP
    version: str = PYTORCHJOB_VERSION
    plural: str = PYTORCHJOB_PLURAL

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"

    @classmethod
    def parse(cls, text: str) -> JobApi:
        group, _, version = text.partition("/")
        if not group or not version:
            raise ValueError(f"{text!r}: expected GROUP/VERSION, e.g. kubeflow.org/v1")
        return cls(group, version)


class KubeApi(Protocol):
    """What the reconciler needs from the API server (a fake implements it in the unit tests)."""

    job_api: JobApi

    def get_experiment(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    def list_experiments(self, namespace: str | None) -> list[dict[str, Any]]: ...
    def patch_experiment_status(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]: ...
    def list_jobs(self, namespace: str, selector: str) -> list[dict[str, Any]]: ...
    def create_job(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]: ...
    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    def patch_job(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]: ...
    def delete_job(self, namespace: str, name: str) -> None: ...
    def create_configmap(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]: ...
    def get_configmap(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    def list_configmaps(self, namespace: str, selector: str) -> list[dict[str, Any]]: ...
    def delete_configmap(self, namespace: str, name: str) -> None: ...
    def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]: ...
    def create_event(self, namespace: str, body: dict[str, Any]) -> None: ...


def load_client_configuration() -> Any:
    """kubernetes.client.Configuration: $KUBECONFIG if set, else in-cluster, else ~/.kube/config."""
    from kubernetes import client, config

    cfg = client.Configuration()
    if os.environ.get("KUBECONFIG"):
        config.load_kube_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    else:
        try:
            config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
        except config.ConfigException:
            config.load_kube_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    return cfg


class ClientKube:
    """KubeApi over the official `kubernetes` client (thread-safe; one connection pool)."""

    def __init__(self, configuration: Any = None, job_api: JobApi | None = None, pool_size: int = 32) -> None:
        from kubernetes import client

        cfg = configuration or load_client_configuration()
        cfg.connection_pool_maxsize = pool_size
        self.configuration = cfg
        self.api_client = client.ApiClient(cfg)
        self.core = client.CoreV1Api(self.api_client)
        self.custom = client.CustomObjectsApi(self.api_client)
        self.job_api = job_api or JobApi()
        self.host: str = cfg.host

    def close(self) -> None:
        self.api_client.close()  # type: ignore[no-untyped-call]

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            resp = fn(*args, _preload_content=False, **kwargs)
        except ApiException as err:
            raise _error(err.status or 0, err.body) from err
        except (HTTPError, OSError) as err:
            raise KubeError(0, f"API server unreachable: {err}") from err
        if resp.status >= 400:
            raise _error(resp.status, resp.data)
        data = resp.data
        return json.loads(data) if data else {}

    def _missing(self) -> str:
        j = self.job_api
        return f"the API server does not serve {j.plural}.{j.group}/{j.version}"

    # -- experiments

    def get_experiment(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self._call(  # type: ignore[no-any-return]
                self.custom.get_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, name
            )
        except NotFound:
            return None

    def list_experiments(self, namespace: str | None) -> list[dict[str, Any]]:
        if namespace is None:
            doc = self._call(self.custom.list_cluster_custom_object, GROUP, VERSION, PLURAL)
        else:
            doc = self._call(self.custom.list_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL)
        return list(doc.get("items") or [])

    def patch_experiment_status(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        # A JSON merge patch of the status subresource: the spec is never written.
        return self._call(  # type: ignore[no-any-return]
            self.custom.patch_namespaced_custom_object_status, GROUP, VERSION, namespace, PLURAL, name, patch,
            _content_type=MERGE_PATCH,
        )

    # -- PyTorchJobs

    def list_jobs(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        j = self.job_api
        try:
            doc = self._call(
                self.custom.list_namespaced_custom_object, j.group, j.version, namespace, j.plural,
                label_selector=selector,
            )
        except NotFound as err:
            raise ResourceMissing(404, self._missing()) from err
        return list(doc.get("items") or [])

    def create_job(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        j = self.job_api
        body = {**body, "apiVersion": j.api_version}
        try:
            return self._call(  # type: ignore[no-any-return]
                self.custom.create_namespaced_custom_object, j.group, j.version, namespace, j.plural, body
            )
        except NotFound as err:
            if (err.body.get("details") or {}).get("kind") == "namespaces":
                raise
            raise ResourceMissing(404, self._missing()) from err

    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        j = self.job_api
        try:
            return self._call(  # type: ignore[no-any-return]
                self.custom.get_namespaced_custom_object, j.group, j.version, namespace, j.plural, name
            )
        except NotFound:
            return None

    def patch_job(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        j = self.job_api
        return self._call(  # type: ignore[no-any-return]
            self.custom.patch_namespaced_custom_object, j.group, j.version, namespace, j.plural, name, patch,
            _content_type=MERGE_PATCH,
        )

    def delete_job(self, namespace: str, name: str) -> None:
        j = self.job_api
        with contextlib.suppress(NotFound):
            self._call(
                self.custom.delete_namespaced_custom_object, j.group, j.version, namespace, j.plural, name,
                propagation_policy="Background",
            )

    # -- ConfigMaps, pods, events

    def create_configmap(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._call(self.core.create_namespaced_config_map, namespace, body)  # type: ignore[no-any-return]

    def get_configmap(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self._call(self.core.read_namespaced_config_map, name, namespace)  # type: ignore[no-any-return]
        except NotFound:
            return None

    def list_configmaps(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        doc = self._call(self.core.list_namespaced_config_map, namespace, label_selector=selector)
        return list(doc.get("items") or [])

    def delete_configmap(self, namespace: str, name: str) -> None:
        with contextlib.suppress(NotFound):
            self._call(self.core.delete_namespaced_config_map, name, namespace)

    def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        doc = self._call(self.core.list_namespaced_pod, namespace, label_selector=selector)
        return list(doc.get("items") or [])

    def create_event(self, namespace: str, body: dict[str, Any]) -> None:
        self._call(self.core.create_namespaced_event, namespace, body)


def _error(status: int, raw: Any) -> KubeError:
    body: dict[str, Any] = {}
    try:
        body = json.loads(raw) if raw else {}
    except (TypeError, ValueError):
        body = {}
    if not isinstance(body, dict):
        body = {}
    message = str(body.get("message") or raw or "")
    if status == 404:
        return NotFound(status, message, body)
    if status == 409 and body.get("reason") == "AlreadyExists":
        return AlreadyExists(status, message, body)
    return KubeError(status, message, body)
