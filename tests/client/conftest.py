from __future__ import annotations

import contextlib
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


@contextlib.contextmanager
def refused_endpoint() -> Iterator[str]:
    """A loopback address that refuses connections for as long as the block runs: the
    port stays bound but never listens, so no other process (other engineers' servers
    run on this machine too) can take it and receive our requests."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture
def dead_endpoint() -> Iterator[str]:
    with refused_endpoint() as endpoint:
        yield endpoint
