"""Pre-vote, thesis §9.6: a server that was partitioned away does not disrupt the
cluster when it rejoins."""
from __future__ import annotations

import pytest

from kvraft.raft import StateRole, eraftpb
from tests.raft.network import DEFAULT_ELECTION_TICK, Network, drain, new_raw_node, only

ET = DEFAULT_ELECTION_TICK


def test_partitioned_node_does_not_disrupt_leader() -> None:
    # §9.6: "a candidate would first ask other servers whether its log was up-to-date
    # enough to get their vote. Only if the candidate believed it could get votes from a
    # majority of the cluster would it increment its term and start a normal election."
    net = Network([1, 2, 3], pre_vote=True)
    leader = net.elect(1)
    term = net.term(leader)
    net.isolate(3)
    net.propose(leader, b"while-partitioned")  # the majority moves on without node 3
    net.tick(ticks=5 * ET)
    assert net.role(3) == StateRole.PreCandidate
    assert net.term(3) == term, "an isolated pre-candidate must not bump its term"
    net.heal()
    net.tick(ticks=2 * ET)
    assert net.leaders() == [leader]
    assert all(net.term(i) == term for i in net.ids())
    assert net.applied_data(3) == [b"while-partitioned"]
    assert net.role(3) == StateRole.Follower and net.raft(3).leader_id == leader


def test_without_prevote_rejoining_node_disrupts() -> None:
    # The contrast that motivates §9.6: without pre-vote the isolated server's term keeps
    # growing and, on rejoining, forces the leader to step down.
    net = Network([1, 2, 3])
    leader = net.elect(1)
    term = net.term(leader)
    net.isolate(3)
    net.tick([3], ticks=3 * ET)
    assert net.term(3) > term
    net.heal()
    net.tick_until(lambda: net.term(leader) > term, ticks_max=3 * ET)


def test_precandidate_becomes_leader_with_majority() -> None:
    # §9.6: after winning the pre-vote the server runs a normal election in term + 1.
    net = Network([1, 2, 3], pre_vote=True)
    net.node(1).campaign()
    net.process(1)
    assert net.role(1) == StateRole.PreCandidate and net.term(1) == 0
    pre = net.take_sent(eraftpb.MsgRequestPreVote)
    assert sorted(m.to for m in pre) == [2, 3] and all(m.term == 1 for m in pre)
    net.stabilize()
    assert net.role(1) == StateRole.Leader and net.term(1) == 1


def test_prevote_does_not_change_voter_state() -> None:
    # A pre-vote is a question, not a vote: the voter's term and vote stay as they were.
    raw = new_raw_node(1, [1, 2, 3], log_terms=[1], term=1)
    raw.step(eraftpb.Message(msg_type=eraftpb.MsgRequestPreVote, from_=2, to=1, term=2,
                             log_term=1, index=1))
    resp = only(drain(raw), eraftpb.MsgRequestPreVoteResponse)
    assert [(m.reject, m.term) for m in resp] == [(False, 2)]
    assert (raw.raft.term, raw.raft.vote) == (1, 0)


@pytest.mark.parametrize(("log_term", "index", "granted"), [(1, 1, True), (0, 0, False)])
def test_prevote_rejected_by_up_to_date_check(log_term: int, index: int, granted: bool) -> None:
    raw = new_raw_node(1, [1, 2, 3], log_terms=[1], term=1)
    raw.step(eraftpb.Message(msg_type=eraftpb.MsgRequestPreVote, from_=2, to=1, term=2,
                             log_term=log_term, index=index))
    resp = only(drain(raw), eraftpb.MsgRequestPreVoteResponse)
    assert [m.reject for m in resp] == [not granted]


def test_precandidate_with_stale_log_never_bumps_term() -> None:
    # A pre-candidate whose log is behind gets no pre-votes, so it never increments its
    # term; the up-to-date majority elects a leader.
    net = Network([1, 2, 3], pre_vote=True)
    net.elect(1)
    net.isolate(3)
    net.propose(1, b"a")
    net.heal()
    net.crash(1)
    net.campaign(3)
    assert net.role(3) != StateRole.Leader
    assert net.term(3) == 1
    net.tick_until(lambda: net.leader() is not None, ticks_max=10 * ET)
    assert net.leader() == 2


def test_prevote_with_check_quorum_rejoin() -> None:
    # §9.6 with §4.2.3: a rejoining node with pre-vote and check-quorum rejoins quietly.
    net = Network([1, 2, 3], pre_vote=True, check_quorum=True)
    leader = net.elect(1)
    term = net.term(leader)
    net.isolate(2)
    net.tick(ticks=4 * ET)
    net.heal()
    net.tick(ticks=2 * ET)
    assert net.leaders() == [leader] and net.term(leader) == term


def test_fresh_node_rejects_lower_priority_prevote() -> None:
    # raft-rs priorities: a voter refuses a candidate of lower priority whose log is no
    # longer than its own. A node that never saw an election (term 0) must answer that
    # rejection like any other instead of failing (found by the simulation, seed 7000).
    raw = new_raw_node(2, [1, 2, 3], pre_vote=True, priority=2)
    raw.step(eraftpb.Message(msg_type=eraftpb.MsgRequestPreVote, from_=1, to=2, term=1,
                             log_term=0, index=0, priority=1))
    resp = only(drain(raw), eraftpb.MsgRequestPreVoteResponse)
    assert [(m.to, m.reject) for m in resp] == [(1, True)]
    assert raw.raft.term == 0 and raw.raft.vote == 0


def test_priorities_decide_prevote_among_equal_logs() -> None:
    net = Network([1, 2, 3], pre_vote=True)
    for i in net.ids():
        net.config_overrides[i] = {"priority": i}
        net.restart(i)
    net.campaign(1)  # both peers have higher priority: the pre-vote is lost
    assert net.role(1) == StateRole.Follower and net.term(1) == 0
    net.campaign(3)
    assert net.leader() == 3 and net.term(3) == 1
