from __future__ import annotations

import contextlib
import socket
import threading
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


@pytest.fixture
def closing_endpoint() -> Iterator[str]:
    """A loopback address that accepts each connection and closes it at once, before
    gRPC's HTTP/2 handshake completes: no request can ever be sent there."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)

    def close_each() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:  # the listener was closed: the test is over
                return
            conn.close()

    closer = threading.Thread(target=close_each, daemon=True)
    closer.start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        closer.join(timeout=5)
