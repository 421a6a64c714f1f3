"""The few Kubernetes API calls the operator makes, over the official client (no kopf here).

Every call returns plain dicts (JSON as the API server sent it). Every verb used here is in the
RBAC table of docs/operator.md; keep the two in step.
"""

from __future__ import annotations

import contextlib
import json
import os
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from datamix import GROUP, PLURAL, VERSION
from datamix.names import PYTORCHJOB_GROUP, PYTORCHJOB_PLURAL, PYTORCHJOB_VERSION

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


class NotLeader(KubeError):
    """A write was not sent: this process does not hold the leader Lease (leader.py)."""


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
    def list_jobs(self, namespace: str | None, selector: str) -> list[dict[str, Any]]: ...
    def create_job(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]: ...
    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    def patch_job(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]: ...
    def delete_job(self, namespace: str, name: str) -> None: ...
    def create_configmap(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]: ...
    def get_configmap(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    def list_configmaps(self, namespace: str, selector: str) -> list[dict[str, Any]]: ...
    def delete_configmap(self, namespace: str, name: str) -> None: ...
    def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]: ...
    def create_event(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]: ...
    def patch_event(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]: ...


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
    """KubeApi over plain HTTPS requests on the `kubernetes` client's connection pool.

    The client's generated API methods validate every argument with pydantic (about 80 ms for the
    first call of each method, 10 ms each after): the operator issues the few REST calls it needs
    itself, on the same TLS settings and credentials (thread-safe; one pool)."""

    def __init__(
        self,
        configuration: Any = None,
        job_api: JobApi | None = None,
        pool_size: int = 32,
        fence: Callable[[], float] | None = None,
    ) -> None:
        """`fence`: seconds this process may still write (leader.Leadership.remaining); every
        write is refused when it is not positive, and times out by then."""
        from kubernetes import client

        cfg = configuration or load_client_configuration()
        cfg.connection_pool_maxsize = pool_size
        self.configuration = cfg
        self.api_client = client.ApiClient(cfg)
        self.pool = self.api_client.rest_client.pool_manager
        self.job_api = job_api or JobApi()
        self.host: str = cfg.host.rstrip("/")
        self.timeout = 30.0
        self.fence = fence

    def close(self) -> None:
        self.api_client.close()  # type: ignore[no-untyped-call]

    def _request(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float | None = None,
        object_hook: Callable[[dict[str, Any]], Any] | None = None,
    ) -> Any:
        timeout = timeout or self.timeout
        if method != "GET" and self.fence is not None:
            left = self.fence()
            if left <= 0:
                raise NotLeader(0, f"{method} {path} not sent: this process does not hold the leader lease")
            timeout = min(timeout, left)
        headers = {"Accept": "application/json", "User-Agent": "datamix-operator"}
        auth = self.configuration.get_api_key_with_prefix("BearerToken") or self.configuration.get_api_key_with_prefix(
            "authorization"
        )
        if auth:
            headers["Authorization"] = auth
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body).encode()
        url = self.host + path + ("?" + urllib.parse.urlencode(query) if query else "")
        try:
            resp = self.pool.request(method, url, body=data, headers=headers, timeout=timeout, retries=False)
        except Exception as err:  # urllib3 errors: connection refused, TLS, timeouts
            raise KubeError(0, f"API server unreachable: {err}") from err
        if resp.status >= 400:
            raise _error(resp.status, resp.data)
        return json.loads(resp.data, object_hook=object_hook) if resp.data else {}

    def _dmx(self, namespace: str | None, name: str = "", sub: str = "") -> str:
        ns = f"/namespaces/{namespace}" if namespace else ""
        return f"/apis/{GROUP}/{VERSION}{ns}/{PLURAL}" + (f"/{name}" if name else "") + (f"/{sub}" if sub else "")

    def _jobs(self, namespace: str | None, name: str = "") -> str:
        j = self.job_api
        ns = f"/namespaces/{namespace}" if namespace else ""
        return f"/apis/{j.group}/{j.version}{ns}/{j.plural}" + (f"/{name}" if name else "")

    def _core(self, namespace: str, plural: str, name: str = "") -> str:
        return f"/api/v1/namespaces/{namespace}/{plural}" + (f"/{name}" if name else "")

    def _missing(self) -> str:
        j = self.job_api
        return f"the API server does not serve {j.plural}.{j.group}/{j.version}"

    # -- experiments

    def get_experiment(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self._request("GET", self._dmx(namespace, name), object_hook=without_managed_fields)  # type: ignore[no-any-return]
        except NotFound:
            return None

    def list_experiments(self, namespace: str | None) -> list[dict[str, Any]]:
        return list(self._request("GET", self._dmx(namespace), object_hook=without_managed_fields).get("items") or [])

    def patch_experiment_status(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        # A JSON merge patch of the status subresource: the spec is never written.
        return self._request(  # type: ignore[no-any-return]
            "PATCH", self._dmx(namespace, name, "status"), body=patch, content_type=MERGE_PATCH
        )

    # -- PyTorchJobs

    def list_jobs(self, namespace: str | None, selector: str) -> list[dict[str, Any]]:
        """The jobs matching `selector` in `namespace` (None: in all namespaces), without their
        replica specs (`without_replica_specs`)."""
        try:
            doc = self._request("GET", self._jobs(namespace), query={"labelSelector": selector},
                                object_hook=without_replica_specs)
        except NotFound as err:
            raise ResourceMissing(404, self._missing()) from err
        return list(doc.get("items") or [])

    def create_job(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        body = {**body, "apiVersion": self.job_api.api_version}
        try:
            return self._request("POST", self._jobs(namespace), body=body)  # type: ignore[no-any-return]
        except NotFound as err:
            if (err.body.get("details") or {}).get("kind") == "namespaces":
                raise
            raise ResourceMissing(404, self._missing()) from err

    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self._request("GET", self._jobs(namespace, name))  # type: ignore[no-any-return]
        except NotFound as err:
            if err.body.get("reason") != "NotFound":
                # not a Status about a missing object: the API server serves no such resource
                raise ResourceMissing(404, self._missing()) from err
            return None

    def patch_job(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return self._request(  # type: ignore[no-any-return]
            "PATCH", self._jobs(namespace, name), body=patch, content_type=MERGE_PATCH
        )

    def delete_job(self, namespace: str, name: str) -> None:
        with contextlib.suppress(NotFound):
            self._request("DELETE", self._jobs(namespace, name), body={"propagationPolicy": "Background"})

    # -- ConfigMaps, pods, events

    def create_configmap(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._request("POST", self._core(namespace, "configmaps"), body=body)  # type: ignore[no-any-return]

    def get_configmap(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self._request("GET", self._core(namespace, "configmaps", name))  # type: ignore[no-any-return]
        except NotFound:
            return None

    def list_configmaps(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        doc = self._request("GET", self._core(namespace, "configmaps"), query={"labelSelector": selector})
        return list(doc.get("items") or [])

    def delete_configmap(self, namespace: str, name: str) -> None:
        with contextlib.suppress(NotFound):
            self._request("DELETE", self._core(namespace, "configmaps", name))

    def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        doc = self._request("GET", self._core(namespace, "pods"), query={"labelSelector": selector})
        return list(doc.get("items") or [])

    def create_event(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._request("POST", self._core(namespace, "events"), body=body)  # type: ignore[no-any-return]

    def patch_event(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return self._request(  # type: ignore[no-any-return]
            "PATCH", self._core(namespace, "events", name), body=patch, content_type=MERGE_PATCH
        )

    # -- Leases (leader.py; its own ClientKube, without a fence)

    def _lease(self, namespace: str, name: str = "") -> str:
        return f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases" + (f"/{name}" if name else "")

    def get_lease(self, namespace: str, name: str, timeout: float) -> dict[str, Any] | None:
        try:
            return self._request("GET", self._lease(namespace, name), timeout=timeout)  # type: ignore[no-any-return]
        except NotFound:
            return None

    def create_lease(self, namespace: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        return self._request("POST", self._lease(namespace), body=body, timeout=timeout)  # type: ignore[no-any-return]

    def replace_lease(self, namespace: str, name: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        return self._request(  # type: ignore[no-any-return]
            "PUT", self._lease(namespace, name), body=body, timeout=timeout
        )


def without_managed_fields(obj: dict[str, Any]) -> dict[str, Any]:
    """A `json.loads` object hook: drops metadata.managedFields (server-side apply's bookkeeping,
    about half of an experiment or job; the operator never reads it) as each object is parsed, so
    a LIST of a thousand objects never holds them all. Only an object's metadata (a list there,
    beside its uid) loses it: a tenant's label or annotation of that name is a string and stays."""
    if isinstance(obj.get("managedFields"), list) and "uid" in obj:
        del obj["managedFields"]
    return obj


def without_replica_specs(obj: dict[str, Any]) -> dict[str, Any]:
    """The same for a PyTorchJob, whose spec is also cut to `runPolicy`: the pod templates are
    most of a job, and the reconciler reads only the run policy, metadata and status."""
    obj = without_managed_fields(obj)
    if isinstance(obj.get("pytorchReplicaSpecs"), dict):
        return {"runPolicy": obj["runPolicy"]} if "runPolicy" in obj else {}
    return obj


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
