"""Membership changes, thesis chapter 4: single-server changes (§4.1), joint consensus
with ConfChangeV2 (§4.3), learners / non-voting members (§4.2.1), and a leader that
removes itself (§4.2.2)."""
from __future__ import annotations

import contextlib

import pytest

from kvraft.raft import ProposalDropped, StateRole, eraftpb
from tests.raft.network import DEFAULT_ELECTION_TICK, Network, SimNode

ET = DEFAULT_ELECTION_TICK
ADD, REMOVE, LEARNER = eraftpb.AddNode, eraftpb.RemoveNode, eraftpb.AddLearnerNode


def single(change_type: int, node_id: int) -> eraftpb.ConfChange:
    return eraftpb.ConfChange(change_type=change_type, node_id=node_id)


def v2(transition: int, *changes: tuple[int, int]) -> eraftpb.ConfChangeV2:
    return eraftpb.ConfChangeV2(
        transition=transition,
        changes=[eraftpb.ConfChangeSingle(change_type=t, node_id=n) for t, n in changes],
    )


def record_confs(net: Network) -> dict[int, list[eraftpb.ConfState]]:
    """Every ConfState each node reached by applying a conf-change entry."""
    seen: dict[int, list[eraftpb.ConfState]] = {i: [] for i in net.ids()}

    def hook(node: SimNode, e: eraftpb.Entry) -> None:
        if e.entry_type != eraftpb.EntryNormal:
            cs = eraftpb.ConfState()
            cs.CopyFrom(node.sm.conf_state)
            seen.setdefault(node.id, []).append(cs)

    net.applied_hooks.append(hook)
    return seen


def change(net: Network, leader: int, cc: object) -> None:
    net.node(leader).propose_conf_change(b"", cc)
    net.stabilize()
    net.tick(ticks=2)


def voters(net: Network, node_id: int) -> list[int]:
    return sorted(net.nodes[node_id].sm.conf_state.voters)


def test_add_node_then_quorum_grows() -> None:
    # §4.1: "The leader ... appends the new configuration entry; ... once committed, the
    # new server counts toward majorities." With 4 voters a majority is 3.
    net = Network([1, 2, 3])
    leader = net.elect(1)
    change(net, leader, single(ADD, 4))
    assert voters(net, 1) == [1, 2, 3, 4]
    # The new server catches up through a snapshot (the leader compacted its log).
    net.compact(leader)
    net.add_node(4)
    net.tick(ticks=3)
    assert voters(net, 4) == [1, 2, 3, 4]
    assert net.raft(4).leader_id == leader
    net.crash(3)
    net.crash(4)
    net.propose(leader, b"needs-3-of-4")
    assert net.applied_data(1) == []  # two of four is no majority
    net.restart(4)
    net.tick(ticks=3)
    assert net.applied_data(1) == [b"needs-3-of-4"]
    assert net.applied_data(4) == [b"needs-3-of-4"]


def test_remove_node_shrinks_quorum() -> None:
    # §4.1: after removing a server, a majority of the new configuration suffices.
    net = Network([1, 2, 3, 4])
    leader = net.elect(1)
    change(net, leader, single(REMOVE, 4))
    assert all(voters(net, i) == [1, 2, 3] for i in (1, 2, 3))
    net.crash(3)
    net.crash(4)
    net.propose(leader, b"2-of-3")
    assert net.applied_data(1) == [b"2-of-3"]


def test_removed_leader_steps_down() -> None:
    # §4.2.2: "the leader steps down (returns to follower state) once it has committed the
    # Cnew log entry" — a server not in the configuration must not keep leading.
    net = Network([1, 2, 3])
    leader = net.elect(1)
    change(net, leader, single(REMOVE, leader))
    assert voters(net, leader) == [2, 3]
    assert net.role(leader) != StateRole.Leader
    net.tick_until(lambda: net.leader() in (2, 3), ticks_max=10 * ET, node_ids=[2, 3])
    new = net.leader()
    net.propose(new, b"after")
    net.tick([2, 3], ticks=2)
    assert net.applied_data(2)[-1:] == net.applied_data(3)[-1:] == [b"after"]
    assert net.role(leader) != StateRole.Leader


def test_one_conf_change_at_a_time() -> None:
    # §4.1: "a leader ... does not begin a new configuration change until the previous
    # one has committed": a second proposal while one is pending is not applied.
    net = Network([1, 2, 3], learners=[4, 5])
    leader = net.elect(1)
    net.partition([1], [2, 3, 4, 5])  # keep the first change uncommitted
    net.node(leader).propose_conf_change(b"", single(ADD, 4))
    with contextlib.suppress(ProposalDropped):
        net.node(leader).propose_conf_change(b"", single(ADD, 5))
    net.heal()
    net.tick(ticks=3)
    assert voters(net, 1) == [1, 2, 3, 4]


