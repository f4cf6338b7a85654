"""Client.put/get/delete against a server with etcd's KV and no kvraft.KV (a plain etcd):
the first UNIMPLEMENTED answer switches them to etcd's Put/Range/DeleteRange for good.
In-process gRPC servers only; the real etcd runs in test_etcd_client.py."""
from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest

from kvraft.client import Client, KvraftError
from kvraft.proto import etcdserverpb_pb2 as etcdpb
from kvraft.proto import etcdserverpb_pb2_grpc as etcdpb_grpc
from kvraft.proto import kvraft_pb2_grpc as pb_grpc
from kvraft.proto import mvccpb_pb2 as mvccpb


class _NoKvraftKV(pb_grpc.KVServicer):
    """Answers kvraft.KV as etcd does (it has no such service), counting the calls."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    def _refuse(self, method: str, context: grpc.ServicerContext) -> None:
        self.calls[method] += 1
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "unknown service kvraft.KV")

    def Put(self, request: object, context: grpc.ServicerContext) -> None:
        self._refuse("Put", context)

    def Get(self, request: object, context: grpc.ServicerContext) -> None:
        self._refuse("Get", context)

    def Delete(self, request: object, context: grpc.ServicerContext) -> None:
        self._refuse("Delete", context)


class _EtcdKV(etcdpb_grpc.KVServicer):
    """etcd's KV over a dict: single keys only (what put/get/delete send)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.store: dict[bytes, bytes] = {}
        self.revision = 1

    def Put(self, request: etcdpb.PutRequest,
            context: grpc.ServicerContext) -> etcdpb.PutResponse:
        with self.lock:
            self.revision += 1
            self.store[request.key] = request.value
            return etcdpb.PutResponse(header=etcdpb.ResponseHeader(revision=self.revision))

    def Range(self, request: etcdpb.RangeRequest,
              context: grpc.ServicerContext) -> etcdpb.RangeResponse:
        assert not request.range_end, "put/get/delete read one key"
        with self.lock:
            kvs = ([mvccpb.KeyValue(key=request.key, value=self.store[request.key])]
                   if request.key in self.store else [])
            return etcdpb.RangeResponse(header=etcdpb.ResponseHeader(revision=self.revision),
                                        kvs=kvs, count=len(kvs))

    def DeleteRange(self, request: etcdpb.DeleteRangeRequest,
                    context: grpc.ServicerContext) -> etcdpb.DeleteRangeResponse:
        with self.lock:
            found = self.store.pop(request.key, None) is not None
            self.revision += found
            return etcdpb.DeleteRangeResponse(
                header=etcdpb.ResponseHeader(revision=self.revision), deleted=int(found))


@pytest.fixture
def plain_etcd() -> Iterator[tuple[str, _NoKvraftKV, _EtcdKV]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    kvraft_kv, etcd_kv = _NoKvraftKV(), _EtcdKV()
    pb_grpc.add_KVServicer_to_server(kvraft_kv, server)
    etcdpb_grpc.add_KVServicer_to_server(etcd_kv, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", kvraft_kv, etcd_kv
    finally:
        server.stop(grace=None)


def test_put_get_delete_go_through_etcds_kv_after_one_unimplemented(
        plain_etcd: tuple[str, _NoKvraftKV, _EtcdKV]) -> None:
    endpoint, kvraft_kv, etcd_kv = plain_etcd
    with Client([endpoint], timeout=5) as kv:
        kv.put("k", "v")
        assert etcd_kv.store == {b"k": b"v"}
        assert kv.get("k") == b"v" and kv.get("absent") is None
        assert kv.delete("k") is True and kv.delete("k") is False
        assert etcd_kv.store == {}
    # kvraft.KV was asked once (the first put); every later call went to etcd's KV.
    assert kvraft_kv.calls == Counter({"Put": 1})


def test_another_refusal_of_kvraft_kv_is_raised_not_taken_for_etcd(
        plain_etcd: tuple[str, _NoKvraftKV, _EtcdKV]) -> None:
    endpoint, kvraft_kv, etcd_kv = plain_etcd

    def refuse(method: str, context: grpc.ServicerContext) -> None:
        kvraft_kv.calls[method] += 1
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, "not etcd")

    kvraft_kv._refuse = refuse  # type: ignore[method-assign]
    with Client([endpoint], timeout=5) as kv:
        with pytest.raises(KvraftError) as raised:
            kv.put("k", "v")
        assert raised.value.code == grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(KvraftError):
            kv.get("k")
    assert etcd_kv.store == {} and kvraft_kv.calls == Counter({"Put": 1, "Get": 1})
