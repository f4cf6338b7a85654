"""Membership changes on real clusters: a 5-node cluster grows a learner, promotes it
and drops another member; a follower that lost its disk is removed and re-added with
--join and catches up through a snapshot of a compacted log."""
from __future__ import annotations

import pytest

from kvraft.proto import kvraft_pb2 as pb

from .harness import LocalCluster, retry_unavailable, wait_until

pytestmark = pytest.mark.cluster


def members_of(cluster: LocalCluster, node_id: int) -> dict[int, pb.Member]:
    return {m.id: m for m in cluster.status(node_id).members}


def test_five_members_elect_and_serve_every_read(cluster5: LocalCluster) -> None:
    leader = cluster5.wait_leader()
    retry_unavailable(lambda: cluster5.put(leader, b"five", b"5"))
    for node_id in cluster5.nodes:
        assert cluster5.get(node_id, b"five") == b"5"
    # Founding members publish their client addresses into the replicated state.
    # (Compared as a whole: an empty member list must not pass as "all published".)
    published = {i: n.client_address for i, n in cluster5.nodes.items()}
    wait_until(lambda: {i: m.client_address for i, m in members_of(cluster5, 3).items()}
               == published, 30, "every founding member's client address",
               cluster5.all_log_tails)


def test_add_a_sixth_node_as_learner_promote_it_and_remove_another(
    cluster5: LocalCluster,
) -> None:
    leader = cluster5.wait_leader()
    for i in range(20):
        retry_unavailable(lambda i=i: cluster5.put(leader, b"grow/%02d" % i, b"%d" % i))
    new = cluster5.define(6)
    added = retry_unavailable(lambda: cluster5.cluster_stub(2).AddMember(pb.AddMemberRequest(
        id=6, peer_address=new.peer_address, client_address=new.client_address,
        learner=True), timeout=10))
    assert {m.id: m.learner for m in added.members}[6] is True
    cluster5.launch(6, join=True)
    cluster5.wait_serving(6)
    # The learner catches up: it serves a linearizable read of data written before it.
    wait_until(lambda: cluster5.get(6, b"grow/19") == b"19", 30, "the learner to catch up",
               lambda: cluster5.log_tail(6))
    assert cluster5.status(6).role == "learner"

    promoted = retry_unavailable(lambda: cluster5.cluster_stub(leader).AddMember(
        pb.AddMemberRequest(id=6, peer_address=new.peer_address,
                            client_address=new.client_address, learner=False), timeout=10))
    assert {m.id: m.learner for m in promoted.members}[6] is False

    victim = next(i for i in (1, 2, 3, 4, 5) if i != leader)
    removed = retry_unavailable(lambda: cluster5.cluster_stub(leader).RemoveMember(
        pb.RemoveMemberRequest(id=victim), timeout=10))
    assert sorted(m.id for m in removed.members) == sorted({1, 2, 3, 4, 5, 6} - {victim})
    cluster5.terminate(victim)
    remaining = [i for i in cluster5.nodes if i != victim]
    leader = cluster5.wait_leader(remaining)
    retry_unavailable(lambda: cluster5.put(6, b"after-membership", b"ok"))
    for node_id in remaining:
        assert cluster5.get(node_id, b"after-membership") == b"ok"
        assert victim not in members_of(cluster5, node_id)


def test_wiped_follower_rejoins_through_a_snapshot_after_compaction() -> None:
    env = {"KVRAFT_SNAPSHOT_ENTRIES": "50", "KVRAFT_SNAPSHOT_KEEP_ENTRIES": "10"}
    with LocalCluster.start(3, env=env) as cluster:
        leader = cluster.wait_leader()
        follower = next(i for i in cluster.nodes if i != leader)
        for i in range(20):
            retry_unavailable(lambda i=i: cluster.put(leader, b"early/%02d" % i, b"e"))
        cluster.kill9(follower)
        cluster.wipe(follower)
        retry_unavailable(lambda: cluster.cluster_stub(leader).RemoveMember(
            pb.RemoveMemberRequest(id=follower), timeout=10))
        # Enough writes that every member compacts its log past the wiped node's
        # entries: it can only catch up from a snapshot.
        for i in range(150):
            retry_unavailable(lambda i=i: cluster.put(leader, b"late/%03d" % i, b"l%d" % i))
        members = [i for i in cluster.nodes if i != follower]
        wait_until(lambda: all("kvraft_snapshots_created_total 0.0" not in
                               cluster.metrics_text(i) for i in members),
                   20, "every member to compact its log", cluster.all_log_tails)
        node = cluster.nodes[follower]
        retry_unavailable(lambda: cluster.cluster_stub(leader).AddMember(pb.AddMemberRequest(
            id=follower, peer_address=node.peer_address, client_address=node.client_address),
            timeout=10))
        cluster.launch(follower, join=True)
        cluster.wait_serving(follower)
        wait_until(lambda: cluster.get(follower, b"late/149", serializable=True) == b"l149",
                   30, "the re-added node to catch up", lambda: cluster.log_tail(follower))
        assert cluster.get(follower, b"early/00", serializable=True) == b"e"
        log_text = node.log_path.read_text()
        assert "installed snapshot" in log_text
        assert "kvraft_snapshots_installed_total 1.0" in cluster.metrics_text(follower)
        wait_until(lambda: any('kvraft_snapshots_sent_total{result="ok"}' in
                               cluster.metrics_text(i) for i in cluster.nodes if i != follower),
                   10, "a member to report the snapshot sent", cluster.all_log_tails)
        # It is a full voter again: the cluster survives losing another member.
        other = next(i for i in cluster.nodes if i not in (leader, follower))
        cluster.kill9(other)
        new_leader = cluster.wait_leader([leader, follower])
        retry_unavailable(lambda: cluster.put(new_leader, b"after-rejoin", b"ok"))
        assert cluster.get(follower, b"after-rejoin") == b"ok"
