"""How the client service turns a `NodeError` into a gRPC status (SPEC §2): the type of
the error chooses the code, never the words of its message.

The services run in-process over a real Node that is never started (its Ready loop
does not run), so a write waits until its deadline passes — the node's own expiry
path — and a fake ServicerContext records what the call answered."""
from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from kvraft.proto import kvraft_pb2 as pb
from kvraft.server import NodeConfig
from kvraft.server import storage_adapter as sa
from kvraft.server.kv_service import KVService
from kvraft.server.metrics import NodeMetrics
from kvraft.server.node import Node
from kvraft.server.waiters import WAIT_EXPIRED_MESSAGE, NodeError, ReadWaiter, expire
from kvraft.wire import RETRY_SAFE_METADATA_KEY, RETRY_SAFE_METADATA_VALUE

# A short wait for the never-started node: the expiry fires after this long.
CLIENT_DEADLINE_S = 0.05
# What grpc.aio reports as time_remaining() when the client set no deadline.
NO_CLIENT_DEADLINE_S = 1e9


class Aborted(Exception):
    """What FakeContext.abort raises, as grpc's abort does, carrying the answer."""

    def __init__(self, code: grpc.StatusCode, details: str,
                 trailing_metadata: tuple[tuple[str, str], ...]) -> None:
        super().__init__(code, details)
        self.code = code
        self.details = details
        self.trailing_metadata = trailing_metadata


class FakeContext:
    def __init__(self, remaining_s: float | None) -> None:
        self.remaining_s = remaining_s

    def time_remaining(self) -> float | None:
        return self.remaining_s

    async def abort(self, code: grpc.StatusCode, details: str = "",
                    trailing_metadata: tuple[tuple[str, str], ...] = ()) -> None:
        raise Aborted(code, details, tuple(trailing_metadata))


@pytest.fixture
def service(tmp_path: Path) -> Iterator[KVService]:
    config = NodeConfig(node_id=1, data_dir=tmp_path / "node1", listen="127.0.0.1:7101",
                        peer_listen="127.0.0.1:7001", initial_cluster={1: "127.0.0.1:7001"},
                        default_deadline_s=CLIENT_DEADLINE_S)
    store = sa.open_store(config)
    try:
        metrics = NodeMetrics()
        yield KVService(Node(config, store, metrics), config, metrics)
    finally:
        store.close()


def answer(service: KVService, remaining_s: float | None, body=None) -> Aborted:
    """Run one Put (or `body` in its place) and return how it was answered."""
    async def call() -> Aborted:
        context = FakeContext(remaining_s)
        with pytest.raises(Aborted) as info:
            if body is None:
                await service.Put(pb.PutRequest(key=b"k", value=b"v"), context)
            else:
                await service._call("Put", context, body)
        return info.value

    return asyncio.run(call())


def test_a_write_whose_wait_runs_out_is_deadline_exceeded(service: KVService) -> None:
    """The node's own expiry path, through the real Put handler."""
    aborted = answer(service, CLIENT_DEADLINE_S)
    assert aborted.code == grpc.StatusCode.DEADLINE_EXCEEDED, aborted.details
    assert aborted.trailing_metadata == ()  # its outcome is unknown: not retry-safe


def test_a_wait_that_runs_out_without_a_client_deadline_is_unavailable(
        service: KVService) -> None:
    """No deadline from the client: the server's default ran out, no leader or quorum."""
    aborted = answer(service, NO_CLIENT_DEADLINE_S)
    assert aborted.code == grpc.StatusCode.UNAVAILABLE, aborted.details


def test_the_flag_not_the_message_chooses_deadline_exceeded(service: KVService) -> None:
    async def expired_in_other_words(timeout_s: float) -> None:
        raise NodeError(grpc.StatusCode.UNAVAILABLE, "the wait ran out",
                        deadline_passed=True)

    async def look_alike(timeout_s: float) -> None:
        raise NodeError(grpc.StatusCode.UNAVAILABLE, f"{WAIT_EXPIRED_MESSAGE} (or so)")

    assert answer(service, CLIENT_DEADLINE_S, expired_in_other_words).code == \
        grpc.StatusCode.DEADLINE_EXCEEDED
    assert answer(service, CLIENT_DEADLINE_S, look_alike).code == grpc.StatusCode.UNAVAILABLE


def test_a_retry_safe_rejection_carries_the_wire_mark(service: KVService) -> None:
    async def rejected(timeout_s: float) -> None:
        raise NodeError(grpc.StatusCode.UNAVAILABLE, "no leader", retry_safe=True)

    aborted = answer(service, CLIENT_DEADLINE_S, rejected)
    assert aborted.code == grpc.StatusCode.UNAVAILABLE
    assert aborted.trailing_metadata == ((RETRY_SAFE_METADATA_KEY, RETRY_SAFE_METADATA_VALUE),)


def test_expire_fails_a_waiter_with_the_typed_error() -> None:
    """`expire` is the deadline timer's callback (node.py's is to become it)."""
    async def scenario() -> None:
        waiter = ReadWaiter()
        expire(waiter)
        error = waiter.future.exception()
        assert isinstance(error, NodeError) and error.deadline_passed
        assert error.code == grpc.StatusCode.UNAVAILABLE and not error.retry_safe

    asyncio.run(scenario())
