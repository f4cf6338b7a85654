"""The subset of etcd's API that kine serves to k3s (Kubernetes' apiserver storage
layer), on a real 3-node cluster, through etcd's messages over gRPC: paged lists at one
revision while writes continue, optimistic updates through Txn on mod_revision (the
apiserver's GuaranteedUpdate), a watch that asks for progress, and a watch that resumes
after compaction by listing again — the loop every Kubernetes informer runs."""
from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc
import pytest

from kvraft.proto import etcdserverpb_pb2 as etcdpb
from kvraft.proto import etcdserverpb_pb2_grpc as etcd_grpc
from kvraft.proto import mvccpb_pb2 as mvccpb
from tests.cluster.harness import LocalCluster, retry_unavailable

pytestmark = pytest.mark.cluster

T = 10.0
PREFIX = b"/registry/pods/default/"
PREFIX_END = b"/registry/pods/default0"


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster.start(3) as c:
        leader = c.wait_leader()
        retry_unavailable(lambda: c.put(leader, b"/warm", b"1"))
        yield c


def kv(cluster: LocalCluster, node_id: int) -> etcd_grpc.KVStub:
    return cluster.nodes[node_id].stub(etcd_grpc.KVStub)


def put(key: bytes, value: bytes) -> etcdpb.RequestOp:
    return etcdpb.RequestOp(request_put=etcdpb.PutRequest(key=key, value=value))


def paged_list(stub: etcd_grpc.KVStub, limit: int) -> tuple[int, list[tuple[bytes, bytes]]]:
    """kine's list: the first page fixes the revision, each next page continues after
    the last key at that revision."""
    first = stub.Range(etcdpb.RangeRequest(key=PREFIX, range_end=PREFIX_END, limit=limit),
                       timeout=T)
    revision = first.header.revision
    items = [(kv.key, kv.value) for kv in first.kvs]
    more = first.more
    while more:
        page = stub.Range(etcdpb.RangeRequest(key=items[-1][0] + b"\0", range_end=PREFIX_END,
                                              limit=limit, revision=revision), timeout=T)
        assert page.header.revision >= revision
        items += [(kv.key, kv.value) for kv in page.kvs]
        more = page.more
    return revision, items


def test_paged_lists_at_one_revision_while_writes_continue(cluster: LocalCluster) -> None:
    stub = kv(cluster, 1)
    for start in range(0, 300, 100):
        stub.Txn(etcdpb.TxnRequest(success=[put(PREFIX + b"pod-%04d" % i, b"v0")
                                            for i in range(start, start + 100)]), timeout=T)
    stop = threading.Event()

    def writer() -> None:
        w = kv(cluster, 2)
        n = 0
        while not stop.is_set():
            w.Put(etcdpb.PutRequest(key=PREFIX + b"pod-%04d" % (n % 400), value=b"w%d" % n),
                  timeout=T)
            n += 1

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        for _ in range(3):
            revision, items = paged_list(kv(cluster, 3), limit=37)
            whole = kv(cluster, 1).Range(etcdpb.RangeRequest(
                key=PREFIX, range_end=PREFIX_END, revision=revision), timeout=T)
            assert items == [(kv_.key, kv_.value) for kv_ in whole.kvs]
            assert len(items) >= 300
    finally:
        stop.set()
        thread.join(timeout=30)


def test_guaranteed_update_through_txn_on_mod_revision_loses_no_update(
        cluster: LocalCluster) -> None:
    key = PREFIX + b"counter"
    kv(cluster, 1).Put(etcdpb.PutRequest(key=key, value=b"0"), timeout=T)
    updaters, rounds = 4, 15
    applied = [0] * updaters

    def updater(n: int) -> None:
        stub = kv(cluster, 1 + n % 3)
        current = stub.Range(etcdpb.RangeRequest(key=key), timeout=T).kvs[0]
        while applied[n] < rounds:
            txn = stub.Txn(etcdpb.TxnRequest(
                compare=[etcdpb.Compare(key=key, target=etcdpb.Compare.MOD,
                                        result=etcdpb.Compare.EQUAL,
                                        mod_revision=current.mod_revision)],
                success=[put(key, b"%d" % (int(current.value) + 1))],
                failure=[etcdpb.RequestOp(request_range=etcdpb.RangeRequest(key=key))]),
                timeout=T)
            if txn.succeeded:
                applied[n] += 1
                current = stub.Range(etcdpb.RangeRequest(key=key), timeout=T).kvs[0]
            else:   # a conflict: the failure branch returns the current object, as kine's
                current = txn.responses[0].response_range.kvs[0]

    threads = [threading.Thread(target=updater, args=(n,)) for n in range(updaters)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    final = kv(cluster, 1).Range(etcdpb.RangeRequest(key=key), timeout=T).kvs[0]
    assert int(final.value) == updaters * rounds == sum(applied)
    assert final.version == updaters * rounds + 1


class Watch:
    """One watch stream; requests are sent by `send`, answers read by `next`."""

    def __init__(self, stub: etcd_grpc.WatchStub) -> None:
        self._requests: list[etcdpb.WatchRequest] = []
        self._cond = threading.Condition()
        self._closed = False
        self._call = stub.Watch(self._iter(), timeout=60)

    def _iter(self) -> Iterator[etcdpb.WatchRequest]:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._requests or self._closed)
                if self._closed:
                    return
                request = self._requests.pop(0)
            yield request

    def send(self, request: etcdpb.WatchRequest) -> None:
        with self._cond:
            self._requests.append(request)
            self._cond.notify_all()

    def next(self) -> etcdpb.WatchResponse:
        return next(self._call)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._call.cancel()


