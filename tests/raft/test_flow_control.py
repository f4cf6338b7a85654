"""Flow control of replication (thesis §10.2.1 pipelining; raft-rs Progress/Inflights):
a follower in Probe gets one append at a time, in Replicate a window of
max_inflight_msgs, and each append carries at most max_size_per_msg bytes."""
from __future__ import annotations

import pytest

from kvraft.raft import ProgressState, ProposalDropped, eraftpb
from tests.raft.network import Network


def appends_to(net: Network, peer: int) -> list[eraftpb.Message]:
    return [m for m in net.take_sent(eraftpb.MsgAppend) if m.to == peer]


def test_inflights_window_limits_unacknowledged_appends() -> None:
    net = Network([1, 2, 3], max_inflight_msgs=3)
    leader = net.elect(1)
    assert net.raft(leader).prs.get(2).state == ProgressState.Replicate
    net.filters.append(lambda m: m.msg_type == eraftpb.MsgAppendResponse and m.from_ == 2)
    net.take_sent()
    for k in range(8):
        net.propose(leader, f"v{k}".encode())
    sent = [m for m in appends_to(net, 2) if m.entries]
    assert len(sent) == 3, "a full inflights window must stop new appends"
    assert net.raft(leader).prs.get(2).ins.full()
    net.heal()
    net.tick(ticks=6)
    assert net.applied_data(2) == [f"v{k}".encode() for k in range(8)]


def test_replicate_state_pipelines_appends() -> None:
    # Thesis §10.2.1: the leader "can send the next AppendEntries request without waiting
    # for the previous one to complete" once it knows where the follower's log ends.
    net = Network([1, 2, 3])
    leader = net.elect(1)
    net.filters.append(lambda m: m.msg_type == eraftpb.MsgAppendResponse and m.from_ == 2)
    net.take_sent()
    for k in range(4):
        net.propose(leader, f"v{k}".encode())
    assert len([m for m in appends_to(net, 2) if m.entries]) == 4


def test_probe_state_pauses_after_one_append() -> None:
    # In Probe the leader does not know the follower's log end: it sends one append and
    # waits for the answer (or the next heartbeat response) before sending another.
    net = Network([1, 2, 3])
    net.isolate(2)
    leader = net.elect(1)
    assert net.raft(leader).prs.get(2).state == ProgressState.Probe
    net.take_sent()
    for k in range(4):
        net.propose(leader, f"v{k}".encode())
    assert len(appends_to(net, 2)) <= 1
    assert net.raft(leader).prs.get(2).is_paused()
    net.heal()
    net.tick(ticks=3)
    assert net.raft(leader).prs.get(2).state == ProgressState.Replicate
    assert net.applied_data(2) == [f"v{k}".encode() for k in range(4)]


@pytest.mark.parametrize(("max_size", "per_msg"), [(250, 2), (1, 1), (10_000, 8)])
def test_max_size_per_msg(max_size: int, per_msg: int) -> None:
    net = Network([1, 2, 3], max_size_per_msg=max_size)
    leader = net.elect(1)
    net.isolate(2)
    for k in range(8):
        net.propose(leader, bytes([65 + k]) * 100)
    net.heal()
    net.take_sent()
    net.tick(ticks=4)
    sizes = [len(m.entries) for m in appends_to(net, 2) if m.entries]
    assert max(sizes) == per_msg
    for m in appends_to(net, 2):
        assert len(m.entries) == 1 or sum(e.ByteSize() for e in m.entries) <= max_size
    assert len(net.applied_data(2)) == 8


def test_max_uncommitted_size_drops_proposals() -> None:
    # A leader that cannot commit must not buffer proposals without bound.
    net = Network([1, 2, 3], max_uncommitted_size=300)
    leader = net.elect(1)
    net.isolate(leader)
    accepted = 0
    with pytest.raises(ProposalDropped):
        for _ in range(10):
            net.node(leader).propose(b"", b"x" * 100)
            accepted += 1
    assert 1 <= accepted <= 3
    net.heal()
    net.tick(ticks=2)
    net.propose(leader, b"x" * 100)  # committed entries freed the budget
    assert len(net.applied_data(leader)) == accepted + 1


def test_skip_bcast_commit_defers_commit_to_heartbeat() -> None:
    net = Network([1, 2, 3], skip_bcast_commit=True)
    leader = net.elect(1)
    net.propose(leader, b"a")
    assert net.committed(leader) > net.committed(2)
    net.tick(ticks=1)
    assert net.committed(2) == net.committed(leader)
    assert net.applied_data(2) == [b"a"]


def test_bcast_commit_by_default(cluster3: Network) -> None:
    leader = cluster3.elect(1)
    cluster3.propose(leader, b"a")
    assert cluster3.committed(2) == cluster3.committed(leader)


def test_max_committed_size_per_ready_splits_application() -> None:
    # Bounded work per Ready: a follower catching up applies its backlog in several
    # batches of about max_committed_size_per_ready bytes instead of one huge one.
    net = Network([1, 2, 3], max_committed_size_per_ready=250)
    leader = net.elect(1)
    net.isolate(2)
    for k in range(6):
        net.propose(leader, bytes([65 + k]) * 100)
    batches: list[int] = []
    net.batch_hooks.append(
        lambda node, entries: batches.append(sum(e.ByteSize() for e in entries))
        if node.id == 2 else None
    )
    net.heal()
    net.tick(ticks=3)
    assert len(net.applied_data(2)) == 6
    assert max(batches) <= 250 + 110  # at most one entry past the limit
    assert len(batches) >= 3
