"""parse_guard.py and the transport's limits, without a node (issue 14, "Bad input";
tests/fuzz has the real member)."""
from __future__ import annotations

import asyncio
import logging

import grpc
import pytest

from kvraft.proto import kvraft_pb2 as pb
from kvraft.server import parse_guard
from kvraft.server.config import NodeConfig
from kvraft.server.metrics import NodeMetrics
from kvraft.server.node import MAX_SIZE_PER_MSG_BYTES
from kvraft.server.parse_guard import BoundedLog, Unparsed
from kvraft.server.transport import PEER_MESSAGE_BYTES_MAX


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_bounded_log_writes_one_line_per_interval_and_counts_the_rest(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    bounded = BoundedLog("node 1: bad", interval_s=10.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger="kvraft.server.parse_guard"):
        written = [bounded.event(f"#{i}") for i in range(1000)]   # all at one instant
        clock.now += 9.9
        written.append(bounded.event("late"))
        clock.now += 0.1
        written.append(bounded.event("next"))
    assert written.count(True) == 2 and written[0] and written[-1]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert lines[0].startswith("node 1: bad: #0;")
    assert lines[1].startswith("node 1: bad: next (1000 more since the last report);")
    assert bounded.suppressed == 0


def test_a_guarded_deserializer_returns_a_marker_instead_of_raising() -> None:
    parse = parse_guard._guarded(pb.PutRequest.FromString)
    assert parse(pb.PutRequest(key=b"k").SerializeToString()) == pb.PutRequest(key=b"k")
    unparsed = parse(b"\x0a\xff")      # a length that runs past the end
    assert type(unparsed) is Unparsed and "PutRequest" in unparsed.error


def test_the_default_peer_messages_fit_the_peer_message_limit() -> None:
    """A MessageBatch is filled while under peer_batch_bytes_max and may end with one
    more message: a MsgAppend of MAX_SIZE_PER_MSG_BYTES of entries, or one entry as
    large as kvraft's largest request (a Batch, max_batch_bytes); a snapshot chunk is
    snapshot_chunk_bytes. Each with a generous MiB of framing must fit."""
    config = NodeConfig(node_id=1, data_dir="unused", listen="a:1", peer_listen="a:2")
    framing = 1 << 20
    largest_tail = max(MAX_SIZE_PER_MSG_BYTES, config.max_batch_bytes, config.max_value_bytes)
    assert config.peer_batch_bytes_max + largest_tail + framing <= PEER_MESSAGE_BYTES_MAX
    assert config.snapshot_chunk_bytes + framing <= PEER_MESSAGE_BYTES_MAX


def test_the_guard_reuses_a_stable_handlers_wrapper_and_remembers_only_served_methods(
) -> None:
    async def get(request: pb.GetRequest, context: object) -> pb.GetResponse:
        return pb.GetResponse()

    def make() -> grpc.RpcMethodHandler[pb.GetRequest, pb.GetResponse]:
        return grpc.unary_unary_rpc_method_handler(
            get, request_deserializer=pb.GetRequest.FromString,
            response_serializer=pb.GetResponse.SerializeToString)

    stable = make()
    guard = parse_guard.ParseGuard("client", NodeMetrics(), "node 1")

    class Details(grpc.HandlerCallDetails):
        def __init__(self, method: str) -> None:
            self.method = method
            self.invocation_metadata = ()

    async def intercept(method: str, handler: object) -> object:
        async def continuation(_: grpc.HandlerCallDetails) -> object:
            return handler
        return await guard.intercept_service(continuation, Details(method))  # type: ignore[arg-type]  # (a test double)

    async def scenario() -> None:
        first = await intercept("/kvraft.KV/Get", stable)
        assert first is not stable and await intercept("/kvraft.KV/Get", stable) is first
        assert await intercept("/kvraft.KV/Get", make()) is not first  # made per call
        for i in range(100):   # names the server does not serve: no handler, not kept
            assert await intercept(f"/no.Such/M{i}", None) is None
        assert list(guard._wrapped) == ["/kvraft.KV/Get"]
        assert len(guard._parsers) == 1

    asyncio.run(scenario())
