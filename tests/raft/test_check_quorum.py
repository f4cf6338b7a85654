"""Check-quorum (thesis §6.2) and the leader lease that makes voters ignore vote
requests while they hear from a live leader (thesis §4.2.3)."""
from __future__ import annotations

from kvraft.raft import StateRole, eraftpb
from tests.raft.network import DEFAULT_ELECTION_TICK, Network

ET = DEFAULT_ELECTION_TICK


def test_isolated_leader_steps_down_after_election_timeout() -> None:
    # §6.2: "a leader steps down if an election timeout elapses without a successful round
    # of heartbeats to a majority of its cluster; this allows clients to retry their
    # requests with another server."
    net = Network([1, 2, 3], check_quorum=True)
    leader = net.elect(1)
    net.isolate(leader)
    net.tick([leader], ticks=ET)
    # It may still be leader at exactly one timeout; never after two.
    net.tick([leader], ticks=ET)
    assert net.role(leader) == StateRole.Follower
    assert net.raft(leader).leader_id == 0


def test_leader_with_quorum_keeps_leading() -> None:
    net = Network([1, 2, 3, 4, 5], check_quorum=True)
    leader = net.elect(1)
    net.partition([1, 2, 3], [4, 5])
    net.tick([1, 2, 3], ticks=4 * ET)
    assert net.role(leader) == StateRole.Leader
    assert net.term(leader) == 1


def test_leader_without_check_quorum_stays_leader_when_isolated() -> None:
    net = Network([1, 2, 3])
    leader = net.elect(1)
    net.isolate(leader)
    net.tick([leader], ticks=4 * ET)
    assert net.role(leader) == StateRole.Leader


def test_voter_in_lease_ignores_vote_request() -> None:
    # §4.2.3: "if a server receives a RequestVote request within the minimum election
    # timeout of hearing from a current leader, it does not update its term or grant its
    # vote."
    net = Network([1, 2, 3], check_quorum=True)
    leader = net.elect(1)
    term = net.term(leader)
    net.take_sent()
    net.step(2, eraftpb.Message(msg_type=eraftpb.MsgRequestVote, from_=3, to=2, term=term + 1,
                                log_term=term, index=net.raft(3).raft_log.last_index()))
    net.process(2)
    assert net.term(2) == term
    assert net.raft(2).vote == leader
    # Ignored, not rejected: no answer at all (a rejection would carry the new term).
    assert net.take_sent(eraftpb.MsgRequestVoteResponse) == []


def test_disruptive_campaign_fails_against_lease() -> None:
    # A server that campaigns (it timed out alone) cannot depose a leader whose followers
    # still hear from it; the leader keeps its term after the candidate gives up.
    net = Network([1, 2, 3], check_quorum=True)
    leader = net.elect(1)
    net.node(3).campaign()
    net.stabilize()
    assert net.role(leader) == StateRole.Leader
    assert net.term(2) == 1


def test_voter_out_of_lease_grants_vote() -> None:
    # Once an election timeout passes without hearing from the leader, the lease is over.
    # Randomized timeouts start at 3 * ET, so no follower campaigns on its own while the
    # lease (one election_tick) runs out.
    net = Network([1, 2, 3], check_quorum=True, min_election_tick=3 * ET,
                  max_election_tick=4 * ET)
    leader = net.elect(1)
    net.crash(leader)
    net.tick([2, 3], ticks=ET)  # followers' lease expires
    assert net.role(2) == net.role(3) == StateRole.Follower
    net.campaign(3)
    assert net.role(3) == StateRole.Leader
    assert net.term(3) == 2


def test_transfer_leader_timeout_now_overrides_lease() -> None:
    # MsgTimeoutNow carries the leader's blessing: the target's vote request must not be
    # ignored by voters in lease (thesis §3.10).
    net = Network([1, 2, 3], check_quorum=True)
    net.elect(1)
    net.node(1).transfer_leader(3)
    net.stabilize()
    assert net.leader() == 3
    assert net.term(3) == 2


def test_follower_of_stale_leader_rejoins() -> None:
    # A leader that steps down through check-quorum rejoins as follower of the new leader
    # (pre-vote keeps it from inflating its term while it is alone).
    net = Network([1, 2, 3], check_quorum=True, pre_vote=True)
    net.elect(1)
    net.isolate(1)
    net.tick(ticks=4 * ET)
    new_leader = net.leader()
    assert new_leader in (2, 3)
    assert net.role(1) in (StateRole.Follower, StateRole.PreCandidate)
    assert net.term(1) == 1
    net.heal()
    net.tick(ticks=ET)
    assert net.raft(1).leader_id == new_leader
    assert net.leaders() == [new_leader]
