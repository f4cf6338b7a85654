"""etcdctl 3.4 (Debian's etcd-client, a client nobody here wrote) against a fake member
that speaks only the project's generated etcd classes (SPEC §6).

No kvraft server runs: the fake records each request etcdctl sends and answers canned
responses, so both directions of the wire are checked — the request fields etcdctl
encodes as our classes decode them, and our responses as etcdctl prints them (-w json
prints every field it decoded). Unary calls, a Txn with its oneofs, and the Watch
bidi stream are covered. Skipped when etcdctl is not installed.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from kvraft.proto import etcdserverpb_pb2 as pb
from kvraft.proto import etcdserverpb_pb2_grpc as pb_grpc
from kvraft.proto import mvccpb_pb2

ETCDCTL = shutil.which("etcdctl")
pytestmark = pytest.mark.skipif(ETCDCTL is None,
                                reason="etcdctl is not installed (Debian: etcd-client)")

CLUSTER_ID = 0xCDF818194E3A8C32      # both above 2**63: etcd's ids are random 64-bit
MEMBER_ID = 0x8E9E05C52164694D
LEASE_ID = 0x1A
REVISION = 42
ETCDCTL_TIMEOUT_S = 30               # one etcdctl run, connection and command included
SERVER_THREADS_MAX = 4               # etcdctl runs one call (or one stream) at a time


def header() -> pb.ResponseHeader:
    return pb.ResponseHeader(cluster_id=CLUSTER_ID, member_id=MEMBER_ID, revision=REVISION,
                             raft_term=3)


STORED = mvccpb_pb2.KeyValue(key=b"foo", value=b"bar", create_revision=5, mod_revision=41,
                             version=2, lease=LEASE_ID)


class FakeEtcd(pb_grpc.KVServicer, pb_grpc.WatchServicer, pb_grpc.LeaseServicer,
               pb_grpc.ClusterServicer, pb_grpc.MaintenanceServicer):
    """Answers etcdctl with canned responses; `received` holds every request, in order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.received: list[Any] = []

    def _record(self, request: Any) -> None:
        with self._lock:
            self.received.append(request)

    def Put(self, request: pb.PutRequest, context: Any) -> pb.PutResponse:
        self._record(request)
        return pb.PutResponse(header=header(), prev_kv=STORED)

    def Range(self, request: pb.RangeRequest, context: Any) -> pb.RangeResponse:
        self._record(request)
        return pb.RangeResponse(header=header(), kvs=[STORED], more=True, count=7)

    def Txn(self, request: pb.TxnRequest, context: Any) -> pb.TxnResponse:
        self._record(request)
        return pb.TxnResponse(header=header(), succeeded=True, responses=[
            pb.ResponseOp(response_put=pb.PutResponse(header=header())),
            pb.ResponseOp(response_range=pb.RangeResponse(header=header(), kvs=[STORED],
                                                          count=1))])

    def LeaseTimeToLive(self, request: pb.LeaseTimeToLiveRequest,
                        context: Any) -> pb.LeaseTimeToLiveResponse:
        self._record(request)
        return pb.LeaseTimeToLiveResponse(header=header(), ID=request.ID, TTL=-1)

    def LeaseGrant(self, request: pb.LeaseGrantRequest, context: Any) -> pb.LeaseGrantResponse:
        self._record(request)
        return pb.LeaseGrantResponse(header=header(), ID=LEASE_ID, TTL=request.TTL)

    def MemberList(self, request: pb.MemberListRequest, context: Any) -> pb.MemberListResponse:
        self._record(request)
        return pb.MemberListResponse(header=header(), members=[
            pb.Member(ID=MEMBER_ID, name="m1", peerURLs=["http://127.0.0.1:2380"],
                      clientURLs=["http://127.0.0.1:2379"]),
            pb.Member(ID=7, peerURLs=["http://127.0.0.1:2381"], isLearner=True)])

    def Status(self, request: pb.StatusRequest, context: Any) -> pb.StatusResponse:
        self._record(request)
        return pb.StatusResponse(header=header(), version="3.5.0", dbSize=4096,
                                 leader=MEMBER_ID, raftIndex=100, raftTerm=3,
                                 raftAppliedIndex=99, errors=["NOSPACE"], dbSizeInUse=2048)

    def Watch(self, request_iterator: Iterator[pb.WatchRequest],
              context: Any) -> Iterator[pb.WatchResponse]:
        for request in request_iterator:
            self._record(request)
            if request.WhichOneof("request_union") != "create_request":
                continue
            yield pb.WatchResponse(header=header(), watch_id=1, created=True)
            deleted = mvccpb_pb2.KeyValue(key=b"foo", mod_revision=42)
            yield pb.WatchResponse(header=header(), watch_id=1, events=[
                mvccpb_pb2.Event(type=mvccpb_pb2.Event.PUT, kv=STORED),
                mvccpb_pb2.Event(type=mvccpb_pb2.Event.DELETE, kv=deleted, prev_kv=STORED)])
            yield pb.WatchResponse(header=header(), watch_id=1, canceled=True,
                                   compact_revision=40)


@pytest.fixture
def fake_etcd() -> Iterator[tuple[FakeEtcd, str]]:
    fake = FakeEtcd()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=SERVER_THREADS_MAX))
    for service in ("KV", "Watch", "Lease", "Cluster", "Maintenance"):
        getattr(pb_grpc, f"add_{service}Servicer_to_server")(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield fake, f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None).wait(timeout=10)


