"""A disaster drill (SPEC §7, issue 13): a 3-node cluster loses two of its three
members' data directories — quorum is gone for good — and its data comes back from a
backup: `kvraft snapshot save` taken before, `kvraft snapshot restore` into the data
directories of a NEW cluster (new members, new addresses, new cluster id), `kvraft
serve` on each. Every key reads back with its value and its revisions; the new cluster
takes writes, and a member added to it later catches up (from a snapshot: its log
starts after the restored data)."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import grpc
import pytest

from kvraft.proto import etcdserverpb_pb2 as etcdpb
from kvraft.proto import etcdserverpb_pb2_grpc as etcdpb_grpc
from kvraft.proto import kvraft_pb2 as pb
from tests.cli.helpers import run_kvraft

from .harness import LocalCluster, retry_unavailable, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

LEADER_TIMEOUT_S = 30
NEW_IDS = (11, 12, 13)
ALL_KEYS = etcdpb.RangeRequest(key=b"\0", range_end=b"\0")


def etcd_kv(cluster: LocalCluster, node_id: int) -> etcdpb_grpc.KVStub:
    return cluster.nodes[node_id].stub(etcdpb_grpc.KVStub)


def everything(cluster: LocalCluster, node_id: int) -> tuple[dict[bytes, tuple], int, int]:
    """key -> (value, create rev, mod rev, version, lease), the revision, the cluster id:
    etcd's linearizable Range of every key."""
    r = retry_unavailable(lambda: etcd_kv(cluster, node_id).Range(ALL_KEYS, timeout=5))
    kvs = {kv.key: (kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease)
           for kv in r.kvs}
    return kvs, r.header.revision, r.header.cluster_id


def grant_lease(cluster: LocalCluster, node_id: int) -> int:
    """A lease of 10 minutes, or 0 if this kvraft does not serve etcd's Lease service."""
    stub = cluster.nodes[node_id].stub(etcdpb_grpc.LeaseStub)
    try:
        return retry_unavailable(lambda: stub.LeaseGrant(
            etcdpb.LeaseGrantRequest(TTL=600), timeout=5)).ID
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.UNIMPLEMENTED, e
        return 0


def write_history(cluster: LocalCluster, leader: int) -> int:
    """Keys with a history through both APIs; returns the lease used (0: none)."""
    kv = etcd_kv(cluster, leader)

    def put(key: bytes, value: bytes, lease: int = 0) -> None:
        retry_unavailable(lambda: kv.Put(etcdpb.PutRequest(key=key, value=value,
                                                           lease=lease), timeout=5))

    for i in range(30):
        put(b"etcd/%02d" % i, b"v%d" % i)
    for i in range(0, 30, 3):
        put(b"etcd/%02d" % i, b"again%d" % i)          # version 2, a later mod revision
    retry_unavailable(lambda: kv.DeleteRange(etcdpb.DeleteRangeRequest(key=b"etcd/05"),
                                             timeout=5))
    for i in range(20):
        retry_unavailable(lambda i=i: cluster.put(leader, b"kvraft/%02d" % i, b"k%d" % i))
    lease = grant_lease(cluster, leader)
    if lease:
        put(b"leased/a", b"with a lease", lease)
    put(b"last", b"written last")
    return lease


def restore_cluster(root: Path, backup: Path) -> LocalCluster:
    """A new cluster of NEW_IDS on new ports whose directories `kvraft snapshot restore`
    made from `backup`; started, not yet waited for."""
    cluster = LocalCluster(root)
    for node_id in NEW_IDS:
        cluster.define(node_id)
    cluster.initial_cluster = {i: n.peer_address for i, n in cluster.nodes.items()}
    initial = ",".join(f"{i}={a}" for i, a in sorted(cluster.initial_cluster.items()))
    for node_id, node in cluster.nodes.items():
        result = run_kvraft("snapshot", "restore", str(backup), "--data-dir",
                            str(node.data_dir), "--id", str(node_id),
                            "--initial-cluster", initial)
        assert result.returncode == 0, result.stderr.decode()
        out = result.stdout.decode()
        assert out.startswith(f"restored {backup} (revision ") and \
            f"member {node_id} of new cluster" in out, out
    for node_id in cluster.nodes:
        cluster.launch(node_id)
    return cluster


