"""Snapshots, thesis §5 / paper §7: when the leader has discarded the entries a follower
needs it sends its snapshot (InstallSnapshot); report_snapshot, request_snapshot, and
the follower restoring from Ready.snapshot()."""
from __future__ import annotations

import pytest

from kvraft.raft import ProgressState, ProposalDropped, SnapshotStatus, StateRole, eraftpb
from tests.raft.network import Network, drain, new_raw_node, only


def lagging_follower_after_compaction(n_entries: int = 5) -> Network:
    net = Network([1, 2, 3])
    net.elect(1)
    net.isolate(3)
    for k in range(n_entries):
        net.propose(1, f"v{k}".encode())
    net.compact(1)
    assert net.nodes[1].storage.first_index() > net.raft(3).raft_log.last_index() + 1
    return net


def progress(net: Network, leader: int, peer: int):
    return net.raft(leader).prs.get(peer)


def test_leader_sends_snapshot_when_entries_compacted() -> None:
    # Paper §7: "the leader must occasionally send snapshots to followers that lag behind.
    # This happens when the leader has already discarded the next log entry that it needs
    # to send to a follower."
    net = lagging_follower_after_compaction()
    net.heal()
    net.take_sent()
    net.tick(ticks=2)
    snaps = net.take_sent(eraftpb.MsgSnapshot)
    assert [m.to for m in snaps][:1] == [3]
    meta = snaps[0].snapshot.metadata
    assert meta.index >= net.nodes[1].storage.first_index() - 1
    assert sorted(meta.conf_state.voters) == [1, 2, 3]
    # The follower restored the state machine from it and continues from there.
    assert net.applied_data(3) == [f"v{k}".encode() for k in range(5)]
    assert net.committed(3) == net.committed(1)
    storage3 = net.nodes[3].storage
    assert storage3.first_index() == meta.index + 1
    assert storage3.hard_state().commit >= meta.index
    net.propose(1, b"after")
    net.tick(ticks=1)
    assert net.applied_data(3)[-1] == b"after"


def test_follower_restores_from_ready_snapshot() -> None:
    # Paper §7: "the follower discards its entire log; it is all superseded by the
    # snapshot" — Ready.snapshot() carries it, the application installs it.
    raw = new_raw_node(2, [1, 2, 3], log_terms=[1, 1], term=1, commit=1)
    snap = eraftpb.Snapshot(data=b"state")
    snap.metadata.index, snap.metadata.term = 10, 3
    snap.metadata.conf_state.voters.extend([1, 2, 3])
    raw.step(eraftpb.Message(msg_type=eraftpb.MsgSnapshot, from_=1, to=2, term=3,
                             snapshot=snap))
    assert raw.has_ready()
    rd = raw.ready()
    assert rd.snapshot().metadata.index == 10
    assert bytes(rd.snapshot().data) == b"state"
    raw.store().apply_snapshot(rd.snapshot())
    if rd.hs() is not None:
        raw.store().set_hardstate(rd.hs())
    msgs = list(rd.take_messages()) + list(rd.take_persisted_messages())
    raw.advance(rd)
    acks = only(msgs, eraftpb.MsgAppendResponse)
    assert [(m.to, m.index, m.reject) for m in acks] == [(1, 10, False)]
    assert raw.raft.raft_log.committed == 10
    assert raw.raft.raft_log.last_index() == 10
    assert raw.raft.raft_log.term(10) == 3
    assert raw.store().first_index() == 11


