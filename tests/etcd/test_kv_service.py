"""etcd's KV service on a 3-node cluster through etcd's own messages over gRPC: the
refusals etcd makes before a request reaches Raft (with etcd's codes and messages), the
headers every answer carries, reads that are not linearizable, a nested txn, and the
compaction errors."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import grpc
import pytest

from kvraft.proto import etcdserverpb_pb2 as etcdpb
from kvraft.proto import etcdserverpb_pb2_grpc as etcdpb_grpc
from kvraft.server.config import MAX_REQUEST_BYTES_DEFAULT
from tests.cluster.harness import LocalCluster, retry_unavailable, wait_until

pytestmark = pytest.mark.cluster

RPC_TIMEOUT_S = 10.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster.start(3) as c:
        leader = c.wait_leader()
        retry_unavailable(lambda: c.put(leader, b"/warm", b"1"))
        yield c


def kv(cluster: LocalCluster, node_id: int) -> etcdpb_grpc.KVStub:
    return cluster.nodes[node_id].stub(etcdpb_grpc.KVStub)


def refusal(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()  # type: ignore[attr-defined]


def put_op(key: bytes, value: bytes = b"v") -> etcdpb.RequestOp:
    return etcdpb.RequestOp(request_put=etcdpb.PutRequest(key=key, value=value))


def test_requests_etcd_refuses_before_raft(cluster: LocalCluster) -> None:
    stub = kv(cluster, 1)
    t = RPC_TIMEOUT_S
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    assert refusal(lambda: stub.Put(etcdpb.PutRequest(key=b""), timeout=t)) == (
        invalid, "etcdserver: key is not provided")
    assert refusal(lambda: stub.Range(etcdpb.RangeRequest(key=b""), timeout=t)) == (
        invalid, "etcdserver: key is not provided")
    assert refusal(lambda: stub.DeleteRange(etcdpb.DeleteRangeRequest(), timeout=t)) == (
        invalid, "etcdserver: key is not provided")
    assert refusal(lambda: stub.Range(etcdpb.RangeRequest(key=b"k", sort_order=7),
                                      timeout=t)) == (invalid, "etcdserver: invalid sort option")
    assert refusal(lambda: stub.Put(etcdpb.PutRequest(key=b"k", value=b"v", ignore_value=True),
                                    timeout=t)) == (invalid, "etcdserver: value is provided")
    too_many = etcdpb.TxnRequest(success=[put_op(b"k%d" % i) for i in range(129)])
    assert refusal(lambda: stub.Txn(too_many, timeout=t)) == (
        invalid, "etcdserver: too many operations in txn request")
    dup = etcdpb.TxnRequest(success=[put_op(b"d"), put_op(b"d")])
    assert refusal(lambda: stub.Txn(dup, timeout=t)) == (
        invalid, "etcdserver: duplicate key given in txn request")
    empty_op = etcdpb.TxnRequest(success=[etcdpb.RequestOp()])
    assert refusal(lambda: stub.Txn(empty_op, timeout=t)) == (
        invalid, "etcdserver: key not found")
    # Over etcd's default --max-request-bytes (1.5 MiB), alone or inside a txn.
    big = etcdpb.PutRequest(key=b"big", value=b"x" * MAX_REQUEST_BYTES_DEFAULT)
    assert refusal(lambda: stub.Put(big, timeout=t)) == (
        invalid, "etcdserver: request is too large")
    big_in_txn = etcdpb.TxnRequest(success=[put_op(b"big", b"x" * MAX_REQUEST_BYTES_DEFAULT)])
    assert refusal(lambda: stub.Txn(big_in_txn, timeout=t)) == (
        invalid, "etcdserver: request is too large")
    # The apply's own refusal comes back the same way: no key to keep the value of.
    keep = etcdpb.PutRequest(key=b"/svc/absent", ignore_value=True)
    assert refusal(lambda: stub.Put(keep, timeout=t)) == (invalid, "etcdserver: key not found")
    assert list(stub.Range(etcdpb.RangeRequest(key=b"big"), timeout=t).kvs) == []  # never written
    # Just under the limit goes through: a value may be larger than kvraft's own 1 MiB.
    under = b"u" * (MAX_REQUEST_BYTES_DEFAULT - 1024)
    stub.Put(etcdpb.PutRequest(key=b"big-under", value=under), timeout=t)
    assert stub.Range(etcdpb.RangeRequest(key=b"big-under"), timeout=t).kvs[0].value == under


def test_headers_name_the_cluster_the_member_the_revision_and_the_term(
        cluster: LocalCluster) -> None:
    leader = cluster.wait_leader()
    put = kv(cluster, leader).Put(etcdpb.PutRequest(key=b"/svc/h", value=b"1"),
                                  timeout=RPC_TIMEOUT_S)
    cluster_ids = set()
    for node_id in cluster.nodes:
        got = kv(cluster, node_id).Range(etcdpb.RangeRequest(key=b"/svc/h"),
                                         timeout=RPC_TIMEOUT_S)
        assert got.header.member_id == node_id
        assert got.header.revision >= put.header.revision
        assert got.header.raft_term == put.header.raft_term >= 1
        assert got.kvs[0].mod_revision == put.header.revision
        cluster_ids.add(got.header.cluster_id)
    assert len(cluster_ids) == 1 and cluster_ids != {0}


def test_a_serializable_range_is_served_by_the_member_alone(cluster: LocalCluster) -> None:
    leader = cluster.wait_leader()
    rev = kv(cluster, leader).Put(etcdpb.PutRequest(key=b"/svc/ser", value=b"s"),
                                  timeout=RPC_TIMEOUT_S).header.revision
    for node_id in cluster.nodes:
        def applied(n: int = node_id) -> bool:
            got = kv(cluster, n).Range(etcdpb.RangeRequest(key=b"/svc/ser", serializable=True),
                                       timeout=RPC_TIMEOUT_S)
            return [kv.value for kv in got.kvs] == [b"s"] and got.header.revision >= rev
        wait_until(applied, 10, f"node {node_id} to apply the put")


def test_count_only_and_revision_filters(cluster: LocalCluster) -> None:
    stub = kv(cluster, 1)
    revs = [stub.Put(etcdpb.PutRequest(key=b"/svc/f/%d" % i, value=b"v"),
                     timeout=RPC_TIMEOUT_S).header.revision for i in range(3)]
    counted = stub.Range(etcdpb.RangeRequest(key=b"/svc/f/", range_end=b"/svc/f0",
                                             count_only=True), timeout=RPC_TIMEOUT_S)
    assert counted.count == 3 and list(counted.kvs) == []
    newer = stub.Range(etcdpb.RangeRequest(key=b"/svc/f/", range_end=b"/svc/f0",
                                           min_mod_revision=revs[1]), timeout=RPC_TIMEOUT_S)
    assert [kv.key for kv in newer.kvs] == [b"/svc/f/1", b"/svc/f/2"]
    assert newer.count == 3  # etcd's count: before the filters


def test_a_nested_txn_runs_its_own_branch_at_the_parents_revision(
        cluster: LocalCluster) -> None:
    stub = kv(cluster, 2)
    stub.Put(etcdpb.PutRequest(key=b"/svc/n", value=b"1"), timeout=RPC_TIMEOUT_S)
    inner = etcdpb.TxnRequest(
        compare=[etcdpb.Compare(key=b"/svc/n", target=etcdpb.Compare.VALUE,
                                result=etcdpb.Compare.EQUAL, value=b"nope")],
        success=[put_op(b"/svc/n-inner", b"success")],
        failure=[put_op(b"/svc/n-inner", b"failure"),
                 etcdpb.RequestOp(request_range=etcdpb.RangeRequest(key=b"/svc/n",
                                                                    range_end=b"/svc/o"))])
    outer = etcdpb.TxnRequest(
        compare=[etcdpb.Compare(key=b"/svc/n", target=etcdpb.Compare.VERSION,
                                result=etcdpb.Compare.GREATER, version=0)],
        success=[put_op(b"/svc/n", b"2"), etcdpb.RequestOp(request_txn=inner)])
    resp = stub.Txn(outer, timeout=RPC_TIMEOUT_S)
    assert resp.succeeded
    rev = resp.header.revision
    put, nested = resp.responses
    assert put.response_put.header.revision == rev
    assert nested.response_txn.succeeded is False
    assert nested.response_txn.header.revision == rev
    inner_put, inner_range = nested.response_txn.responses
    assert inner_put.response_put.header.revision == rev
    assert [(kv.key, kv.value, kv.mod_revision) for kv in inner_range.response_range.kvs] == [
        (b"/svc/n", b"2", rev), (b"/svc/n-inner", b"failure", rev)]


def test_compact_refuses_a_future_revision_and_then_an_old_one(cluster: LocalCluster) -> None:
    stub = kv(cluster, 3)
    rev = stub.Put(etcdpb.PutRequest(key=b"/svc/c", value=b"1"),
                   timeout=RPC_TIMEOUT_S).header.revision
    assert refusal(lambda: stub.Compact(etcdpb.CompactionRequest(revision=rev + 1000),
                                        timeout=RPC_TIMEOUT_S)) == (
        grpc.StatusCode.OUT_OF_RANGE, "etcdserver: mvcc: required revision is a future revision")
    done = stub.Compact(etcdpb.CompactionRequest(revision=rev, physical=True),
                        timeout=RPC_TIMEOUT_S)
    assert done.header.revision >= rev and done.header.member_id == 3
    compacted = (grpc.StatusCode.OUT_OF_RANGE,
                 "etcdserver: mvcc: required revision has been compacted")
    assert refusal(lambda: stub.Compact(etcdpb.CompactionRequest(revision=rev - 1),
                                        timeout=RPC_TIMEOUT_S)) == compacted
    # Every member refuses reads below it, once it has applied the compaction.
    for node_id in cluster.nodes:
        def refuses(n: int = node_id) -> bool:
            try:
                kv(cluster, n).Range(etcdpb.RangeRequest(key=b"/svc/c", revision=rev - 1),
                                     timeout=RPC_TIMEOUT_S)
            except grpc.RpcError as e:
                return (e.code(), e.details()) == compacted  # type: ignore[attr-defined]
            return False
        wait_until(refuses, 10, f"node {node_id} to refuse a read below the compaction")
    # A read-only txn below it too.
    below = etcdpb.TxnRequest(success=[etcdpb.RequestOp(
        request_range=etcdpb.RangeRequest(key=b"/svc/c", revision=rev - 1))])
    assert refusal(lambda: stub.Txn(below, timeout=RPC_TIMEOUT_S)) == compacted


def test_a_read_only_txn_reads_one_revision_while_writes_apply(cluster: LocalCluster) -> None:
    """The ranges of a read-only txn (served without Raft) see one state: a writer
    puts the same value to two keys in one txn over and over, and every read-only txn
    that reads both keys, on every member, finds them equal and at one mod revision."""
    writer = kv(cluster, cluster.wait_leader())
    stop = threading.Event()
    written = [0]

    def write() -> None:
        while not stop.is_set():
            written[0] += 1
            value = b"%d" % written[0]
            writer.Txn(etcdpb.TxnRequest(success=[put_op(b"/svc/pair/a", value),
                                                  put_op(b"/svc/pair/b", value)]),
                       timeout=RPC_TIMEOUT_S)

    writer.Txn(etcdpb.TxnRequest(success=[put_op(b"/svc/pair/a", b"0"),
                                          put_op(b"/svc/pair/b", b"0")]), timeout=RPC_TIMEOUT_S)
    read = etcdpb.TxnRequest(success=[
        etcdpb.RequestOp(request_range=etcdpb.RangeRequest(key=b"/svc/pair/a")),
        etcdpb.RequestOp(request_range=etcdpb.RangeRequest(key=b"/svc/pair/b"))])
    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    reads = 0
    try:
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            for node_id in cluster.nodes:
                resp = kv(cluster, node_id).Txn(read, timeout=RPC_TIMEOUT_S)
                (a,), (b,) = (r.response_range.kvs for r in resp.responses)
                assert (a.value, a.mod_revision) == (b.value, b.mod_revision)
                assert a.mod_revision <= resp.header.revision
                reads += 1
    finally:
        stop.set()
        thread.join(timeout=RPC_TIMEOUT_S)
    assert reads >= 10 and written[0] >= 10, (reads, written[0])
