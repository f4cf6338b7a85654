from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from tests.client.fake_server import FakeCluster


@pytest.fixture
def fake_cluster() -> Iterator[FakeCluster]:
    cluster = FakeCluster(3)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def dead_endpoint() -> str:
    """A loopback address nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"
