"""Client.batch against a real 3-node cluster: one atomic entry of puts and deletes,
visible through every member, deletes reported in order, limits as InvalidArgument."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest

from kvraft.client import Client, Delete, InvalidArgument, Put, Unavailable

from .harness import LEADER_TIMEOUT_S, POLL_INTERVAL_S, LocalCluster

T = TypeVar("T")

pytestmark = pytest.mark.cluster

OPS_IN_BULK = 3_000  # about 300 KB: a bulk-load sized entry, well under the 4 MiB limit


def retried(fn: Callable[[], T]) -> T:
    """Call `fn` until it does not fail with Unavailable (an election on a loaded
    machine); every batch below gives the same answer when applied twice."""
    deadline = time.monotonic() + LEADER_TIMEOUT_S
    while True:
        try:
            return fn()
        except Unavailable:
            if time.monotonic() >= deadline:
                raise
        time.sleep(POLL_INTERVAL_S)


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster.start(3) as c:
        c.wait_leader()
        yield c


def test_client_batch_end_to_end(cluster: LocalCluster) -> None:
    with Client(cluster.endpoints(), timeout=30.0) as kv:
        deleted = retried(lambda: kv.batch([
            Put("cb/old", "x"), Put("cb/a", "1"), Delete("cb/old"), ("put", "cb/b", "2"),
            ("delete", "cb/never"), Delete("cb/a")]))
        assert deleted == [True, False, True]  # each key's earlier put in the same batch
        bulk = [Put(b"cb/bulk/%05d" % i, b"v%d" % i * 10) for i in range(OPS_IN_BULK)]
        assert retried(lambda: kv.batch(bulk)) == []
        for member in cluster.nodes:
            with Client(cluster.endpoints([member]), timeout=30.0) as one:
                assert retried(lambda c=one: c.get("cb/a")) is None
                assert retried(lambda c=one: c.get("cb/old")) is None
                assert retried(lambda c=one: c.get("cb/b")) == b"2"
                assert retried(lambda c=one: c.get(b"cb/bulk/%05d" % (OPS_IN_BULK - 1))) == \
                    b"v%d" % (OPS_IN_BULK - 1) * 10
        assert len(retried(lambda: kv.scan(b"cb/bulk/", b"cb/bulk0"))) == OPS_IN_BULK
        with pytest.raises(InvalidArgument):
            kv.batch([Put(b"cb/big/%d" % i, b"v" * (1 << 20)) for i in range(5)])
        with pytest.raises(InvalidArgument):
            kv.batch([Put("cb/ok", "1"), Put(b"", "empty key")])
        assert retried(lambda: kv.get("cb/ok")) is None  # a refused batch applied nothing
