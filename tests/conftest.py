"""Shared pytest fixtures.

Local Kubernetes control plane (tests marked `cluster`):
  cluster     (session) clusterlib.Cluster: reuses the healthy cluster of our state dir
              ($DATAMIX_CLUSTER_DIR or ~/.cache/datamix/cluster) or starts one with
              `python -m tools.cluster up` (building the binaries if needed); stops it at the end only
              if it started it and no other pytest session is using it (DATAMIX_KEEP_CLUSTER=1
              keeps it running).
  k8s_client  (session) kubernetes.client.ApiClient for that cluster.
  namespace   (function) a fresh namespace per test (default ServiceAccount ready); deleted after,
              waiting until its pods are gone (so the fake GPUs are free for the next test).
Helpers (wait_for, kubectl, add_fake_nodes, pytorchjob_manifest, ...) are in testsupport/clusterlib.py;
the shared test-support package (testsupport/) is imported from the repository root.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from testsupport import clusterlib


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cluster: needs the local Kubernetes control plane (tools/cluster)")


@pytest.fixture(scope="session")
def cluster() -> Iterator[clusterlib.Cluster]:
    with clusterlib.cluster_session(keep=bool(os.environ.get("DATAMIX_KEEP_CLUSTER"))) as c:
        yield c


@pytest.fixture(scope="session")
def k8s_client(cluster: clusterlib.Cluster) -> Iterator[Any]:
    api = cluster.api_client()
    yield api
    api.close()


@pytest.fixture
def namespace(request: pytest.FixtureRequest, k8s_client: Any) -> Iterator[str]:
    name = clusterlib.create_namespace(k8s_client, f"t-{request.node.name}")
    yield name
    clusterlib.delete_namespace(k8s_client, name, wait_pods=True)
