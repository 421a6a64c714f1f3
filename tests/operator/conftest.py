"""Fixtures of the operator's e2e tests (marked `cluster`); the unit tests need none of them.

  dmx_crd        (session) the DataMixtureExperiment CRD applied (crds/, or $DATAMIX_E2E_CRD)
  gpu_pool       (session) a private pool of fake nodes: 4 x H100 (8 GPUs), 2 x A100 (8 GPUs),
                 labelled and tainted `datamix.io/e2e-pool=<id>`; experiments made with
                 `e2e_manifest(..., pool=gpu_pool)` land there and nowhere else, so parallel users
                 of the shared default pool cannot starve these tests
  start_operator (function) starts `datamix operator --namespace ...` as a subprocess with
                 $DATAMIX_E2E_KUBECONFIG or the cluster's kubeconfig; stopped after the test
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from testsupport.clusterlib import A100, H100
from testsupport.experiments import A100_MEMORY, H100_MEMORY, apply_crd, operator_kubeconfig, private_pool
from testsupport.operator_process import OperatorProcess


@pytest.fixture(scope="session")
def dmx_crd(cluster: Any) -> None:
    apply_crd(cluster)


@pytest.fixture(scope="session")
def gpu_pool(k8s_client: Any) -> Iterator[str]:
    with private_pool(k8s_client, [("h100", 4, H100, H100_MEMORY, 8), ("a100", 2, A100, A100_MEMORY, 8)]) as (pool, _):
        yield pool


@pytest.fixture
def start_operator(
    cluster: Any, dmx_crd: None, request: pytest.FixtureRequest
) -> Iterator[Callable[..., OperatorProcess]]:
    started: list[OperatorProcess] = []

    def start(namespaces: list[str], **kwargs: Any) -> OperatorProcess:
        env = kwargs.pop("start_env", None)
        wait = kwargs.pop("wait", True)
        op = OperatorProcess(operator_kubeconfig(cluster), namespaces, **kwargs)
        started.append(op)
        return op.start(env=env, wait=wait)

    yield start
    for op in started:
        op.stop()
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        for op in started:
            print(f"\n--- operator log {op.log_path} ---\n{op.log_tail(120)}", file=sys.stderr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call":
        item.rep_call = rep  # type: ignore[attr-defined]