def etcdctl(endpoint: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("ETCDCTL_") and k.lower() not in ("http_proxy", "https_proxy")}
    env["ETCDCTL_API"] = "3"
    assert ETCDCTL is not None
    return subprocess.run(
        [ETCDCTL, f"--endpoints={endpoint}", "--dial-timeout=5s", "--command-timeout=10s",
         *args], input=stdin, capture_output=True, text=True, env=env,
        timeout=ETCDCTL_TIMEOUT_S)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_put_sends_etcds_fields_and_reads_prev_kv(fake_etcd: tuple[FakeEtcd, str]) -> None:
    fake, endpoint = fake_etcd
    out = json.loads(ok(etcdctl(endpoint, "put", "foo", "baz", f"--lease={LEASE_ID:x}",
                                "--prev-kv", "-w", "json")))
    (req,) = fake.received
    assert req == pb.PutRequest(key=b"foo", value=b"baz", lease=LEASE_ID, prev_kv=True)
    assert out["header"] == {"cluster_id": CLUSTER_ID, "member_id": MEMBER_ID,
                             "revision": REVISION, "raft_term": 3}
    assert out["prev_kv"]["value"] == "YmFy"          # base64 of b"bar"


def test_get_prefix_with_options(fake_etcd: tuple[FakeEtcd, str]) -> None:
    fake, endpoint = fake_etcd
    out = json.loads(ok(etcdctl(endpoint, "get", "fo", "--prefix", "--rev=3", "--limit=2",
                                "--order=DESCEND", "--sort-by=MODIFY", "-w", "json")))
    (req,) = fake.received
    assert (req.key, req.range_end, req.revision, req.limit) == (b"fo", b"fp", 3, 2)
    assert (req.sort_order, req.sort_target) == (pb.RangeRequest.DESCEND, pb.RangeRequest.MOD)
    assert not req.serializable
    assert out["kvs"] == [{"key": "Zm9v", "create_revision": 5, "mod_revision": 41,
                           "version": 2, "value": "YmFy", "lease": LEASE_ID}]
    assert (out["more"], out["count"]) == (True, 7)


def test_txn_from_stdin(fake_etcd: tuple[FakeEtcd, str]) -> None:
    fake, endpoint = fake_etcd
    script = 'mod("foo") = "41"\nvalue("foo") != "x"\n\nput foo baz\nget foo\n\ndel foo\n\n'
    out = ok(etcdctl(endpoint, "txn", stdin=script))
    (req,) = fake.received
    mod, value = req.compare
    assert (mod.target, mod.result, mod.key, mod.WhichOneof("target_union"),
            mod.mod_revision) == (pb.Compare.MOD, pb.Compare.EQUAL, b"foo", "mod_revision", 41)
    assert (value.target, value.result, value.value) == (
        pb.Compare.VALUE, pb.Compare.NOT_EQUAL, b"x")
    assert [op.WhichOneof("request") for op in req.success] == ["request_put", "request_range"]
    assert req.success[0].request_put == pb.PutRequest(key=b"foo", value=b"baz")
    assert req.failure[0].request_delete_range.key == b"foo"
    assert out.splitlines() == ["SUCCESS", "", "OK", "", "foo", "bar"]


def test_watch_stream(fake_etcd: tuple[FakeEtcd, str]) -> None:
    fake, endpoint = fake_etcd
    result = etcdctl(endpoint, "watch", "foo", "--rev=3", "--prev-kv")
    create = fake.received[0].create_request
    assert (create.key, create.range_end, create.start_revision, create.prev_kv) == (
        b"foo", b"", 3, True)
    assert result.stdout.splitlines() == [
        "PUT", "foo", "bar",
        "DELETE", "foo", "bar", "foo", ""]            # with --prev-kv: previous, then current
    # compact_revision set: clientv3 turns it into etcd's compacted error and ends the watch.
    assert result.stderr.splitlines() == [
        "watch was canceled (etcdserver: mvcc: required revision has been compacted)",
        "Error: watch is canceled by the server"]


def test_lease_commands(fake_etcd: tuple[FakeEtcd, str]) -> None:
    fake, endpoint = fake_etcd
    assert ok(etcdctl(endpoint, "lease", "grant", "60")) == (
        f"lease {LEASE_ID:016x} granted with TTL(60s)\n")
    assert ok(etcdctl(endpoint, "lease", "timetolive", f"{LEASE_ID:x}")) == (
        f"lease {LEASE_ID:016x} already expired\n")
    grant, ttl = fake.received
    assert grant == pb.LeaseGrantRequest(TTL=60)
    assert ttl == pb.LeaseTimeToLiveRequest(ID=LEASE_ID)


def test_member_list_and_endpoint_status(fake_etcd: tuple[FakeEtcd, str]) -> None:
    _, endpoint = fake_etcd
    members = json.loads(ok(etcdctl(endpoint, "member", "list", "-w", "json")))["members"]
    assert members == [
        {"ID": MEMBER_ID, "name": "m1", "peerURLs": ["http://127.0.0.1:2380"],
         "clientURLs": ["http://127.0.0.1:2379"]},
        {"ID": 7, "peerURLs": ["http://127.0.0.1:2381"], "isLearner": True}]
    (status,) = json.loads(ok(etcdctl(endpoint, "endpoint", "status", "-w", "json")))
    s = status["Status"]
    assert (s["version"], s["dbSize"], s["leader"], s["raftIndex"], s["raftTerm"],
            s["raftAppliedIndex"], s["errors"], s["dbSizeInUse"]) == (
        "3.5.0", 4096, MEMBER_ID, 100, 3, 99, ["NOSPACE"], 2048)
