"""etcd's request limits and the errors its clients' retries match on (issue 13), through
etcd's real KV handler over a real Node that is never started (its Ready loop does not
run: a write that passes the checks waits until its deadline), answered into a fake
ServicerContext:

* --max-request-bytes: a write whose encoded command is over it is "etcdserver: request
  is too large" (INVALID_ARGUMENT) before it is proposed;
* --max-txn-ops: more compares, or ops in a branch, than it allows is "etcdserver: too
  many operations in txn request" (INVALID_ARGUMENT) — each branch counted apart;
* a write whose leader stepped down before it was applied, and a linearizable read
  whose ReadIndex that leader never answered, are "etcdserver: leader changed"
  (UNAVAILABLE); a write the pushback refused is "etcdserver: too many requests"
  (RESOURCE_EXHAUSTED), as etcd answers past its apply gap;
* the flags and their bounds (`kvraft serve` refuses what NodeConfig refuses).
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from kvraft.proto import eraftpb_pb2 as eraftpb
from kvraft.proto import etcdserverpb_pb2 as etcdpb
from kvraft.raft import StateRole
from kvraft.server import NodeConfig
from kvraft.server import storage_adapter as sa
from kvraft.server.config import (
    MAX_REQUEST_BYTES_DEFAULT,
    MAX_REQUEST_BYTES_MAX,
    MAX_TXN_OPS_DEFAULT,
    ServeError,
)
from kvraft.server.etcd import errors
from kvraft.server.etcd.kv import KVService
from kvraft.server.etcd.limits import GRPC_OVERHEAD_BYTES, receive_bytes_max
from kvraft.server.metrics import NodeMetrics
from kvraft.server.node import Node
from kvraft.server.run import _client_server_options
from kvraft.server.waiters import NodeError, leader_lost, unavailable
from kvraft.storage import commands
from kvraft.storage.mvcc import TXN_OPS_MAX
from kvraft.storage.mvcc_apply import CLUSTER_VERSION_MVCC

DEADLINE_S = 0.2   # what a write that passed the checks waits on the idle node
MAX_REQUEST_BYTES = 4096
MAX_TXN_OPS = 3


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(code, details)
        self.code = code
        self.details = details


class FakeContext:
    def time_remaining(self) -> float:
        return DEADLINE_S

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        raise Aborted(code, details)


def config_for(tmp_path: Path, **overrides: Any) -> NodeConfig:
    return NodeConfig(node_id=1, data_dir=tmp_path / "node1", listen="127.0.0.1:7101",
                      peer_listen="127.0.0.1:7001", initial_cluster={1: "127.0.0.1:7001"},
                      **overrides)


@pytest.fixture
def kv(tmp_path: Path) -> Iterator[KVService]:
    config = config_for(tmp_path, max_request_bytes=MAX_REQUEST_BYTES,
                        max_txn_ops=MAX_TXN_OPS)
    store = sa.open_store(config)
    try:
        # The cluster version the founding leader sets: etcd's requests are served.
        store.sm.apply([eraftpb.Entry(index=1, term=1, data=commands.cluster_version_command(
            CLUSTER_VERSION_MVCC))])
        metrics = NodeMetrics()
        yield KVService(Node(config, store, metrics), config, metrics)
    finally:
        store.close()


def answer(call: Callable[[FakeContext], Awaitable[object]],
           meanwhile: Callable[[], None] | None = None) -> tuple[grpc.StatusCode, str]:
    """Run one call to its end; `meanwhile` runs once the call waits on the node."""
    async def scenario() -> tuple[grpc.StatusCode, str]:
        task = asyncio.ensure_future(call(FakeContext()))
        await asyncio.sleep(0.01)
        if meanwhile is not None:
            meanwhile()
        with pytest.raises(Aborted) as info:
            await task
        return info.value.code, info.value.details

    return asyncio.run(scenario())


def put_op(key: bytes, value: bytes = b"v") -> etcdpb.RequestOp:
    return etcdpb.RequestOp(request_put=etcdpb.PutRequest(key=key, value=value))


TOO_LARGE = (grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: request is too large")
TOO_MANY_OPS = (grpc.StatusCode.INVALID_ARGUMENT,
                "etcdserver: too many operations in txn request")
# What a write that passed every check answers on the never-started node.
WAITED = (grpc.StatusCode.UNAVAILABLE, "etcdserver: request timed out")


def test_a_put_over_max_request_bytes_is_too_large_before_it_is_proposed(kv: KVService) -> None:
    over = etcdpb.PutRequest(key=b"k", value=b"x" * MAX_REQUEST_BYTES)
    assert answer(lambda ctx: kv.Put(over, ctx)) == TOO_LARGE
    assert not kv.node.proposals.writes   # never queued
    # The command wraps the request in a few bytes: a value a little under still goes.
    under = etcdpb.PutRequest(key=b"k", value=b"x" * (MAX_REQUEST_BYTES - 64))
    assert answer(lambda ctx: kv.Put(under, ctx)) == WAITED


def test_a_txn_or_delete_over_max_request_bytes_is_too_large(kv: KVService) -> None:
    txn = etcdpb.TxnRequest(success=[put_op(b"a", b"x" * 2048), put_op(b"b", b"x" * 2048)])
    assert answer(lambda ctx: kv.Txn(txn, ctx)) == TOO_LARGE
    delete = etcdpb.DeleteRangeRequest(key=b"k" * MAX_REQUEST_BYTES)
    assert answer(lambda ctx: kv.DeleteRange(delete, ctx)) == TOO_LARGE


def test_a_read_only_txn_is_not_measured_as_etcd_does_not_propose_it(kv: KVService) -> None:
    """etcd serves a read-only txn without Raft, so its size limit does not apply."""
    key = b"k" * (MAX_REQUEST_BYTES // 2)
    txn = etcdpb.TxnRequest(success=[
        etcdpb.RequestOp(request_range=etcdpb.RangeRequest(key=key, serializable=True)),
        etcdpb.RequestOp(request_range=etcdpb.RangeRequest(key=key + b"2", serializable=True))])
    resp = asyncio.run(kv.Txn(txn, FakeContext()))  # type: ignore[arg-type]
    assert resp.succeeded and len(resp.responses) == 2


@pytest.mark.parametrize("request_", [
    etcdpb.TxnRequest(success=[put_op(b"s%d" % i) for i in range(MAX_TXN_OPS + 1)]),
    etcdpb.TxnRequest(failure=[put_op(b"f%d" % i) for i in range(MAX_TXN_OPS + 1)]),
    etcdpb.TxnRequest(compare=[etcdpb.Compare(key=b"c%d" % i, target=etcdpb.Compare.VERSION)
                               for i in range(MAX_TXN_OPS + 1)]),
], ids=["success", "failure", "compares"])
def test_more_ops_than_max_txn_ops_in_any_part_is_too_many(
        kv: KVService, request_: etcdpb.TxnRequest) -> None:
    assert answer(lambda ctx: kv.Txn(request_, ctx)) == TOO_MANY_OPS


def test_each_branch_is_counted_apart_up_to_max_txn_ops(kv: KVService) -> None:
    """etcd's checkTxnRequest takes the largest of compares, success and failure: a txn
    with the limit in every part is fine (it waits on the idle node)."""
    full = etcdpb.TxnRequest(
        compare=[etcdpb.Compare(key=b"c%d" % i, target=etcdpb.Compare.VERSION)
                 for i in range(MAX_TXN_OPS)],
        success=[put_op(b"s%d" % i) for i in range(MAX_TXN_OPS)],
        failure=[put_op(b"f%d" % i) for i in range(MAX_TXN_OPS)])
    assert answer(lambda ctx: kv.Txn(full, ctx)) == WAITED


def test_a_write_whose_leader_stepped_down_is_etcds_leader_changed(kv: KVService) -> None:
    """The node fails every write waiting on it when it loses its leader: on etcd's API
    that is "leader changed", which etcd's clients retry (not kvraft's own text)."""
    node = kv.node
    node._on_soft_state(2, StateRole.Follower)           # member 2 leads ...
    put = etcdpb.PutRequest(key=b"k", value=b"v")
    assert answer(lambda ctx: kv.Put(put, ctx),
                  meanwhile=lambda: node._on_soft_state(0, StateRole.Follower)) == (
        grpc.StatusCode.UNAVAILABLE, "etcdserver: leader changed")  # ... then no one


def test_a_read_index_the_lost_leader_never_answered_is_etcds_leader_changed(
        kv: KVService) -> None:
    """A linearizable Range whose ReadIndex went to a leader that is then lost fails as
    etcd's read loop fails it (requestCurrentIndex), not with kvraft's own text."""
    node = kv.node
    node.raw.raft.become_follower(node.raw.raft.term + 1, 2)
    node._on_soft_state(2, StateRole.Follower)

    def lose_the_leader() -> None:
        node.reads.issue(node.raw, 0)      # the round the Ready loop would start
        assert not node.reads.needs_round()  # the read is in a round, asked of member 2
        node._on_soft_state(0, StateRole.Follower)

    linearizable = etcdpb.RangeRequest(key=b"k")
    assert answer(lambda ctx: kv.Range(linearizable, ctx), meanwhile=lose_the_leader) == (
        grpc.StatusCode.UNAVAILABLE, "etcdserver: leader changed")


def test_a_write_the_pushback_refused_is_etcds_too_many_requests(kv: KVService) -> None:
    """A member whose apply backlog is over its limit holds the write back for half its
    deadline, then refuses it: etcd's answer past its apply gap."""
    kv.node.applier.backlog.bytes = kv.config.apply_backlog_bytes_max + 1
    put = etcdpb.PutRequest(key=b"k", value=b"v")
    assert answer(lambda ctx: kv.Put(put, ctx)) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED, "etcdserver: too many requests")


