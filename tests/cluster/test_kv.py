"""A 3-node cluster serving SPEC §2: writes and reads through every member, status
codes for bad input, health, reflection, metrics, leader transfer, and leader failover.

The tests share one cluster; the failover test runs last and leaves it whole again."""
from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from kvraft.proto import kvraft_pb2 as pb

from .harness import LocalCluster, retry_unavailable, wait_until

pytestmark = pytest.mark.cluster


def code_of(call: Callable[[], object]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


def test_a_leader_is_elected_and_every_member_agrees(cluster3: LocalCluster) -> None:
    leader = cluster3.wait_leader()
    for node_id in cluster3.nodes:
        status = cluster3.status(node_id)
        assert status.header.member_id == node_id
        assert status.header.leader_id == leader
        assert sorted(m.id for m in status.members) == [1, 2, 3]
        assert status.role == ("leader" if node_id == leader else "follower")


def test_put_on_one_member_is_read_linearizably_on_every_member(cluster3: LocalCluster) -> None:
    for writer in cluster3.nodes:
        key = f"put-from-{writer}".encode()
        retry_unavailable(lambda w=writer, k=key: cluster3.put(w, k, b"value-%d" % w))
        for reader in cluster3.nodes:
            assert cluster3.get(reader, key) == b"value-%d" % writer


def test_serializable_get_is_served_locally(cluster3: LocalCluster) -> None:
    leader = cluster3.wait_leader()
    retry_unavailable(lambda: cluster3.put(leader, b"ser", b"1"))
    for node_id in cluster3.nodes:
        # A follower may lag; once it has applied the write its local read shows it.
        wait_until(lambda n=node_id: cluster3.get(n, b"ser", serializable=True) == b"1",
                   10, f"node {node_id} to apply the write")
    assert cluster3.get(leader, b"never-written", serializable=True) is None


def test_delete_reports_whether_the_key_existed(cluster3: LocalCluster) -> None:
    kv = cluster3.kv(2)
    retry_unavailable(lambda: cluster3.put(2, b"del", b"x"))
    assert kv.Delete(pb.DeleteRequest(key=b"del"), timeout=5).deleted is True
    assert kv.Delete(pb.DeleteRequest(key=b"del"), timeout=5).deleted is False
    assert cluster3.get(3, b"del") is None


def test_compare_and_swap_semantics(cluster3: LocalCluster) -> None:
    kv = cluster3.kv(3)
    # expected absent: succeeds only while the key does not exist
    r = kv.CompareAndSwap(pb.CompareAndSwapRequest(key=b"cas", value=b"a"), timeout=5)
    assert (r.succeeded, r.found) == (True, False)
    r = kv.CompareAndSwap(pb.CompareAndSwapRequest(key=b"cas", value=b"b"), timeout=5)
    assert (r.succeeded, r.found, r.current) == (False, True, b"a")
    r = kv.CompareAndSwap(pb.CompareAndSwapRequest(key=b"cas", expected=b"zzz", value=b"c"),
                          timeout=5)
    assert (r.succeeded, r.current) == (False, b"a")
    r = kv.CompareAndSwap(pb.CompareAndSwapRequest(key=b"cas", expected=b"a", value=b"d"),
                          timeout=5)
    assert (r.succeeded, r.current) == (True, b"a")
    assert cluster3.get(1, b"cas") == b"d"


def test_scan_covers_start_to_end_with_limit_and_more(cluster3: LocalCluster) -> None:
    kv = cluster3.kv(1)
    ops = [pb.BatchOp(put=pb.PutRequest(key=b"scan/%02d" % i, value=b"%d" % i))
           for i in range(10)]
    kv.Batch(pb.BatchRequest(ops=ops), timeout=5)
    r = cluster3.kv(2).Scan(pb.ScanRequest(start=b"scan/", end=b"scan0"), timeout=5)
    assert [kv_.key for kv_ in r.kvs] == [b"scan/%02d" % i for i in range(10)]
    assert r.more is False
    r = cluster3.kv(3).Scan(pb.ScanRequest(start=b"scan/03", end=b"scan/07"), timeout=5)
    assert [kv_.value for kv_ in r.kvs] == [b"3", b"4", b"5", b"6"]
    r = cluster3.kv(3).Scan(pb.ScanRequest(start=b"scan/", end=b"scan0", limit=3), timeout=5)
    assert len(r.kvs) == 3 and r.more is True
    # Serializable, to the end of the key space: node 3 already served linearizable scans
    # after the batch, so its local state holds the batch; other tests' keys may follow.
    r = cluster3.kv(3).Scan(pb.ScanRequest(start=b"scan/", limit=0,
                                           consistency=pb.SERIALIZABLE), timeout=5)
    keys = [kv_.key for kv_ in r.kvs]
    assert keys[:10] == [b"scan/%02d" % i for i in range(10)], keys[:12]
    assert keys == sorted(keys) and keys[0] >= b"scan/"


def test_batch_is_atomic_and_reports_each_delete(cluster3: LocalCluster) -> None:
    kv = cluster3.kv(2)
    retry_unavailable(lambda: cluster3.put(2, b"b/1", b"old"))
    r = kv.Batch(pb.BatchRequest(ops=[
        pb.BatchOp(delete=pb.DeleteRequest(key=b"b/1")),
        pb.BatchOp(put=pb.PutRequest(key=b"b/2", value=b"two")),
        pb.BatchOp(delete=pb.DeleteRequest(key=b"b/missing")),
    ]), timeout=5)
    assert list(r.deleted) == [True, False]
    assert cluster3.get(1, b"b/1") is None and cluster3.get(1, b"b/2") == b"two"


def test_bad_inputs_get_their_status_codes_and_change_nothing(cluster3: LocalCluster) -> None:
    kv, cl = cluster3.kv(1), cluster3.cluster_stub(1)
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    precondition = grpc.StatusCode.FAILED_PRECONDITION
    big_key = b"k" * 4097
    cases = {
        "empty key put": (lambda: kv.Put(pb.PutRequest(key=b"", value=b"v"), timeout=5), invalid),
        "empty key get": (lambda: kv.Get(pb.GetRequest(key=b""), timeout=5), invalid),
        "4 KiB + 1 key": (lambda: kv.Put(pb.PutRequest(key=big_key, value=b"v"), timeout=5),
                          invalid),
        "value over 1 MiB": (lambda: kv.Put(pb.PutRequest(key=b"bad/v",
                                                          value=b"v" * ((1 << 20) + 1)),
                                            timeout=5), invalid),
        "cas value over 1 MiB": (lambda: kv.CompareAndSwap(pb.CompareAndSwapRequest(
            key=b"bad/v", value=b"v" * ((1 << 20) + 1)), timeout=5), invalid),
        "batch over 4 MiB": (lambda: kv.Batch(pb.BatchRequest(ops=[
            pb.BatchOp(put=pb.PutRequest(key=b"bad/b%d" % i, value=b"v" * (1 << 20)))
            for i in range(5)]), timeout=10), invalid),
        "batch with an empty op": (lambda: kv.Batch(pb.BatchRequest(ops=[
            pb.BatchOp(put=pb.PutRequest(key=b"bad/ok", value=b"v")), pb.BatchOp()]),
            timeout=5), invalid),
        "empty key delete": (lambda: kv.Delete(pb.DeleteRequest(key=b""), timeout=5), invalid),
        "remove unknown member": (lambda: cl.RemoveMember(pb.RemoveMemberRequest(id=42),
                                                          timeout=5), precondition),
        "remove member 0": (lambda: cl.RemoveMember(pb.RemoveMemberRequest(id=0), timeout=5),
                            invalid),
        "add member with a malformed address": (lambda: cl.AddMember(pb.AddMemberRequest(
            id=7, peer_address="not-an-address"), timeout=5), invalid),
        "add member 0": (lambda: cl.AddMember(pb.AddMemberRequest(
            id=0, peer_address="127.0.0.1:1"), timeout=5), invalid),
        "add an existing voter": (lambda: cl.AddMember(pb.AddMemberRequest(
            id=2, peer_address="127.0.0.1:1"), timeout=5), precondition),
        "transfer to a non-member": (lambda: cl.TransferLeader(
            pb.TransferLeaderRequest(to=9), timeout=5), precondition),
    }
    for name, (call, expected) in cases.items():
        assert code_of(call) == expected, name
    assert cluster3.get(2, b"bad/v") is None
    assert cluster3.get(2, b"bad/b0") is None
    assert cluster3.get(2, b"bad/ok") is None
    assert sorted(m.id for m in cluster3.status(3).members) == [1, 2, 3]


def test_health_and_reflection_are_served_on_the_client_port(cluster3: LocalCluster) -> None:
    channel = cluster3.nodes[1].grpc_channel()
    health = health_pb2_grpc.HealthStub(channel)
    r = health.Check(health_pb2.HealthCheckRequest(service="kvraft.KV"), timeout=5)
    assert r.status == health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = refl.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert {"kvraft.KV", "kvraft.Cluster", "grpc.health.v1.Health"} <= names


def test_metrics_expose_raft_and_request_counters(cluster3: LocalCluster) -> None:
    leader = cluster3.wait_leader()
    retry_unavailable(lambda: cluster3.put(leader, b"m", b"1"))
    text = cluster3.metrics_text(leader)
    for name in ("kvraft_term", "kvraft_commit_index", "kvraft_applied_index",
                 "kvraft_requests_total", "kvraft_request_latency_seconds_bucket",
                 "kvraft_disk_wal_fsync_duration_seconds_count", "kvraft_leader_changes_total"):
        assert name in text, name
    assert 'kvraft_requests_total{code="OK",rpc="Put"}' in text
    assert "kvraft_is_leader 1.0" in text
    assert "kvraft_has_leader 1.0" in text


def test_leader_transfer_to_a_chosen_member(cluster3: LocalCluster) -> None:
    leader = cluster3.wait_leader()
    target = next(i for i in cluster3.nodes if i != leader)
    # Ask a member that is not the target (any member accepts any request).
    asker = next(i for i in cluster3.nodes if i != target)
    retry_unavailable(lambda: cluster3.cluster_stub(asker).TransferLeader(
        pb.TransferLeaderRequest(to=target), timeout=10))
    assert cluster3.wait_leader() == target
    retry_unavailable(lambda: cluster3.put(target, b"after-transfer", b"1"))
    assert cluster3.get(leader, b"after-transfer") == b"1"


def test_kill9_leader_elects_a_new_one_without_losing_acked_writes(
    cluster3: LocalCluster,
) -> None:
    leader = cluster3.wait_leader()
    acked = {}
    for i in range(30):
        key, value = b"failover/%02d" % i, b"v%d" % i
        retry_unavailable(lambda k=key, v=value: cluster3.put(leader, k, v))
        acked[key] = value
    cluster3.kill9(leader)
    survivors = [i for i in cluster3.nodes if i != leader]
    new_leader = cluster3.wait_leader(survivors)
    assert new_leader != leader
    for key, value in acked.items():
        assert cluster3.get(new_leader, key) == value
    retry_unavailable(lambda: cluster3.put(new_leader, b"failover/after", b"new"))
    # The old leader restarts from its data directory and catches up.
    cluster3.restart(leader)
    cluster3.wait_leader()
    wait_until(lambda: cluster3.get(leader, b"failover/after", serializable=True) == b"new",
               20, "the old leader to catch up", lambda: cluster3.log_tail(leader))
    for key, value in acked.items():
        assert cluster3.get(leader, key, serializable=True) == value


def test_every_kvraft_write_is_one_revision_and_headers_report_it(
        cluster3: LocalCluster) -> None:
    """SPEC §6: kvraft's ResponseHeader.revision is the store's revision, which every
    write entry raises by one (a Batch too: one entry, one revision)."""
    leader = cluster3.wait_leader()
    kv = cluster3.kv(leader)
    first = retry_unavailable(lambda: kv.Put(pb.PutRequest(key=b"rev-a", value=b"1"),
                                             timeout=5)).header.revision
    second = kv.Put(pb.PutRequest(key=b"rev-a", value=b"2"), timeout=5).header.revision
    batch = kv.Batch(pb.BatchRequest(ops=[
        pb.BatchOp(put=pb.PutRequest(key=b"rev-b", value=b"x")),
        pb.BatchOp(delete=pb.DeleteRequest(key=b"rev-a"))]), timeout=5).header.revision
    assert first >= 2 and (second, batch) == (first + 1, first + 2)
    for node_id in cluster3.nodes:
        got = cluster3.kv(node_id).Get(pb.GetRequest(key=b"rev-b"), timeout=5)
        assert got.header.revision >= batch
