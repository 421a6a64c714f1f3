"""The DataMixtureSweep CRD on the real API server: the invalid-sweep table refused with its field
paths and messages (the same table `datamix validate` is held to), edits of the search refused
by the CEL transition rules, and the edits that stay allowed (parallelism, suspend, final)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from datamix import GROUP, VERSION
from datamix.sweep_schema import SWEEP_PLURAL
from tests.sweep.sweep_manifests import ALLOWED_EDITS, INVALID_SWEEPS, REFUSED_EDITS, valid_sweep
from testsupport.clusterlib import create_namespace, delete_namespace
from testsupport.experiments import apply_sweep_crd, custom, kubectl_apply

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def sweep_ns(cluster: Any, k8s_client: Any, dmx_crd: None) -> Iterator[str]:
    apply_sweep_crd(cluster)
    name = create_namespace(k8s_client, "t-sweep-admission")
    yield name
    delete_namespace(k8s_client, name, wait_pods=True)


def sweeps(api: Any, namespace: str) -> list[str]:
    items = custom(api).list_namespaced_custom_object(GROUP, VERSION, namespace, SWEEP_PLURAL)["items"]
    return [i["metadata"]["name"] for i in items]


def assert_refused(res: Any, path: str, message: str) -> None:
    """Refused, naming the field and saying why: `path: ...message` (a rule or bound), or one line
    with both (strict decoding: `unknown field "path"`)."""
    assert res.returncode != 0, f"accepted: {res.stdout}"
    same_line = [line for line in res.stderr.splitlines() if path in line and message in line]
    assert same_line or (f"{path}:" in res.stderr and message in res.stderr), (
        f"expected {path!r} with {message!r} in:\n{res.stderr}")


@pytest.mark.parametrize(
    ("manifest", "path", "message"), [pytest.param(m, p, s, id=i) for i, m, p, s in INVALID_SWEEPS]
)
def test_invalid_sweep_is_refused_by_the_api_server(
    cluster: Any, k8s_client: Any, sweep_ns: str, manifest: dict[str, Any], path: str, message: str
) -> None:
    res = kubectl_apply(cluster, sweep_ns, manifest, check=False)
    assert_refused(res, path, message)
    assert manifest["metadata"]["name"] not in sweeps(k8s_client, sweep_ns), "nothing invalid is stored"


def test_edits_of_the_search_are_refused_and_the_others_allowed(
    cluster: Any, k8s_client: Any, sweep_ns: str
) -> None:
    created = valid_sweep("edits")
    kubectl_apply(cluster, sweep_ns, created)
    stored = custom(k8s_client).get_namespaced_custom_object(GROUP, VERSION, sweep_ns, SWEEP_PLURAL, "edits")
    refused: list[tuple[str, Callable[[dict[str, Any]], dict[str, Any]], str, str]] = REFUSED_EDITS
    for case_id, edit, path, message in refused:
        res = kubectl_apply(cluster, sweep_ns, edit(created), check=False)
        assert res.returncode != 0, f"{case_id}: edit accepted"
        assert_refused(res, path, message)
    unchanged = custom(k8s_client).get_namespaced_custom_object(GROUP, VERSION, sweep_ns, SWEEP_PLURAL, "edits")
    assert unchanged["metadata"]["generation"] == stored["metadata"]["generation"]
    for case_id, edit in ALLOWED_EDITS:
        res = kubectl_apply(cluster, sweep_ns, edit(copy.deepcopy(created)), check=False)
        assert res.returncode == 0, f"{case_id}: {res.stderr}"