def test_informer_loop_progress_and_relist_after_compaction(cluster: LocalCluster) -> None:
    stub = kv(cluster, 1)
    prefix, end = PREFIX + b"informer/", PREFIX + b"informer0"
    for i in range(5):
        stub.Put(etcdpb.PutRequest(key=prefix + b"%d" % i, value=b"a"), timeout=T)
    listed = stub.Range(etcdpb.RangeRequest(key=prefix, range_end=end), timeout=T)
    rev = listed.header.revision
    watch = Watch(cluster.nodes[2].stub(etcd_grpc.WatchStub))
    try:
        watch.send(etcdpb.WatchRequest(create_request=etcdpb.WatchCreateRequest(
            key=prefix, range_end=end, start_revision=rev + 1, progress_notify=True)))
        assert watch.next().created
        stub.Put(etcdpb.PutRequest(key=prefix + b"0", value=b"b"), timeout=T)
        got = watch.next()
        assert [(e.type, e.kv.key, e.kv.value) for e in got.events] == [
            (mvccpb.Event.PUT, prefix + b"0", b"b")]
        # A progress request: an answer with no events whose header says how far the
        # watch has seen (kine's apiserver uses it to serve consistent reads from cache).
        watch.send(etcdpb.WatchRequest(progress_request=etcdpb.WatchProgressRequest()))
        progress = watch.next()
        assert not progress.events and progress.header.revision >= got.events[0].kv.mod_revision
    finally:
        watch.close()
    # The informer falls behind, history is compacted: a watch from its old revision
    # is cancelled with the compact revision; it lists again and watches from there.
    for i in range(5):
        stub.Put(etcdpb.PutRequest(key=prefix + b"%d" % i, value=b"c"), timeout=T)
    current = stub.Range(etcdpb.RangeRequest(key=prefix, range_end=end), timeout=T)
    stub.Compact(etcdpb.CompactionRequest(revision=current.header.revision), timeout=T)
    watch = Watch(cluster.nodes[3].stub(etcd_grpc.WatchStub))
    try:
        watch.send(etcdpb.WatchRequest(create_request=etcdpb.WatchCreateRequest(
            key=prefix, range_end=end, start_revision=rev + 1)))
        answer = watch.next()
        if answer.created and not answer.canceled:
            answer = watch.next()
        assert answer.canceled and answer.compact_revision == current.header.revision
    finally:
        watch.close()
    relisted = stub.Range(etcdpb.RangeRequest(key=prefix, range_end=end), timeout=T)
    assert {kv_.value for kv_ in relisted.kvs} == {b"c"}
    watch = Watch(cluster.nodes[3].stub(etcd_grpc.WatchStub))
    try:
        watch.send(etcdpb.WatchRequest(create_request=etcdpb.WatchCreateRequest(
            key=prefix, range_end=end, start_revision=relisted.header.revision + 1)))
        assert watch.next().created
        stub.DeleteRange(etcdpb.DeleteRangeRequest(key=prefix + b"4"), timeout=T)
        deleted = watch.next()
        assert [(e.type, e.kv.key) for e in deleted.events] == [
            (mvccpb.Event.DELETE, prefix + b"4")]
    finally:
        watch.close()


def test_a_list_at_a_compacted_revision_fails_with_etcds_error(cluster: LocalCluster) -> None:
    stub = kv(cluster, 1)
    stub.Put(etcdpb.PutRequest(key=PREFIX + b"x", value=b"1"), timeout=T)
    rev = stub.Range(etcdpb.RangeRequest(key=PREFIX + b"x"), timeout=T).header.revision
    stub.Put(etcdpb.PutRequest(key=PREFIX + b"x", value=b"2"), timeout=T)
    stub.Compact(etcdpb.CompactionRequest(revision=rev + 1), timeout=T)
    with pytest.raises(grpc.RpcError) as info:
        stub.Range(etcdpb.RangeRequest(key=PREFIX, range_end=PREFIX_END, revision=rev,
                                       limit=10), timeout=T)
    assert info.value.code() == grpc.StatusCode.OUT_OF_RANGE  # type: ignore[attr-defined]
    assert info.value.details() == (  # type: ignore[attr-defined]
        "etcdserver: mvcc: required revision has been compacted")