def test_two_of_three_directories_lost_and_the_data_restored_into_a_new_cluster() -> None:
    work = Path(tempfile.mkdtemp(prefix="kvraft-drill-"))
    try:
        with LocalCluster.start(3) as old:
            leader = old.wait_leader()
            lease = write_history(old, leader)
            before, revision, old_cluster_id = everything(old, leader)
            assert len(before) == 30 - 1 + 20 + 1 + (1 if lease else 0)
            # The backup, from a follower (its applied state: wait for the last write).
            follower = next(i for i in old.nodes if i != leader)
            wait_until(lambda: everything(old, follower)[0] == before, 30,
                       "the follower to apply every write", old.all_log_tails)
            backup = work / "backup.db"
            saved = run_kvraft("snapshot", "save", str(backup), "--endpoints",
                               old.nodes[follower].client_address)
            assert saved.returncode == 0, saved.stderr.decode()
            assert saved.stdout.decode() == f"Snapshot saved at {backup}\n"
            assert not list(work.glob("*.part"))
            status = run_kvraft("snapshot", "status", str(backup), "-w", "json")
            assert status.returncode == 0, status.stderr.decode()
            assert b'"revision": %d' % revision in status.stdout
            assert b'"totalKey": %d' % len(before) in status.stdout

            # The disaster: two members and their directories are gone.
            lost = [i for i in old.nodes if i != leader]
            for node_id in lost:
                old.kill9(node_id)
                shutil.rmtree(old.nodes[node_id].data_dir)
            old.kill9(leader)   # alone it has no quorum: the old cluster is over

        new = restore_cluster(work / "new", backup)
        try:
            for node_id in new.nodes:
                new.wait_serving(node_id)
            new_leader = new.wait_leader(timeout_s=LEADER_TIMEOUT_S)
            assert sorted(m.id for m in new.status(new_leader).members) == list(NEW_IDS)
            # Every key, on every member, with its value and its revisions.
            for node_id in new.nodes:
                after, new_revision, new_cluster_id = everything(new, node_id)
                assert after == before
                assert new_revision == revision
                assert new_cluster_id not in (old_cluster_id, 0)
            assert new.get(new_leader, b"kvraft/07") == b"k7"   # kvraft's API too
            if lease:
                ttl = new.nodes[new_leader].stub(etcdpb_grpc.LeaseStub) \
                    .LeaseTimeToLive(etcdpb.LeaseTimeToLiveRequest(ID=lease, keys=True),
                                     timeout=5)
                assert ttl.TTL > 0 and list(ttl.keys) == [b"leased/a"]
            # It goes on: new writes get the next revisions.
            put = retry_unavailable(lambda: etcd_kv(new, new_leader).Put(
                etcdpb.PutRequest(key=b"after/restore", value=b"new"), timeout=5))
            assert put.header.revision == revision + 1
            retry_unavailable(lambda: new.put(new_leader, b"after/kvraft", b"too"))
            assert everything(new, new_leader)[1] == revision + 2

            # A member added later catches up: there is no log before the restored
            # data, so the leader must send it a snapshot.
            joiner = new.define(14)
            retry_unavailable(lambda: new.cluster_stub(new_leader).AddMember(
                pb.AddMemberRequest(id=14, peer_address=joiner.peer_address,
                                    client_address=joiner.client_address, learner=True),
                timeout=10))
            new.launch(14, join=True)
            new.wait_serving(14)
            wait_until(lambda: new.get(14, b"after/kvraft", serializable=True) == b"too",
                       LEADER_TIMEOUT_S, "the added member to catch up",
                       lambda: new.log_tail(14))
            assert new.get(14, b"etcd/09", serializable=True) == b"again9"
            new.check_no_crash()
        finally:
            new.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
