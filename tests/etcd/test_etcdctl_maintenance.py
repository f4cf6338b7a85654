"""etcdctl 3.4's `endpoint status`, `move-leader` and `alarm` against a real 3-node
kvraft cluster (SPEC §6, etcd's Maintenance service)."""
from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import threading
import time
import zlib
from pathlib import Path

import grpc
import pytest

from kvraft.proto import etcdserverpb_pb2 as etcdpb
from kvraft.proto import etcdserverpb_pb2_grpc as etcdpb_grpc
from kvraft.proto import kvraft_pb2 as pb
from kvraft.server.etcd.maintenance import ETCD_VERSION
from kvraft.storage.snapshot import MAGIC as SNAPSHOT_MAGIC
from tests.cluster.harness import LocalCluster, retry_unavailable, wait_until

from .conftest import etcdctl, failed, ok

pytestmark = pytest.mark.cluster

LEADER_TIMEOUT_S = 30
DEFRAG_TIMEOUT_S = 120
DEFRAG_WRITERS = 4
# kvraft serve's log line at the end of a defragmentation (kvraft/server/etcd/maintenance.py):
# how long it took and when it started (a Unix time).
DEFRAG_END = re.compile(r"defragmented the database in ([0-9.]+) s \(from ([0-9.]+)\)")
# Enough data that compacting it takes a while: 2 rounds of the same keys (the first
# round's latest records are garbage a compaction drops) ...
LOAD_KEYS, LOAD_ROUNDS, LOAD_VALUE_BYTES, LOAD_BATCH_OPS = 12_000, 2, 1000, 3000
# ... all of it (and the Raft log's copy) still in LevelDB's memtable and write-ahead
# log, which LevelDB's background compaction never touches: the defragmentation writes
# every byte out and compacts it, however idle the member was before.
DEFRAG_WRITE_BUFFER_BYTES = 256 << 20


def statuses(endpoints: str, *flags: str) -> dict[str, dict]:
    """endpoint -> its Status, from `etcdctl endpoint status -w json`."""
    out = json.loads(ok(etcdctl(endpoints, "endpoint", "status", "-w", "json", *flags)))
    return {row["Endpoint"]: row["Status"] for row in out}


def maintenance(cluster: LocalCluster, node_id: int) -> etcdpb_grpc.MaintenanceStub:
    return cluster.nodes[node_id].stub(etcdpb_grpc.MaintenanceStub)


def test_endpoint_status_reports_each_members_raft_state(etcd_cluster3: LocalCluster) -> None:
    cluster = etcd_cluster3
    leader = cluster.wait_leader()
    for i in range(10):
        retry_unavailable(lambda i=i: cluster.put(leader, b"status/%d" % i, b"x" * 100))
    commit = cluster.status(leader).commit_index
    for node_id in cluster.nodes:
        cluster.wait_applied(node_id, commit)

    got = statuses(cluster.endpoints())
    assert sorted(got) == sorted(n.client_address for n in cluster.nodes.values())
    terms = set()
    for node_id, node in cluster.nodes.items():
        s = got[node.client_address]
        assert s["header"]["member_id"] == node_id
        assert s["leader"] == leader
        assert s["version"] == ETCD_VERSION
        assert s["raftIndex"] >= commit
        assert s["raftAppliedIndex"] >= commit
        assert s["dbSize"] > 0 and s["dbSizeInUse"] == s["dbSize"]
        assert "errors" not in s and "isLearner" not in s   # omitted when empty / false
        terms.add((s["raftTerm"], s["header"]["raft_term"]))
    ((term, header_term),) = terms
    assert term == header_term == cluster.status(leader).header.term

    # --cluster: the endpoints are the client URLs of etcd's MemberList.
    by_url = statuses(cluster.nodes[1].client_address, "--cluster")
    assert sorted(by_url) == sorted(f"http://{n.client_address}"
                                    for n in cluster.nodes.values())
    assert {s["leader"] for s in by_url.values()} == {leader}

    table = ok(etcdctl(cluster.nodes[leader].client_address, "endpoint", "status"))
    assert table.startswith(f"{cluster.nodes[leader].client_address}, {leader:x}, "
                            f"{ETCD_VERSION}, "), table
    assert ", true, false, " in table   # IS LEADER, IS LEARNER


