"""Bad input on both ports of a real member (issue 14, "Bad input").

Random bytes as the request of every method, random bytes on the raw sockets, huge
metadata, oversized messages, a peer stream cut off mid-message and thousands of
requests that do not parse: the member keeps serving and keeps its data, every answer
is a precise status (a request that does not parse is INVALID_ARGUMENT "request does
not parse: METHOD", never UNKNOWN or INTERNAL), each refusal is counted in
kvraft_malformed_requests_total and the log gets a bounded number of lines and no
traceback. `KVRAFT_FUZZ_EXAMPLES=N` runs N random examples (default 300, derandomized)
instead of the CI's few (docs/security.md, "Bad input").
"""
from __future__ import annotations

import collections
import os
import random
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from kvraft.proto import etcdserverpb_pb2 as etcdpb
from kvraft.proto import etcdserverpb_pb2_grpc as etcdpb_grpc
from kvraft.proto import peer_pb2
from kvraft.server.config import NodeConfig
from kvraft.server.parse_guard import MALFORMED_LOG_INTERVAL_S
from kvraft.server.run import _client_server_options
from kvraft.server.transport import METADATA_BYTES_MAX, PEER_MESSAGE_BYTES_MAX
from kvraft.storage.mvcc_apply import CLUSTER_VERSION_MAX
from tests.cluster.harness import LocalCluster, NodeProcess, retry_unavailable

from . import rawh2
from .methods import Method, methods

pytestmark = pytest.mark.cluster

EXAMPLES = int(os.environ.get("KVRAFT_FUZZ_EXAMPLES", "300"))
RPC_TIMEOUT_S = 5.0
# Never the answer to any request, parsing or not: UNKNOWN and INTERNAL are what an
# exception escaping a handler (or the parser) becomes.
IMPRECISE = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.DATA_LOSS}
ALL_METHODS = methods("client") + methods("peer")
GUARD_LOGGER = "kvraft.server.parse_guard"


@pytest.fixture(scope="module")
def node1() -> Iterator[LocalCluster]:
    with LocalCluster.start(1) as cluster:
        cluster.wait_leader()
        yield cluster


