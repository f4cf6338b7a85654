"""The harness itself: deterministic given a seed, and each fault does what it says."""
from __future__ import annotations

from kvraft.raft import eraftpb
from tests.raft.network import DEFAULT_ELECTION_TICK, Network
from tests.raft.sim import Simulation

ET = DEFAULT_ELECTION_TICK


def test_same_seed_same_run() -> None:
    runs = []
    for _ in range(2):
        sim = Simulation(3, steps=800)
        sim.run()
        runs.append((dict(sim.check.canonical), sim.check.leader_of_term, sim.net.now))
    assert runs[0] == runs[1]
    assert runs[0][0], "the run committed nothing"


def test_different_seeds_differ() -> None:
    logs = []
    for seed in (4, 6):
        sim = Simulation(seed, steps=800)
        sim.run()
        logs.append(sim.check.leader_of_term)
    assert logs[0] != logs[1]


def test_duplicate_delay_reorder_keep_one_applied_order() -> None:
    # Thesis §3.5 / Figure 3: the network may duplicate, delay and reorder messages; every
    # node still applies the same commands in the same order.
    net = Network([1, 2, 3], seed=11)
    net.dup_rate, net.delay_max, net.reorder = 0.5, 3, True
    leader = net.elect(1)
    values = [f"v{k}".encode() for k in range(20)]
    for v in values:
        net.node(leader).propose(b"", v)
        net.tick(ticks=1)
    net.tick(ticks=5)
    for i in net.ids():
        assert net.applied_data(i) == values


def test_random_drops_are_repaired_by_retransmission() -> None:
    net = Network([1, 2, 3, 4, 5], seed=5)
    leader = net.elect(1)
    net.drop_rate = 0.3
    for k in range(10):
        net.node(leader).propose(b"", f"v{k}".encode())
        net.tick([leader], ticks=1)
    net.heal()
    net.tick(ticks=10)
    # Only the leader ticked while messages were dropped, so it kept its leadership and
    # every proposal it appended: retransmission must deliver all of them, everywhere.
    assert net.leaders() == [leader]
    for i in net.ids():
        assert net.applied_data(i) == [f"v{k}".encode() for k in range(10)]


def test_crash_loses_non_durable_entries_but_not_acknowledged_ones() -> None:
    # Async persistence: a follower acknowledges an entry only once it is durable, so a
    # crash before the write completes loses the entry without losing a committed one.
    net = Network([1, 2, 3], async_persist=True)
    leader = net.elect(1)
    net.propose(leader, b"a")  # durable everywhere (auto_persist)
    net.auto_persist = False
    net.node(leader).propose(b"", b"b")
    for _ in range(3):
        for i in net.ids():
            net.handle_ready(i)
        while net.deliver_one():
            pass
    assert net.nodes[2].pending_writes, "the follower's write should still be queued"
    acks = [m for m in net.sent if m.msg_type == eraftpb.MsgAppendResponse and m.from_ == 2]
    assert max(m.index for m in acks) < net.raft(leader).raft_log.last_index()
    net.crash(2)
    net.restart(2)
    assert net.raft(2).raft_log.last_index() < net.raft(leader).raft_log.last_index()
    net.auto_persist = True
    net.tick(ticks=2)
    assert net.applied_data(2) == [b"a", b"b"]


def test_partition_heals() -> None:
    net = Network([1, 2, 3, 4, 5])
    net.elect(1)
    net.partition([1, 2], [3, 4, 5])
    net.tick(ticks=4 * ET)
    majority_leader = net.leader()
    assert majority_leader in (3, 4, 5)
    net.heal()
    net.tick(ticks=2)
    assert net.leaders() == [majority_leader]