def test_move_leader_to_a_follower(etcd_cluster3: LocalCluster) -> None:
    cluster = etcd_cluster3
    leader = cluster.wait_leader()
    target = next(i for i in sorted(cluster.nodes) if i != leader)
    moved = ok(etcdctl(cluster.endpoints(), "move-leader", f"{target:x}"))
    assert moved == f"Leadership transferred from {leader:x} to {target:x}\n"
    assert cluster.wait_leader(timeout_s=LEADER_TIMEOUT_S) == target
    wait_until(lambda: {s["leader"] for s in statuses(cluster.endpoints()).values()}
               == {target}, LEADER_TIMEOUT_S, "every member to see the new leader")

    # etcdctl looks for the leader among the endpoints it was given.
    others = cluster.endpoints(i for i in cluster.nodes if i != target)
    assert "no leader endpoint given at" in failed(
        etcdctl(others, "move-leader", f"{leader:x}"))


def test_move_leader_refusals_are_etcds(etcd_cluster3: LocalCluster) -> None:
    cluster = etcd_cluster3
    leader = cluster.wait_leader()
    follower = next(i for i in sorted(cluster.nodes) if i != leader)
    with pytest.raises(grpc.RpcError) as refused:
        maintenance(cluster, follower).MoveLeader(
            etcdpb.MoveLeaderRequest(targetID=leader), timeout=10)
    assert (refused.value.code(), refused.value.details()) == (
        grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: not leader")
    with pytest.raises(grpc.RpcError) as refused:
        maintenance(cluster, leader).MoveLeader(
            etcdpb.MoveLeaderRequest(targetID=0xDEADBEEF), timeout=10)
    assert (refused.value.code(), refused.value.details()) == (
        grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: bad leader transferee")
    # To itself: already done.
    response = maintenance(cluster, leader).MoveLeader(
        etcdpb.MoveLeaderRequest(targetID=leader), timeout=10)
    assert response.header.member_id == leader
    assert cluster.wait_leader() == leader


def test_alarm_list_activate_and_disarm(etcd_cluster3: LocalCluster) -> None:
    cluster = etcd_cluster3
    leader = cluster.wait_leader()
    assert ok(etcdctl(cluster.endpoints(), "alarm", "list")) == ""
    assert ok(etcdctl(cluster.endpoints(), "alarm", "disarm")) == ""
    stub = maintenance(cluster, 1)
    response = stub.Alarm(etcdpb.AlarmRequest(action=etcdpb.AlarmRequest.GET), timeout=10)
    assert list(response.alarms) == [] and response.header.member_id == 1
    raised = stub.Alarm(etcdpb.AlarmRequest(action=etcdpb.AlarmRequest.ACTIVATE, memberID=2,
                                            alarm=etcdpb.NOSPACE), timeout=10)
    try:
        assert [(a.memberID, a.alarm) for a in raised.alarms] == [(2, etcdpb.NOSPACE)]
        listed = ok(etcdctl(cluster.endpoints(), "alarm", "list"))
        assert listed.split() == ["memberID:2", "alarm:NOSPACE"], listed
        # etcd's Status lists the raised alarms among its errors, on every member.
        wait_until(lambda: all(s.get("errors") == ["memberID:2 alarm:NOSPACE"]
                               for s in statuses(cluster.endpoints()).values()),
                   LEADER_TIMEOUT_S, "every member's Status to list the alarm")
        with pytest.raises(grpc.RpcError) as refused:
            cluster.put(leader, b"alarm/k", b"v")
        assert refused.value.details() == "etcdserver: mvcc: database space exceeded"
    finally:
        disarmed = ok(etcdctl(cluster.endpoints(), "alarm", "disarm"))
    assert disarmed.split() == ["memberID:2", "alarm:NOSPACE"], disarmed
    assert ok(etcdctl(cluster.endpoints(), "alarm", "list")) == ""
    retry_unavailable(lambda: cluster.put(leader, b"alarm/k", b"v"))


def test_unimplemented_maintenance_calls_say_so(etcd_cluster3: LocalCluster) -> None:
    stub = maintenance(etcd_cluster3, 1)
    with pytest.raises(grpc.RpcError) as refused:
        stub.Downgrade(etcdpb.DowngradeRequest(), timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED


def defrag_span(log_text: str) -> tuple[float, float]:
    """(start, end), as Unix times, of the last defragmentation a member logged."""
    *_, last = DEFRAG_END.finditer(log_text)
    took_s, started_at = float(last.group(1)), float(last.group(2))
    return started_at, started_at + took_s


def test_puts_complete_while_the_leader_defragments() -> None:
    """Defragment compacts the member's LevelDB on a thread of its own: writes through
    that member keep completing while the call has not returned (in etcd it stops the
    world, etcd #9222)."""
    env = {"KVRAFT_LEVELDB_WRITE_BUFFER_BYTES": str(DEFRAG_WRITE_BUFFER_BYTES)}
    with LocalCluster.start(3, env=env) as cluster:
        leader = cluster.wait_leader()
        value = os.urandom(LOAD_VALUE_BYTES)
        for _ in range(LOAD_ROUNDS):
            for start in range(0, LOAD_KEYS, LOAD_BATCH_OPS):
                ops = [pb.BatchOp(put=pb.PutRequest(key=b"load/%06d" % i, value=value))
                       for i in range(start, start + LOAD_BATCH_OPS)]
                retry_unavailable(lambda ops=ops: cluster.kv(leader).Batch(
                    pb.BatchRequest(ops=ops), timeout=30))
        before = statuses(cluster.nodes[leader].client_address)[
            cluster.nodes[leader].client_address]["dbSize"]

        # Writers put through the leader throughout; each completion is timed.
        stop = threading.Event()
        completed: list[float] = []

        def writer(n: int) -> None:
            i = 0
            while not stop.is_set():
                cluster.kv(leader).Put(pb.PutRequest(key=b"during/%d/%d" % (n, i), value=b"x"),
                                       timeout=30)
                completed.append(time.time())
                i += 1

        writers = [threading.Thread(target=writer, args=(n,), daemon=True)
                   for n in range(DEFRAG_WRITERS)]
        for t in writers:
            t.start()
        wait_until(lambda: len(completed) >= DEFRAG_WRITERS, 30, "the writers to run")
        try:
            response = maintenance(cluster, leader).Defragment(
                etcdpb.DefragmentRequest(), timeout=DEFRAG_TIMEOUT_S)
            # A little more writing, so a completion at the very end of the
            # defragmentation is in `completed` too.
            seen = len(completed)
            wait_until(lambda: len(completed) > seen + DEFRAG_WRITERS, 30, "more puts")
        finally:
            stop.set()
            for t in writers:
                t.join(timeout=30)
        assert response.header.member_id == leader
        log_text = cluster.nodes[leader].log_path.read_text()
        assert "defragmenting the database" in log_text
        started_at, ended_at = defrag_span(log_text)
        during = [t for t in completed if started_at < t < ended_at]
        assert during, (f"no put completed during the {ended_at - started_at:.3f} s of "
                        f"the defragmentation ({len(completed)} puts in all)")
        after = statuses(cluster.nodes[leader].client_address)[
            cluster.nodes[leader].client_address]["dbSize"]
        assert after < before, (before, after)
        assert cluster.get(leader, b"load/000000") == value

        # etcdctl: every member, one after the other.
        out = ok(etcdctl(cluster.nodes[1].client_address, "defrag", "--cluster"))
        assert sorted(out.splitlines()) == sorted(
            f"Finished defragmenting etcd member[http://{n.client_address}]"
            for n in cluster.nodes.values())


def test_snapshot_save_writes_the_image_and_its_sha256(etcd_cluster3: LocalCluster,
                                                       tmp_path: Path) -> None:
    """`etcdctl snapshot save` stores the stream Maintenance.Snapshot sends: kvraft's
    snapshot image of the store (with its own crc32) and etcd's trailing SHA-256."""
    cluster = etcd_cluster3
    leader = cluster.wait_leader()
    retry_unavailable(lambda: cluster.put(leader, b"snapshot/key", b"snapshot-value"))
    follower = next(i for i in sorted(cluster.nodes) if i != leader)
    cluster.wait_applied(follower, cluster.status(leader).commit_index)
    path = tmp_path / "backup.db"
    out = ok(etcdctl(cluster.nodes[follower].client_address, "snapshot", "save", str(path)))
    assert out == f"Snapshot saved at {path}\n"
    data = path.read_bytes()
    padded, checksum = data[:-32], data[-32:]
    assert hashlib.sha256(padded).digest() == checksum
    assert len(padded) % 512 == 0      # etcdctl's check: bbolt's pages
    records, end = read_image(padded)
    assert padded[end:] == bytes(len(padded) - end) and len(padded) - end < 512
    # The store's records hold the key put (how, is the store's layout), and the image
    # every member's record.
    assert any(b"snapshot-value" in value for tag, _, value in records if tag != 2)
    assert len([r for r in records if r[0] == 2]) == len(cluster.nodes)


def read_image(data: bytes) -> tuple[list[tuple[int, bytes, bytes]], int]:
    """The (tag, key, value) records of a kvraft snapshot image (kvraft/storage/
    snapshot.py's stream format) at the start of `data`, and where the image ends;
    checks its magic, its record count and its crc32."""
    assert data.startswith(SNAPSHOT_MAGIC)
    (meta_len,) = struct.unpack_from(">I", data, len(SNAPSHOT_MAGIC))
    at = len(SNAPSHOT_MAGIC) + 4 + meta_len
    records: list[tuple[int, bytes, bytes]] = []
    while data[at] != 0xFF:
        tag, key_len, value_len = struct.unpack_from(">BII", data, at)
        at += 9
        records.append((tag, data[at:at + key_len],
                        data[at + key_len:at + key_len + value_len]))
        at += key_len + value_len
    _, count, crc = struct.unpack_from(">BQI", data, at)
    assert (count, crc) == (len(records), zlib.crc32(data[:at]))
    return records, at + 13


def hashkv(cluster: LocalCluster, *flags: str) -> dict[str, dict]:
    """endpoint -> its HashKV answer, from `etcdctl endpoint hashkv --cluster -w json`."""
    out = json.loads(ok(etcdctl(cluster.nodes[1].client_address, "endpoint", "hashkv",
                                "--cluster", "-w", "json", *flags)))
    return {row["Endpoint"]: row["HashKV"] for row in out}


def test_hashkv_is_equal_on_every_member_at_a_revision(etcd_cluster3: LocalCluster) -> None:
    cluster = etcd_cluster3
    leader = cluster.wait_leader()
    for i in range(20):
        retry_unavailable(lambda i=i: cluster.put(leader, b"hash/%02d" % i, b"v%d" % i))
    commit = cluster.status(leader).commit_index
    for node_id in cluster.nodes:
        cluster.wait_applied(node_id, commit)
    first = hashkv(cluster)
    assert sorted(first) == sorted(f"http://{n.client_address}" for n in cluster.nodes.values())
    hashes = {h.get("hash", 0) for h in first.values()}
    assert len(hashes) == 1 and hashes != {0}, first
    revision = next(iter(first.values()))["header"]["revision"]
    assert revision >= 20

    retry_unavailable(lambda: cluster.put(leader, b"hash/00", b"changed"))
    commit = cluster.status(leader).commit_index
    for node_id in cluster.nodes:
        cluster.wait_applied(node_id, commit)
    later = hashkv(cluster)
    assert len({h["hash"] for h in later.values()}) == 1
    assert {h["hash"] for h in later.values()} != hashes
    # At the earlier revision, the earlier hash, on every member.
    assert {h["hash"] for h in hashkv(cluster, f"--rev={revision}").values()} == hashes

    stub = maintenance(cluster, leader)
    with pytest.raises(grpc.RpcError) as refused:
        stub.HashKV(etcdpb.HashKVRequest(revision=revision + 10_000), timeout=10)
    assert (refused.value.code(), refused.value.details()) == (
        grpc.StatusCode.OUT_OF_RANGE, "etcdserver: mvcc: required revision is a future revision")


def test_endpoint_health_on_every_member(etcd_cluster3: LocalCluster) -> None:
    """etcdctl's health check is a linearizable read of the key "health" (etcd's KV
    service) on each endpoint; --cluster takes the endpoints from MemberList."""
    cluster = etcd_cluster3
    rows = json.loads(ok(etcdctl(cluster.endpoints(), "endpoint", "health", "-w", "json")))
    assert sorted(r["endpoint"] for r in rows) == sorted(
        n.client_address for n in cluster.nodes.values())
    assert all(r["health"] is True and "error" not in r for r in rows), rows
    result = etcdctl(cluster.nodes[1].client_address, "endpoint", "health", "--cluster")
    assert result.returncode == 0, result.stderr
    healthy = sorted(line.split(" is healthy: ")[0] for line in result.stderr.splitlines()
                     if " is healthy: successfully committed proposal" in line)
    assert healthy == sorted(f"http://{n.client_address}" for n in cluster.nodes.values())
