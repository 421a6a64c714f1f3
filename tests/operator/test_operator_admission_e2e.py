"""The invalid-manifest table of the API issue through `kubectl apply` against the real API server
(each refused with its field path and message), the imported seed baseline accepted, and the
inputs only the operator can catch ending Stalled/InvalidSpec."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from datamix import GROUP, PLURAL, VERSION
from testsupport.clusterlib import create_namespace, delete_namespace
from testsupport.experiments import capture, condition, get_experiment, kubectl_apply, list_jobs, wait_condition
from testsupport.operator_process import DATAMIX

pytestmark = pytest.mark.cluster

try:
    from tests.api.invalid_manifests import INVALID_MANIFESTS, OPERATOR_ONLY_INVALID
except ImportError:  # the API issue's table is not there (yet)
    INVALID_MANIFESTS, OPERATOR_ONLY_INVALID = [], []

SEED = Path("/work/shared/seeds/openseek-configs/OpenSeek-Small-v1-Baseline/config_deepseek_v3_1_4b.yaml")


@pytest.fixture(scope="module")
def admission_ns(k8s_client: Any, dmx_crd: None) -> Iterator[str]:
    name = create_namespace(k8s_client, "t-admission")
    yield name
    delete_namespace(k8s_client, name, wait_pods=True)


def experiments(api: Any, namespace: str) -> list[str]:
    from kubernetes import client

    items = client.CustomObjectsApi(api).list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
    return [i["metadata"]["name"] for i in items]


@pytest.mark.skipif(not INVALID_MANIFESTS, reason="tests/api/invalid_manifests.py has no INVALID_MANIFESTS")
@pytest.mark.parametrize(
    ("manifest", "path", "message"),
    [pytest.param(m, p, s, id=i) for i, m, p, s in INVALID_MANIFESTS or [("-", {}, "", "")]],
)
def test_invalid_manifest_is_refused_by_the_api_server(
    cluster: Any, k8s_client: Any, admission_ns: str, manifest: dict[str, Any], path: str, message: str
) -> None:
    res = kubectl_apply(cluster, admission_ns, manifest, check=False)
    assert res.returncode != 0, f"accepted: {res.stdout}"
    lines = [line for line in res.stderr.splitlines() if path in line and message in line]
    assert lines or (f"{path}:" in res.stderr and message in res.stderr), (
        f"expected {path!r} with {message!r} in:\n{res.stderr}")
    assert manifest["metadata"]["name"] not in experiments(k8s_client, admission_ns), "nothing invalid is stored"


def test_imported_seed_baseline_is_accepted(cluster: Any, k8s_client: Any, admission_ns: str, tmp_path: Path) -> None:
    if not SEED.is_file():
        pytest.skip(f"{SEED} is absent (the shared seeds are not mounted here)")
    out = tmp_path / "baseline.yaml"
    subprocess.run([DATAMIX, "import", str(SEED), "-o", str(out)], check=True,
                   capture_output=True, text=True)
    manifest = yaml.safe_load(out.read_text())
    res = cluster.kubectl("apply", "-n", admission_ns, "-f", str(out), check=False)
    assert res.returncode == 0, res.stderr
    stored = get_experiment(k8s_client, admission_ns, manifest["metadata"]["name"])
    assert len(stored["spec"]["datasets"]["mixture"]) == len(manifest["spec"]["datasets"]["mixture"]) == 84
    cluster.kubectl("delete", "-n", admission_ns, "-f", str(out))


@pytest.mark.skipif(not OPERATOR_ONLY_INVALID, reason="tests/api/invalid_manifests.py has no OPERATOR_ONLY_INVALID")
def test_input_only_the_operator_can_catch_ends_stalled_invalid_spec(
    cluster: Any, k8s_client: Any, namespace: str, start_operator: Any
) -> None:
    op = start_operator([namespace])
    for case_id, manifest, path, message in OPERATOR_ONLY_INVALID:
        manifest = {**manifest, "metadata": {**manifest["metadata"], "name": f"bad-{case_id}"[:40]}}
        name = manifest["metadata"]["name"]
        res = kubectl_apply(cluster, namespace, manifest, check=False)
        assert res.returncode == 0, f"{case_id}: the schema cannot catch this one: {res.stderr}"
        exp = wait_condition(k8s_client, namespace, name, "Stalled", "InvalidSpec", op=op)
        stalled = condition(exp, "Stalled")
        assert path in stalled["message"], (case_id, stalled)
        assert message in stalled["message"], (case_id, stalled)
        assert exp["status"]["phase"] == "Pending"
        assert condition(exp, "Created")["status"] == "False"
        capture("stalled-invalid-spec", exp)
    assert list_jobs(k8s_client, namespace) == []
    assert op.returncode is None