def test_stale_snapshot_is_ignored() -> None:
    # A snapshot older than the follower's commit index adds nothing; restoring it would
    # roll the state machine back.
    raw = new_raw_node(2, [1, 2, 3], log_terms=[1, 1, 1], term=1, commit=3)
    drain(raw)
    snap = eraftpb.Snapshot()
    snap.metadata.index, snap.metadata.term = 2, 1
    snap.metadata.conf_state.voters.extend([1, 2, 3])
    raw.step(eraftpb.Message(msg_type=eraftpb.MsgSnapshot, from_=1, to=2, term=1,
                             snapshot=snap))
    assert raw.has_ready()
    rd = raw.ready()
    assert rd.snapshot().metadata.index == 0
    msgs = list(rd.take_messages()) + list(rd.take_persisted_messages())
    raw.advance(rd)
    acks = only(msgs, eraftpb.MsgAppendResponse)
    assert [(m.index, m.reject) for m in acks] == [(3, False)]
    assert raw.raft.raft_log.last_index() == 3


def test_report_snapshot_finish_resumes_replication() -> None:
    net = lagging_follower_after_compaction()
    net.heal()
    net.report_snapshots = False  # this test is the transport that reports
    net.drop_types.add(eraftpb.MsgSnapshot)  # the snapshot is "in transit"
    net.tick(ticks=2)
    assert progress(net, 1, 3).state == ProgressState.Snapshot
    pending = progress(net, 1, 3).pending_snapshot
    assert pending > 0
    # Meanwhile the transport delivers it out of band and reports success.
    snap_msgs = [m for m in net.sent if m.msg_type == eraftpb.MsgSnapshot]
    net.heal()
    net.deliver(snap_msgs[-1])
    net.node(1).report_snapshot(3, SnapshotStatus.Finish)
    net.stabilize()
    assert progress(net, 1, 3).state in (ProgressState.Probe, ProgressState.Replicate)
    net.tick(ticks=2)
    assert progress(net, 1, 3).state == ProgressState.Replicate
    assert progress(net, 1, 3).matched == net.raft(1).raft_log.last_index()


def test_report_snapshot_failure_retries() -> None:
    net = lagging_follower_after_compaction()
    net.heal()
    net.report_snapshots = False  # this test is the transport that reports
    net.drop_types.add(eraftpb.MsgSnapshot)
    net.tick(ticks=2)
    assert progress(net, 1, 3).state == ProgressState.Snapshot
    net.node(1).report_snapshot(3, SnapshotStatus.Failure)
    net.stabilize()
    pr = progress(net, 1, 3)
    assert pr.state == ProgressState.Probe
    assert pr.pending_snapshot == 0
    net.heal()
    net.tick(ticks=3)
    assert net.applied_data(3) == net.applied_data(1)


def test_report_unreachable_moves_replicate_to_probe(cluster3: Network) -> None:
    leader = cluster3.elect(1)
    assert progress(cluster3, leader, 2).state == ProgressState.Replicate
    cluster3.node(leader).report_unreachable(2)
    assert progress(cluster3, leader, 2).state == ProgressState.Probe


def test_snapshot_temporarily_unavailable_is_retried() -> None:
    # Storage may be building the snapshot; the leader retries instead of failing.
    net = lagging_follower_after_compaction()
    net.nodes[1].storage.unavailable_snapshots = 2
    net.heal()
    net.tick(ticks=6)
    assert net.nodes[1].storage.unavailable_snapshots == 0
    assert net.applied_data(3) == net.applied_data(1)


def test_request_snapshot() -> None:
    # raft-rs request_snapshot: a follower whose state machine needs rebuilding asks the
    # leader for a snapshot at least as new as its applied index.
    net = Network([1, 2, 3])
    net.elect(1)
    for k in range(3):
        net.propose(1, f"v{k}".encode())
    net.tick(ticks=1)
    applied = net.nodes[2].sm.applied_index
    net.take_sent()
    net.node(2).request_snapshot()
    net.stabilize()
    net.tick(ticks=2)
    snaps = [m for m in net.take_sent(eraftpb.MsgSnapshot) if m.to == 2]
    assert snaps, "leader sent no snapshot after request_snapshot"
    assert snaps[0].snapshot.metadata.index >= applied
    assert net.applied_data(2) == net.applied_data(1)
    assert net.role(2) == StateRole.Follower