def _channel(address: str) -> grpc.Channel:
    return grpc.insecure_channel(address, options=[
        ("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)])


def _address(node: NodeProcess, m: Method) -> str:
    return node.client_address if m.port == "client" else node.peer_address


def _malformed_counts(cluster: LocalCluster, node_id: int = 1
                      ) -> collections.Counter[tuple[str, str]]:
    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    for family in text_string_to_metric_families(cluster.metrics_text(node_id)):
        for sample in family.samples:
            if sample.name == "kvraft_malformed_requests_total":
                counts[(sample.labels["port"], sample.labels["method"])] = int(sample.value)
    return counts


def _log_since(node: NodeProcess, offset: int) -> str:
    with open(node.log_path, "rb") as f:
        f.seek(offset)
        return f.read().decode("utf-8", "replace")


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        if not n:
            return bytes(out + bytes([low]))
        out.append(low | 0x80)


@st.composite
def _truncated_field(draw: st.DrawFn) -> bytes:
    """A length-delimited field claiming more bytes than follow: never parses."""
    field = draw(st.integers(1, 15))
    body = draw(st.binary(max_size=32))
    missing = draw(st.integers(1, 1 << 20))
    return bytes([field << 3 | 2]) + _varint(len(body) + missing) + body


PAYLOADS = st.one_of(st.binary(max_size=512), _truncated_field())


def _assert_answer(m: Method, payload: bytes, error: grpc.RpcError | None) -> None:
    if not m.parses(payload):
        assert error is not None, f"{m.path} answered OK to {payload!r}"
        assert (error.code(), error.details()) == (
            grpc.StatusCode.INVALID_ARGUMENT, f"request does not parse: {m.path}"), payload
    elif error is not None:
        assert error.code() not in IMPRECISE, (m.path, payload, error.details())


def test_random_bytes_to_every_method_are_answered_precisely_counted_and_barely_logged(
        node1: LocalCluster) -> None:
    node = node1.nodes[1]
    channels = {"client": _channel(node.client_address), "peer": _channel(node.peer_address)}
    before = _malformed_counts(node1)
    log_offset = node.log_path.stat().st_size
    sent: collections.Counter[tuple[str, str]] = collections.Counter()
    started = time.monotonic()

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              derandomize="KVRAFT_FUZZ_EXAMPLES" not in os.environ,
              suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
    @given(m=st.sampled_from(ALL_METHODS), payload=PAYLOADS)
    def one(m: Method, payload: bytes) -> None:
        assume(not (m.parse_failures_only and m.parses(payload)))
        error = None
        try:
            m.call(channels[m.port], payload, RPC_TIMEOUT_S)
        except grpc.RpcError as e:
            error = e
        if not m.parses(payload):
            sent[(m.port, m.path)] += 1
        _assert_answer(m, payload, error)

    try:
        one()
        # Every method once more with bytes that never parse, so each is covered.
        for m in ALL_METHODS:
            payload = b"\x0a\xff\xff\x03"
            error = None
            try:
                m.call(channels[m.port], payload, RPC_TIMEOUT_S)
            except grpc.RpcError as e:
                error = e
            sent[(m.port, m.path)] += 1
            _assert_answer(m, payload, error)
    finally:
        for channel in channels.values():
            channel.close()
    elapsed_s = time.monotonic() - started

    node1.check_no_crash()
    retry_unavailable(lambda: node1.put(1, b"fuzz/after", b"ok"))
    assert node1.get(1, b"fuzz/after") == b"ok"
    after = _malformed_counts(node1)
    assert {k: after[k] - before[k] for k in sent} == dict(sent)
    log = _log_since(node, log_offset)
    assert "Traceback" not in log and " ERROR " not in log, log[-4000:]
    # One line per port at most every MALFORMED_LOG_INTERVAL_S (the first at once).
    bound = int(elapsed_s / MALFORMED_LOG_INTERVAL_S) + 1
    for port in ("client", "peer"):
        lines = [line for line in log.splitlines()
                 if GUARD_LOGGER in line and f"on the {port} port" in line]
        assert 1 <= len(lines) <= bound, (port, bound, lines)


def test_nested_txn_below_and_above_the_parser_depth_limit(node1: LocalCluster) -> None:
    """A Txn nests Txns (etcd 3.3): nested far below the parser's depth limit it is a
    legitimate request answered precisely; past it, a request that does not parse."""
    def nested(depth: int) -> bytes:
        txn = b""
        for _ in range(depth):
            op = b"\x22" + _varint(len(txn)) + txn      # RequestOp.request_txn
            txn = b"\x12" + _varint(len(op)) + op       # TxnRequest.success
        return txn

    txn_method = next(m for m in ALL_METHODS if m.path == "/etcdserverpb.KV/Txn")
    with _channel(node1.nodes[1].client_address) as channel:
        for depth in (40, 60, 5000):
            payload = nested(depth)
            error = None
            try:
                txn_method.call(channel, payload, RPC_TIMEOUT_S)
            except grpc.RpcError as e:
                error = e
            _assert_answer(txn_method, payload, error)
    assert txn_method.parses(nested(40)) and not txn_method.parses(nested(60))
    node1.check_no_crash()


def test_random_bytes_on_the_raw_sockets_leave_both_ports_serving(node1: LocalCluster) -> None:
    node = node1.nodes[1]
    rng = random.Random(14)
    preface = rawh2.PREFACE
    for address in (node.client_address, node.peer_address):
        for i in range(40):
            garbage = rng.randbytes(rng.randint(1, 8192))
            if i % 4 == 1:      # a valid preface, then garbage frames
                garbage = preface + garbage
            elif i % 4 == 2:    # a preface cut short
                garbage = preface[:rng.randint(1, len(preface) - 1)]
            rawh2.send_then_close(address, garbage, timeout_s=2.0)
    node1.check_no_crash()
    assert node1.status(1).role == "leader"
    send = next(m for m in ALL_METHODS if m.path == "/kvraft.peer.Peer/Send")
    with _channel(node.peer_address) as channel, pytest.raises(grpc.RpcError) as refused:
        send.call(channel, b"\xff", RPC_TIMEOUT_S)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("metadata", [
    (("x-big", "a" * (METADATA_BYTES_MAX + 1024)),),
    (("x-big", "a" * (1 << 20)),),
    tuple((f"x-k{i}", "v" * 32) for i in range(1000)),
], ids=["just-over", "1MiB", "1000-keys"])
def test_metadata_over_the_limit_is_resource_exhausted_on_both_ports(
        node1: LocalCluster, metadata: tuple[tuple[str, str], ...]) -> None:
    node = node1.nodes[1]
    status = next(m for m in ALL_METHODS if m.path == "/kvraft.Cluster/Status")
    send = next(m for m in ALL_METHODS if m.path == "/kvraft.peer.Peer/Send")
    for m in (status, send):
        with _channel(_address(node, m)) as channel, pytest.raises(grpc.RpcError) as refused:
            m.call(channel, b"", RPC_TIMEOUT_S, metadata=metadata)
        # (With many keys gRPC refuses the HEADERS frame itself: no details then.)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, m.path
    # Below the limit the same call is served.
    with _channel(node.client_address) as channel:
        status.call(channel, b"", RPC_TIMEOUT_S, metadata=(("x-ok", "a" * 4096),))
    node1.check_no_crash()


def test_messages_over_the_limits_are_resource_exhausted(node1: LocalCluster) -> None:
    node = node1.nodes[1]
    options = dict(_client_server_options(NodeConfig(
        node_id=1, data_dir="unused", listen="127.0.0.1:1", peer_listen="127.0.0.1:2")))
    client_limit = options["grpc.max_receive_message_length"]
    put = next(m for m in ALL_METHODS if m.path == "/kvraft.KV/Put")
    send = next(m for m in ALL_METHODS if m.path == "/kvraft.peer.Peer/Send")
    for m, limit in ((put, client_limit), (send, PEER_MESSAGE_BYTES_MAX)):
        with _channel(_address(node, m)) as channel, pytest.raises(grpc.RpcError) as refused:
            m.call(channel, b"\x00" * (limit + 1), 30.0)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, m.path
    node1.check_no_crash()
    assert node1.status(1).role == "leader"


def _rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines()
                if line.startswith("VmRSS:")) / 1024


# What 2,000 more refused requests may add to the member's RSS: nothing of a refused
# request is kept (the metric's labels are the port's methods, the log line's state two
# numbers), so this only absorbs the allocator's and grpc's noise.
RSS_GROWTH_ALLOWANCE_MIB = 32


def test_thousands_of_unparsable_requests_do_not_grow_memory(node1: LocalCluster) -> None:
    node = node1.nodes[1]
    assert node.pid is not None
    targets = [m for m in ALL_METHODS if m.unary]
    rng = random.Random(3)

    def flood(n: int) -> None:
        with _channel(node.client_address) as channel:
            futures = []
            for i in range(n):
                m = targets[i % len(targets)]
                payload = b"\x0a" + _varint(1 << 20) + rng.randbytes(rng.randint(0, 256))
                futures.append(channel.unary_unary(
                    m.path, request_serializer=None, response_deserializer=None).future(
                    payload, timeout=30.0))
                if len(futures) >= 64:
                    for f in futures:
                        assert f.code() == grpc.StatusCode.INVALID_ARGUMENT
                    futures.clear()
            for f in futures:
                assert f.code() == grpc.StatusCode.INVALID_ARGUMENT

    flood(1000)
    after_1k = _rss_mib(node.pid)
    flood(2000)
    after_3k = _rss_mib(node.pid)
    assert after_3k - after_1k < RSS_GROWTH_ALLOWANCE_MIB, (after_1k, after_3k)
    node1.check_no_crash()


def _cluster_id(cluster: LocalCluster, node_id: int) -> int:
    stub = cluster.nodes[node_id].stub(etcdpb_grpc.ClusterStub)
    return int(stub.MemberList(etcdpb.MemberListRequest(), timeout=RPC_TIMEOUT_S)
               .header.cluster_id)


def test_a_peer_stream_cut_off_mid_message_leaves_the_cluster_agreeing() -> None:
    """Each member is sent, on its peer port, a stream that stops in the middle of a
    message and then loses its socket: a Send after one whole batch its sender's
    member could have sent, a Send whose length prefix promises 32 MiB, a SendSnapshot
    cut inside its first chunk. Every member survives, keeps what it had and goes on
    agreeing with the others."""
    with LocalCluster.start(3) as cluster:
        leader = cluster.wait_leader()
        retry_unavailable(lambda: cluster.put(leader, b"fuzz/kept", b"before"))
        cluster_id = _cluster_id(cluster, leader)
        chunk = peer_pb2.SnapshotChunk(cluster_id=cluster_id, from_id=leader,
                                       data=b"d" * 4096).SerializeToString()
        for node_id, node in cluster.nodes.items():
            sender = next(i for i in cluster.nodes if i != node_id)
            whole = peer_pb2.MessageBatch(
                cluster_id=cluster_id, from_id=sender,
                from_address=cluster.nodes[sender].peer_address,
                from_cluster_version_max=CLUSTER_VERSION_MAX).SerializeToString()
            send = rawh2.grpc_call_start(node.peer_address, "/kvraft.peer.Peer/Send")
            snapshot = rawh2.grpc_call_start(node.peer_address,
                                             "/kvraft.peer.Peer/SendSnapshot")
            before = _malformed_counts(cluster, node_id)[("peer", "/kvraft.peer.Peer/Send")]
            # The control: the same framing, whole, reaches the handler and is answered.
            assert rawh2.exchange(node.peer_address,
                                  send + rawh2.truncated_message(b"\xff", 1), 5.0)
            assert _malformed_counts(cluster, node_id)[
                ("peer", "/kvraft.peer.Peer/Send")] == before + 1
            for cut_off in (
                    send + rawh2.truncated_message(whole, len(whole)) +
                    rawh2.truncated_message(whole, len(whole) // 2),
                    send + rawh2.frame(rawh2.DATA, 0, rawh2.STREAM_ID,
                                       b"\x00" + struct.pack(">I", 32 << 20) + b"x" * 100),
                    snapshot + rawh2.truncated_message(chunk, len(chunk) // 2)):
                # The member waits for the rest of the message, which never comes.
                assert not rawh2.exchange(node.peer_address, cut_off, 0.5)
        cluster.check_no_crash()
        leader = cluster.wait_leader()
        retry_unavailable(lambda: cluster.put(leader, b"fuzz/kept", b"after"))
        applied = cluster.status(leader).header.applied_index
        for node_id in cluster.nodes:
            cluster.wait_applied(node_id, applied)
            assert cluster.get(node_id, b"fuzz/kept", serializable=True) == b"after"
        for node_id in cluster.nodes:
            assert "Traceback" not in cluster.log_tail(node_id, lines=10_000)
