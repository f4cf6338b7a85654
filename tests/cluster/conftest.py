"""Fixtures for the cluster tier: real `kvraft serve` processes on loopback.

Clusters are module-scoped where the tests of a module leave them healthy, so the tier
starts few processes; a test that breaks its cluster on purpose starts its own."""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from .harness import LocalCluster


@pytest.fixture(scope="module")
def cluster3() -> Iterator[LocalCluster]:
    with LocalCluster.start(3) as cluster:
        cluster.wait_leader()
        yield cluster


@pytest.fixture(scope="module")
def cluster5() -> Iterator[LocalCluster]:
    with LocalCluster.start(5) as cluster:
        cluster.wait_leader()
        yield cluster