def test_crashed_follower_restarts_from_snapshot() -> None:
    # The snapshot is durable: a follower restarted after installing it keeps the state.
    net = lagging_follower_after_compaction()
    net.heal()
    net.tick(ticks=2)
    net.restart(3)
    assert net.applied_data(3) == [f"v{k}".encode() for k in range(5)]
    net.propose(1, b"after-restart")
    net.tick(ticks=2)
    assert net.applied_data(3)[-1] == b"after-restart"


def test_memstorage_snapshot_and_compaction() -> None:
    # MemStorage's own snapshot is taken at the commit index with its conf state.
    raw = new_raw_node(1, [1, 2, 3], log_terms=[1, 1, 2, 2], term=2, commit=3)
    storage = raw.store()
    snap = storage.snapshot(0, 2)
    assert (snap.metadata.index, snap.metadata.term) == (3, 2)
    assert sorted(snap.metadata.conf_state.voters) == [1, 2, 3]
    storage.compact(3)
    assert storage.first_index() == 3 and storage.term(2) == 1
    assert [e.index for e in storage.entries(3, 5)] == [3, 4]


def test_snapshot_already_in_log_fast_forwards_commit() -> None:
    # A snapshot whose last entry the follower already holds needs no restore: the
    # follower only learns that everything up to it is committed.
    raw = new_raw_node(2, [1, 2, 3], log_terms=[1, 1, 1, 1], term=1, commit=1)
    drain(raw)
    snap = eraftpb.Snapshot()
    snap.metadata.index, snap.metadata.term = 3, 1
    snap.metadata.conf_state.voters.extend([1, 2, 3])
    raw.step(eraftpb.Message(msg_type=eraftpb.MsgSnapshot, from_=1, to=2, term=1,
                             snapshot=snap))
    msgs = drain(raw)
    assert raw.raft.raft_log.committed == 3
    assert raw.raft.raft_log.last_index() == 4, "entries after the snapshot are kept"
    assert raw.store().first_index() == 1, "nothing was restored"
    assert [(m.index, m.reject) for m in only(msgs, eraftpb.MsgAppendResponse)] == [(3, False)]


def test_snapshot_without_this_node_is_refused() -> None:
    raw = new_raw_node(2, [1, 2, 3], log_terms=[1], term=1, commit=1)
    drain(raw)
    snap = eraftpb.Snapshot()
    snap.metadata.index, snap.metadata.term = 10, 1
    snap.metadata.conf_state.voters.extend([1, 3, 5])
    raw.step(eraftpb.Message(msg_type=eraftpb.MsgSnapshot, from_=1, to=2, term=1,
                             snapshot=snap))
    drain(raw)
    assert raw.raft.raft_log.last_index() == 1
    assert raw.raft.raft_log.committed == 1


@pytest.mark.parametrize("who", ["leader", "no-leader"])
def test_request_snapshot_needs_a_leader_to_ask(who: str) -> None:
    net = Network([1, 2, 3])
    if who == "leader":
        net.elect(1)
    with pytest.raises(ProposalDropped):
        net.node(1).request_snapshot()


def test_candidate_receiving_snapshot_of_same_term_follows_sender() -> None:
    net = Network([1, 2, 3])
    net.elect(1)
    for k in range(3):
        net.propose(1, f"v{k}".encode())
    net.compact(1)
    net.isolate(3)
    net.campaign(3)  # candidate in term 2, its vote requests are lost
    assert net.role(3) == StateRole.Candidate
    net.heal()
    net.campaign(2)  # term 2 as well: 1 votes for it; 3 already voted for itself
    assert net.leader() == 2 and net.term(2) == net.term(3) == 2
    net.tick(ticks=3)
    assert net.role(3) == StateRole.Follower and net.raft(3).leader_id == 2
    assert net.applied_data(3) == net.applied_data(1)
