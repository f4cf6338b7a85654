"""ReadIndex, thesis §6.4: linearizable reads without writing to the log, Safe (a round of
heartbeats) and LeaseBased (§6.4.1), with follower requests forwarded to the leader."""
from __future__ import annotations

import pytest

from kvraft.raft import ReadOnlyOption, StateRole, eraftpb
from tests.raft.network import DEFAULT_ELECTION_TICK, Network

ET = DEFAULT_ELECTION_TICK


def read_states(net: Network, node_id: int) -> list[tuple[int, bytes]]:
    return [(rs.index, bytes(rs.request_ctx)) for rs in net.nodes[node_id].read_states]


def test_leader_read_index_is_its_commit_index(cluster3: Network) -> None:
    # §6.4 step 1: "the leader saves its current commit index in a local variable
    # readIndex"; step 2: it "sends a new round of heartbeats ... Once it has received
    # acknowledgments from a majority of the cluster, ... readIndex was the largest commit
    # index ever seen by any server."
    leader = cluster3.elect(1)
    for k in range(3):
        cluster3.propose(leader, f"v{k}".encode())
    committed = cluster3.committed(leader)
    cluster3.node(leader).read_index(b"r1")
    cluster3.stabilize()
    assert read_states(cluster3, leader) == [(committed, b"r1")]


def test_safe_read_needs_heartbeat_quorum(cluster3: Network) -> None:
    # §6.4 step 2: a leader cut off from the majority must not answer (a newer leader may
    # exist); the read completes once a majority acknowledges a heartbeat.
    leader = cluster3.elect(1)
    committed = cluster3.committed(leader)
    cluster3.isolate(leader)
    cluster3.node(leader).read_index(b"r")
    cluster3.stabilize()
    assert read_states(cluster3, leader) == []
    hb = [m for m in cluster3.take_sent(eraftpb.MsgHeartbeat) if m.context == b"r"]
    assert sorted(m.to for m in hb) == [2, 3]
    cluster3.heal()
    cluster3.tick([leader], ticks=1)
    assert read_states(cluster3, leader) == [(committed, b"r")]


def test_single_node_reads_immediately() -> None:
    net = Network([1])
    net.elect(1)
    net.propose(1, b"x")
    net.node(1).read_index(b"solo")
    net.stabilize()
    assert read_states(net, 1) == [(net.committed(1), b"solo")]


def test_no_read_before_leader_commits_in_its_term() -> None:
    # §6.4 step 1: "If the leader has not yet marked an entry from its current term
    # committed, it waits until it has done so" — until then its commit index may be
    # behind the latest committed entry.
    net = Network([1, 2, 3])
    net.drop_types.add(eraftpb.MsgAppend)
    net.elect(1)
    noop = net.raft(1).raft_log.last_index()
    assert net.committed(1) < noop
    net.node(1).read_index(b"early")
    net.tick([1], ticks=2)
    assert read_states(net, 1) == []
    net.heal()
    net.tick([1], ticks=2)
    assert net.committed(1) >= noop
    states = read_states(net, 1)
    assert [ctx for _i, ctx in states] == [b"early"]
    assert states[0][0] >= noop


@pytest.mark.parametrize("option", [ReadOnlyOption.Safe, ReadOnlyOption.LeaseBased])
def test_follower_read_is_forwarded(option: ReadOnlyOption) -> None:
    # SPEC §1: "a follower forwards ... ReadIndex requests to the leader"; the leader
    # answers with its read index and the follower waits to apply up to it (§6.4 step 4).
    net = Network([1, 2, 3], check_quorum=True, read_only_option=option)
    leader = net.elect(1)
    net.propose(leader, b"v")
    net.take_sent()
    net.node(2).read_index(b"fwd")
    net.stabilize()
    forwarded = net.take_sent(eraftpb.MsgReadIndex)
    assert [(m.from_, m.to) for m in forwarded][:1] == [(2, leader)]
    assert read_states(net, 2) == [(net.committed(leader), b"fwd")]
    assert read_states(net, leader) == []


def test_lease_based_read_skips_heartbeat_round() -> None:
    # §6.4.1: with a lease the leader answers at once, without contacting a majority —
    # so even an isolated leader (still within its lease) answers. The lease needs a
    # quorum's answer to a heartbeat first (tests/raft/test_lease_read.py).
    net = Network([1, 2, 3], check_quorum=True, read_only_option=ReadOnlyOption.LeaseBased)
    leader = net.elect(1)
    net.tick([leader], ticks=1)
    committed = net.committed(leader)
    net.isolate(leader)
    net.take_sent()
    net.node(leader).read_index(b"lease")
    net.stabilize()
    assert read_states(net, leader) == [(committed, b"lease")]
    assert not net.take_sent(eraftpb.MsgHeartbeat)


def test_concurrent_reads_complete_in_order(cluster5: Network) -> None:
    leader = cluster5.elect(2)
    for k in range(3):
        cluster5.node(leader).read_index(f"r{k}".encode())
        cluster5.node(leader).propose(b"", f"w{k}".encode())
    cluster5.stabilize()
    states = read_states(cluster5, leader)
    assert [ctx for _i, ctx in states] == [b"r0", b"r1", b"r2"]
    indexes = [i for i, _ctx in states]
    assert indexes == sorted(indexes)


def test_reads_between_two_readies_share_one_heartbeat_round(cluster3: Network) -> None:
    # §6.4 step 3 needs one quorum-acknowledged heartbeat round sent after the read
    # arrived; a round for the newest of several pending reads is one for all of them,
    # so the leader sends a single round when the application collects its messages.
    leader = cluster3.elect(1)
    committed = cluster3.committed(leader)
    cluster3.take_sent()
    for k in range(5):
        cluster3.node(leader).read_index(f"r{k}".encode())
    cluster3.stabilize()
    hb = [m for m in cluster3.take_sent(eraftpb.MsgHeartbeat) if m.context]
    assert sorted((m.to, bytes(m.context)) for m in hb) == [(2, b"r4"), (3, b"r4")]
    assert read_states(cluster3, leader) == [(committed, f"r{k}".encode()) for k in range(5)]


def test_deposed_leader_never_answers_read() -> None:
    # The case ReadIndex exists for: an old leader isolated with a minority while a new
    # leader commits writes must not serve a read of its stale commit index.
    net = Network([1, 2, 3, 4, 5])
    old = net.elect(1)
    net.partition([1, 2], [3, 4, 5])
    net.node(old).read_index(b"stale")
    net.stabilize()
    net.tick([3, 4, 5], ticks=3 * ET)
    new = net.leader()
    assert new in (3, 4, 5) and net.term(new) > net.term(old)
    net.propose(new, b"newer")
    net.tick([1, 2], ticks=2)
    assert read_states(net, old) == []
    assert net.role(old) == StateRole.Leader  # it does not know yet, and still cannot read
