"""Fixtures of the trainer tests (helpers are in runs.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

# Small domains build in seconds and still hold more than a short run reads.
TEST_DOMAIN_BYTES = 250_000


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from datamix_trainer import demo_data

    directory = tmp_path_factory.mktemp("demo-data")
    demo_data.build(directory, log=lambda _: None, max_domain_bytes=TEST_DOMAIN_BYTES)
    return directory