# §4.3 joint consensus through ConfChangeV2: Auto uses the simple protocol for a single
# voter change and joint consensus otherwise; Implicit always goes through the joint
# configuration and leaves it automatically; Explicit stays joint until the application
# proposes an empty ConfChangeV2.
JOINT_CASES = [
    pytest.param(eraftpb.Auto, [(ADD, 4)], False, [1, 2, 3, 4], [5], id="auto-single"),
    pytest.param(eraftpb.Auto, [(ADD, 4), (REMOVE, 3)], True, [1, 2, 4], [5], id="auto-joint"),
    pytest.param(eraftpb.Implicit, [(ADD, 4)], True, [1, 2, 3, 4], [5], id="implicit"),
    pytest.param(eraftpb.Explicit, [(ADD, 4), (ADD, 5), (REMOVE, 2)], True, [1, 3, 4, 5], [],
                 id="explicit"),
    pytest.param(eraftpb.Auto, [(LEARNER, 3), (ADD, 5)], True, [1, 2, 5], [3, 4],
                 id="demote-and-promote"),
]


@pytest.mark.parametrize(("transition", "changes", "joint", "final", "learners"), JOINT_CASES)
def test_conf_change_v2(transition, changes, joint, final, learners) -> None:
    net = Network([1, 2, 3], learners=[4, 5])
    confs = record_confs(net)
    leader = net.elect(1)
    change(net, leader, v2(transition, *changes))
    if transition == eraftpb.Explicit:
        cs = net.nodes[leader].sm.conf_state
        assert list(cs.voters_outgoing), "explicit transition must stay joint"
        assert not cs.auto_leave
        net.propose(leader, b"while-joint")
        assert net.applied_data(leader) == [b"while-joint"]
        change(net, leader, eraftpb.ConfChangeV2())  # leave the joint configuration
    for i in final:
        cs = net.nodes[i].sm.conf_state
        assert sorted(cs.voters) == final
        assert sorted(cs.learners) == learners
        assert not list(cs.voters_outgoing) and not list(cs.learners_next)
    went_joint = any(list(cs.voters_outgoing) for cs in confs[leader])
    assert went_joint is joint
    leader_now = net.leader()
    assert leader_now in final
    net.propose(leader_now, b"after")
    net.tick(ticks=1)
    assert all(net.applied_data(i)[-1:] == [b"after"] for i in final)


def test_joint_config_needs_both_majorities() -> None:
    # §4.3: "Agreement (for elections and entry commitment) requires separate majorities
    # from both the old and new configurations."  Old {1,2,3}, new {1,4,5}.
    net = Network([1, 2, 3], learners=[4, 5])
    leader = net.elect(1)
    change(net, leader, v2(eraftpb.Explicit, (ADD, 4), (ADD, 5), (REMOVE, 2), (REMOVE, 3)))
    assert sorted(net.nodes[1].sm.conf_state.voters_outgoing) == [1, 2, 3]
    net.crash(2)
    net.crash(3)
    net.propose(leader, b"new-majority-only")
    assert net.applied_data(leader) == []
    net.restart(2)
    net.tick(ticks=2)
    assert net.applied_data(leader) == [b"new-majority-only"]


def test_learner_replicates_but_never_votes_or_counts() -> None:
    # §4.2.1: non-voting members receive the log but are not counted in majorities, and
    # never start elections.
    net = Network([1, 2, 3], learners=[4])
    leader = net.elect(1)
    net.propose(leader, b"x")
    net.tick(ticks=1)
    assert net.applied_data(4) == [b"x"]
    # Not counted: leader + learner is no majority of {1, 2, 3}.
    net.crash(2)
    net.crash(3)
    net.propose(leader, b"y")
    assert net.applied_data(leader) == [b"x"]
    # Never campaigns, however long it waits.
    net.crash(1)
    net.tick([4], ticks=5 * ET)
    assert net.role(4) == StateRole.Follower
    assert net.term(4) == 1
    # Its vote is not counted: candidate 2 with only the learner's vote loses.
    net.restart(2)
    net.campaign(2)
    assert net.role(2) == StateRole.Candidate


def test_promote_learner_to_voter() -> None:
    net = Network([1, 2, 3], learners=[4])
    leader = net.elect(1)
    change(net, leader, single(ADD, 4))
    assert voters(net, 4) == [1, 2, 3, 4]
    assert list(net.nodes[4].sm.conf_state.learners) == []
    net.crash(1)
    net.tick_until(lambda: net.leader() is not None, ticks_max=10 * ET, node_ids=[2, 3, 4])


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (v2(eraftpb.Explicit, (ADD, 4)), v2(eraftpb.Explicit, (ADD, 5))),
        (None, eraftpb.ConfChangeV2()),
    ],
    ids=["nested-joint", "leave-when-not-joint"],
)
def test_refused_conf_change_becomes_noop(first, second) -> None:
    # §4.3: a joint configuration must be left before the next change; leaving when not
    # joint means nothing. The leader turns such a proposal into an empty entry.
    net = Network([1, 2, 3], learners=[4, 5])
    leader = net.elect(1)
    if first is not None:
        change(net, leader, first)
    before = eraftpb.ConfState()
    before.CopyFrom(net.nodes[leader].sm.conf_state)
    last = net.raft(leader).raft_log.last_index()
    change(net, leader, second)
    assert net.nodes[leader].sm.conf_state == before
    assert net.raft(leader).raft_log.last_index() == last + 1
    assert net.committed(leader) == last + 1


def test_removed_leader_refuses_proposals() -> None:
    net = Network([1, 2, 3])
    leader = net.elect(1)
    change(net, leader, single(REMOVE, leader))
    with pytest.raises(ProposalDropped):
        net.node(leader).propose(b"", b"from-removed")
