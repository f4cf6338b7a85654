"""etcd's request limits as etcdctl 3.4 shows them (issue 13), on a one-voter cluster
started with small limits (`--max-request-bytes 65536 --max-txn-ops 4`) and a learner
added to it: the exact line etcdctl prints for a put over the limit and a txn with too
many ops, gRPC's own refusal of a frame over the port's receive limit (the member keeps
serving), and a learner that refuses a linearizable get and a put but serves a
serializable get and its status."""
from __future__ import annotations

import json
from collections.abc import Iterator

import grpc
import pytest

from kvraft.proto import etcdserverpb_pb2 as etcdpb
from kvraft.proto import etcdserverpb_pb2_grpc as etcdpb_grpc
from kvraft.proto import kvraft_pb2 as pb
from tests.cluster.harness import LocalCluster, retry_unavailable, wait_until

from .conftest import ETCDCTL, etcdctl, failed, ok

pytestmark = pytest.mark.cluster

MAX_REQUEST_BYTES = 65536
MAX_TXN_OPS = 4
CATCH_UP_TIMEOUT_S = 60
RPC_TIMEOUT_S = 10.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    if ETCDCTL is None:
        pytest.skip("etcdctl is not installed (Debian: etcd-client)")
    with LocalCluster.start(1, extra_args=["--max-request-bytes", str(MAX_REQUEST_BYTES),
                                           "--max-txn-ops", str(MAX_TXN_OPS)]) as c:
        c.wait_leader()
        yield c


def last_line(stderr: str) -> str:
    """etcdctl's error line (any log lines of its client come before it)."""
    return stderr.strip().splitlines()[-1]


def txn_of_puts(n: int) -> str:
    """etcdctl's txn on stdin: no compares, `n` puts on success, no failure ops."""
    puts = "".join(f'put /limits/txn/{i} "v"\n' for i in range(n))
    return f"\n{puts}\n\n"


def test_a_put_over_max_request_bytes_prints_etcds_error(cluster: LocalCluster) -> None:
    endpoint = cluster.nodes[1].client_address
    refused = failed(etcdctl(endpoint, "put", "/limits/big", "x" * MAX_REQUEST_BYTES))
    assert last_line(refused) == "Error: etcdserver: request is too large"
    assert ok(etcdctl(endpoint, "put", "/limits/big", "x" * (MAX_REQUEST_BYTES - 128))) == \
        "OK\n"
    assert ok(etcdctl(endpoint, "get", "/limits/big", "--print-value-only")) == \
        "x" * (MAX_REQUEST_BYTES - 128) + "\n"


def test_a_txn_over_max_txn_ops_prints_etcds_error(cluster: LocalCluster) -> None:
    endpoint = cluster.nodes[1].client_address
    refused = failed(etcdctl(endpoint, "txn", stdin=txn_of_puts(MAX_TXN_OPS + 1)))
    assert last_line(refused) == "Error: etcdserver: too many operations in txn request"
    assert ok(etcdctl(endpoint, "txn", stdin=txn_of_puts(MAX_TXN_OPS))).startswith(
        "SUCCESS\n")


def test_a_frame_over_the_receive_limit_is_grpcs_resource_exhausted(
        cluster: LocalCluster) -> None:
    """Past what the port takes at all (kvraft's own limits make it 9 MiB here) gRPC
    refuses the frame before any handler decodes it, and the member goes on serving."""
    kv = cluster.nodes[1].stub(etcdpb_grpc.KVStub)
    with pytest.raises(grpc.RpcError) as info:
        kv.Put(etcdpb.PutRequest(key=b"/limits/huge", value=b"x" * (10 << 20)),
               timeout=RPC_TIMEOUT_S)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
    kv.Put(etcdpb.PutRequest(key=b"/limits/after", value=b"1"), timeout=RPC_TIMEOUT_S)
    assert kv.Range(etcdpb.RangeRequest(key=b"/limits/after"),
                    timeout=RPC_TIMEOUT_S).kvs[0].value == b"1"


def test_a_learner_refuses_a_linearizable_get_and_serves_a_serializable_one(
        cluster: LocalCluster) -> None:
    leader = cluster.nodes[1].client_address
    ok(etcdctl(leader, "put", "/limits/seen", "by-the-learner"))
    new = cluster.define(2)
    retry_unavailable(lambda: cluster.cluster_stub(1).AddMember(pb.AddMemberRequest(
        id=2, peer_address=new.peer_address, client_address=new.client_address,
        learner=True), timeout=RPC_TIMEOUT_S))
    cluster.launch(2, join=True)
    cluster.wait_serving(2)
    learner = new.client_address

    def caught_up() -> bool:
        got = etcdctl(learner, "get", "/limits/seen", "--consistency=s", "--print-value-only")
        return got.returncode == 0 and got.stdout == "by-the-learner\n"

    wait_until(caught_up, CATCH_UP_TIMEOUT_S, "the learner to catch up",
               lambda: cluster.log_tail(2))
    refused = failed(etcdctl(learner, "get", "/limits/seen"))
    assert last_line(refused) == "Error: etcdserver: rpc not supported for learner"
    refused = failed(etcdctl(learner, "put", "/limits/seen", "by-a-learner"))
    assert last_line(refused) == "Error: etcdserver: rpc not supported for learner"
    (status,) = json.loads(ok(etcdctl(learner, "endpoint", "status", "-w", "json")))
    assert status["Status"]["isLearner"] is True
    # The refused put never reached the log.
    assert ok(etcdctl(leader, "get", "/limits/seen", "--print-value-only")) == \
        "by-the-learner\n"