@pytest.mark.parametrize(("error", "status"), [
    (leader_lost("the write was overwritten by a new leader"), errors.LEADER_CHANGED),
    (NodeError(grpc.StatusCode.UNAVAILABLE, "too many writes in flight", retry_safe=True,
               overloaded=True), errors.TOO_MANY_REQUESTS),
    (unavailable("the node is shutting down", retry_safe=True), errors.STOPPED),
    (unavailable("no leader to take the write", retry_safe=True),
     errors.EtcdStatus(grpc.StatusCode.UNAVAILABLE, "no leader to take the write")),
])
def test_the_flags_choose_etcds_error(error: NodeError, status: errors.EtcdStatus) -> None:
    mapped = errors.from_node_error(error)
    assert (mapped.code, mapped.message) == (status.code, status.message)


def test_the_defaults_are_etcds(tmp_path: Path) -> None:
    config = config_for(tmp_path)
    assert (config.max_request_bytes, config.max_txn_ops) == (1572864, 128)
    assert (MAX_REQUEST_BYTES_DEFAULT, MAX_TXN_OPS_DEFAULT) == (1572864, 128)
    assert MAX_TXN_OPS_DEFAULT == TXN_OPS_MAX


@pytest.mark.parametrize(("overrides", "flag"), [
    ({"max_request_bytes": 0}, "--max-request-bytes"),
    ({"max_request_bytes": MAX_REQUEST_BYTES_MAX + 1}, "--max-request-bytes"),
    ({"max_txn_ops": 0}, "--max-txn-ops"),
])
def test_a_limit_out_of_bounds_is_refused_naming_its_flag(
        tmp_path: Path, overrides: dict[str, int], flag: str) -> None:
    with pytest.raises(ServeError, match=flag):
        config_for(tmp_path, **overrides).validate()


def test_the_client_port_takes_an_etcd_request_up_to_the_limit_and_etcds_overhead(
        tmp_path: Path) -> None:
    """etcd's gRPC receive limit is --max-request-bytes + 512 KiB; the port's is at least
    that (kvraft's own Batch may need more), so a request just over the limit reaches
    the handler and gets etcd's error instead of gRPC's RESOURCE_EXHAUSTED."""
    assert receive_bytes_max(MAX_REQUEST_BYTES_DEFAULT) == 1572864 + GRPC_OVERHEAD_BYTES
    big = 16 << 20
    options = dict(_client_server_options(config_for(tmp_path, max_request_bytes=big)))
    assert options["grpc.max_receive_message_length"] == big + GRPC_OVERHEAD_BYTES
    default = dict(_client_server_options(config_for(tmp_path)))
    assert default["grpc.max_receive_message_length"] > receive_bytes_max(
        MAX_REQUEST_BYTES_DEFAULT)
