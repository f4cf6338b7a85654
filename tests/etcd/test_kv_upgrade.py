"""etcd's KV service during a rolling upgrade from the kvraft before MVCC (issue 12):
while any member runs the old code the cluster stays at version 1, and an upgraded
member refuses etcd's writes and reads with FAILED_PRECONDITION (a member of the old
layout could not apply them; there are no revisions yet). Once every member runs this
kvraft and the leader raised the version, etcd's API sees the keys written before the
upgrade — at the migration's revision — and writes through it."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from kvraft.proto import etcdserverpb_pb2 as etcdpb
from kvraft.proto import etcdserverpb_pb2_grpc as etcdpb_grpc
from tests.cluster.harness import LocalCluster, wait_until
from tests.cluster.test_upgrade import (  # noqa: F401 (old_kvraft: a fixture)
    REPO,
    SERVE_FROM_PYTHONPATH,
    UPGRADE_TIMEOUT_S,
    cluster_version_of,
    old_kvraft,
)

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

RPC_TIMEOUT_S = 10.0
TOO_OLD = "etcdserver: cluster version too old for this request; upgrade every member"


@pytest.fixture
def old_cluster(old_kvraft: Path) -> Iterator[LocalCluster]:  # noqa: F811
    with LocalCluster.start(3, env={"PYTHONPATH": str(old_kvraft)},
                            command=SERVE_FROM_PYTHONPATH) as cluster:
        yield cluster


def etcd_kv(cluster: LocalCluster, node_id: int) -> etcdpb_grpc.KVStub:
    return cluster.nodes[node_id].stub(etcdpb_grpc.KVStub)


def test_etcds_api_waits_for_the_cluster_version_then_sees_the_old_keys(
        old_cluster: LocalCluster) -> None:
    cluster = old_cluster
    leader = cluster.wait_leader()
    cluster.put(leader, b"/old/key", b"from-before")

    cluster.terminate(1)
    cluster.env = {"PYTHONPATH": str(REPO)}  # the next launches run this kvraft
    cluster.restart(1)
    cluster.wait_leader()
    assert cluster_version_of(cluster, 1) == 1
    stub = etcd_kv(cluster, 1)
    for call in (lambda: stub.Put(etcdpb.PutRequest(key=b"/new", value=b"v"),
                                  timeout=RPC_TIMEOUT_S),
                 lambda: stub.Range(etcdpb.RangeRequest(key=b"/old/key"), timeout=RPC_TIMEOUT_S),
                 lambda: stub.Txn(etcdpb.TxnRequest(success=[etcdpb.RequestOp(
                     request_put=etcdpb.PutRequest(key=b"/new", value=b"v"))]),
                     timeout=RPC_TIMEOUT_S)):
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert (info.value.code(), info.value.details()) == (  # type: ignore[attr-defined]
            grpc.StatusCode.FAILED_PRECONDITION, TOO_OLD)

    for node_id in (2, 3):
        cluster.terminate(node_id)
        cluster.restart(node_id)
        cluster.wait_leader()
    wait_until(lambda: all(cluster_version_of(cluster, n) == 2 for n in cluster.nodes),
               UPGRADE_TIMEOUT_S, "every member at cluster version 2")

    got = stub.Range(etcdpb.RangeRequest(key=b"/old/key"), timeout=RPC_TIMEOUT_S)
    # Migrated at the first revision after an empty store's, as one entry.
    assert [(kv.value, kv.create_revision, kv.mod_revision, kv.version) for kv in got.kvs] == [
        (b"from-before", 2, 2, 1)]
    put = stub.Put(etcdpb.PutRequest(key=b"/old/key", value=b"after", prev_kv=True),
                   timeout=RPC_TIMEOUT_S)
    assert put.prev_kv.value == b"from-before" and put.header.revision > 2
    for node_id in cluster.nodes:
        assert cluster.get(node_id, b"/old/key") == b"after"
