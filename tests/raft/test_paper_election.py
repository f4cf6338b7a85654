"""Leader election, thesis §3.4 / paper §5.2, and the election restriction, §5.4.1."""
from __future__ import annotations

import pytest

from kvraft.raft import StateRole, eraftpb
from tests.raft.network import DEFAULT_ELECTION_TICK, Network, drain, new_raw_node, only

ET = DEFAULT_ELECTION_TICK


def vote_request(frm: int, to: int, term: int, log_term: int = 0, index: int = 0,
                 msg_type: int = eraftpb.MsgRequestVote) -> eraftpb.Message:
    return eraftpb.Message(msg_type=msg_type, from_=frm, to=to, term=term,
                           log_term=log_term, index=index)


def test_servers_start_as_followers(cluster3: Network) -> None:
    # §5.2: "When servers start up, they begin as followers."
    for i in cluster3.ids():
        assert cluster3.role(i) == StateRole.Follower
        assert cluster3.term(i) == 0


def test_follower_times_out_within_randomized_range() -> None:
    # §5.2: "Raft uses randomized election timeouts" — chosen from [election_tick,
    # 2 * election_tick) so that in most cases only a single server times out.
    seen = set()
    for node_id in range(1, 40):
        raw = new_raw_node(node_id, range(1, 40))
        ticks = 0
        while raw.raft.state == StateRole.Follower:
            raw.tick()
            ticks += 1
            assert ticks < 2 * ET, "no election after 2 * election_tick ticks"
        assert ET <= ticks < 2 * ET
        seen.add(ticks)
    assert len(seen) > 1, "election timeouts are not randomized"


def test_explicit_election_tick_range() -> None:
    raw = new_raw_node(1, [1, 2, 3], min_election_tick=15, max_election_tick=17)
    ticks = 0
    while raw.raft.state == StateRole.Follower and ticks < 100:
        raw.tick()
        ticks += 1
    assert 15 <= ticks < 17


def test_candidate_increments_term_and_votes_for_itself() -> None:
    # §5.2: "a follower increments its current term and transitions to candidate state.
    # It then votes for itself and issues RequestVote RPCs in parallel."
    raw = new_raw_node(1, [1, 2, 3], term=4)
    raw.campaign()
    msgs = drain(raw)
    assert raw.raft.state == StateRole.Candidate
    assert (raw.raft.term, raw.raft.vote) == (5, 1)
    assert raw.store().initial_state().hard_state.vote == 1, "vote not persisted"
    reqs = only(msgs, eraftpb.MsgRequestVote)
    assert sorted(m.to for m in reqs) == [2, 3]
    assert all(m.term == 5 for m in reqs)


# §5.2: "A candidate wins an election if it receives votes from a majority of the servers
# in the full cluster for the same term."
@pytest.mark.parametrize(
    ("size", "down", "won"),
    [(1, [], True), (3, [], True), (3, [3], True), (3, [2, 3], False),
     (5, [4, 5], True), (5, [3, 4, 5], False)],
)
def test_candidate_wins_with_majority(size: int, down: list[int], won: bool) -> None:
    net = Network(range(1, size + 1))
    for i in down:
        net.crash(i)
    net.campaign(1)
    assert net.role(1) == (StateRole.Leader if won else StateRole.Candidate)
    assert net.term(1) == 1


@pytest.mark.parametrize(
    ("first", "second", "granted"),
    [(2, 2, True), (2, 3, False)],
    ids=["same-candidate-again", "other-candidate"],
)
def test_vote_at_most_once_per_term(first: int, second: int, granted: bool) -> None:
    # §5.2: "Each server will vote for at most one candidate in a given term, on a
    # first-come-first-served basis."
    raw = new_raw_node(1, [1, 2, 3])
    raw.step(vote_request(first, 1, term=1))
    resp = only(drain(raw), eraftpb.MsgRequestVoteResponse)
    assert [(m.to, m.reject) for m in resp] == [(first, False)]
    raw.step(vote_request(second, 1, term=1))
    resp = only(drain(raw), eraftpb.MsgRequestVoteResponse)
    assert [(m.to, m.reject) for m in resp] == [(second, not granted)]
    assert raw.raft.vote == first


def test_vote_survives_crash_restart() -> None:
    # Figure 2: votedFor is persistent state, "updated on stable storage before
    # responding to RPCs" — a restarted server must not vote twice in one term.
    net = Network([1, 2, 3])
    net.isolate(1)
    net.step(1, vote_request(2, 1, term=1))
    net.process(1)
    assert [m.reject for m in net.take_sent(eraftpb.MsgRequestVoteResponse)] == [False]
    net.restart(1)
    assert (net.term(1), net.raft(1).vote) == (1, 2)
    net.step(1, vote_request(3, 1, term=1))
    net.process(1)
    assert [m.reject for m in net.take_sent(eraftpb.MsgRequestVoteResponse)] == [True]


# Figure 2, RequestVote receiver: "Reply false if term < currentTerm." As in etcd and
# raft-rs, a stale RequestVote is not answered at all (the candidate learns the term
# from the next leader's messages); a stale pre-vote is rejected explicitly with our
# term, so that a pre-candidate that cannot raise its term learns it (§9.6). Neither
# grants, and neither changes our term or vote, however long the candidate's log.
@pytest.mark.parametrize(("msg_type", "answers"), [
    (eraftpb.MsgRequestVote, []),
    (eraftpb.MsgRequestPreVote, [(eraftpb.MsgRequestPreVoteResponse, 2, True, 5)]),
])
def test_stale_vote_request_is_not_granted(msg_type: int, answers: list) -> None:
    raw = new_raw_node(1, [1, 2, 3], term=5)
    raw.step(vote_request(2, 1, term=3, log_term=9, index=9, msg_type=msg_type))
    assert [(m.msg_type, m.to, m.reject, m.term) for m in drain(raw)] == answers
    assert raw.raft.term == 5 and raw.raft.vote == 0


# §5.2: "If the term in the RPC is at least as large as the candidate's current term,
# then the candidate recognizes the leader as legitimate and returns to follower state";
# §5.1: "If a candidate or leader discovers that its term is out of date, it immediately
# reverts to follower state."
@pytest.mark.parametrize(
    ("msg_type", "term", "leader"),
    [
        (eraftpb.MsgHeartbeat, 1, 2),
        (eraftpb.MsgAppend, 1, 2),
        (eraftpb.MsgHeartbeat, 2, 2),
        (eraftpb.MsgAppend, 3, 2),
        (eraftpb.MsgRequestVote, 2, 0),
    ],
    ids=["heartbeat-same-term", "append-same-term", "heartbeat-higher", "append-higher",
         "vote-higher"],
)
def test_candidate_steps_down(msg_type: int, term: int, leader: int) -> None:
    raw = new_raw_node(1, [1, 2, 3])
    raw.campaign()
    drain(raw)
    assert (raw.raft.state, raw.raft.term) == (StateRole.Candidate, 1)
    raw.step(eraftpb.Message(msg_type=msg_type, from_=2, to=1, term=term))
    drain(raw)
    assert raw.raft.state == StateRole.Follower
    assert raw.raft.term == term
    assert raw.raft.leader_id == leader


@pytest.mark.parametrize("msg_type", [eraftpb.MsgAppend, eraftpb.MsgHeartbeat,
                                      eraftpb.MsgRequestVote, eraftpb.MsgAppendResponse],
                         ids=eraftpb.MessageType.Name)
def test_leader_steps_down_on_higher_term(cluster3: Network, msg_type: int) -> None:
    leader = cluster3.elect(1)
    cluster3.isolate(leader)
    cluster3.step(leader, eraftpb.Message(msg_type=msg_type, from_=2, to=1, term=5))
    cluster3.process(leader)
    assert cluster3.role(leader) == StateRole.Follower
    assert cluster3.term(leader) == 5


def test_split_vote_is_resolved_by_randomized_timeouts() -> None:
    # §5.2: split votes — "each candidate will time out and start a new election by
    # incrementing its term ... randomized election timeouts ensure that split votes are
    # rare and that they are resolved quickly."
    net = Network([1, 2, 3], seed=7)
    net.crash(3)
    net.node(1).campaign()
    net.node(2).campaign()
    net.stabilize()
    assert net.role(1) == net.role(2) == StateRole.Candidate, "both should split the vote"
    assert net.term(1) == net.term(2) == 1
    net.tick_until(lambda: net.leader() is not None, ticks_max=10 * ET)
    assert len(net.leaders()) == 1
    assert net.term(net.leader()) > 1


def test_new_leader_appends_empty_entry_of_its_term(cluster3: Network) -> None:
    # Thesis §6.4: "each leader commit a blank no-op entry into the log at the start of
    # its term" — the leader learns what is committed only through an entry of its term.
    leader = cluster3.elect(2)
    raft = cluster3.raft(leader)
    last = raft.raft_log.last_index()
    assert raft.raft_log.term(last) == raft.term == 1
    for i in cluster3.ids():
        assert cluster3.committed(i) == last
        assert cluster3.raft(i).leader_id == leader


def test_leader_sends_heartbeats_every_heartbeat_tick(cluster3: Network) -> None:
    # §5.2: "Leaders send periodic heartbeats ... to all followers in order to maintain
    # their authority."
    leader = cluster3.elect(1)
    cluster3.take_sent()
    cluster3.tick([leader], ticks=1)  # heartbeat_tick = 1
    beats = cluster3.take_sent(eraftpb.MsgHeartbeat)
    assert sorted(m.to for m in beats) == [2, 3]
    # Followers that keep hearing heartbeats never start an election.
    cluster3.tick(ticks=5 * ET)
    assert cluster3.leaders() == [leader]
    assert cluster3.term(leader) == 1


# §5.4.1: "the voter denies its vote if its own log is more up-to-date than that of the
# candidate ... If the logs have last entries with different terms, then the log with the
# later term is more up-to-date. If the logs end with the same term, then whichever log
# is longer is more up-to-date."  The voter's log has terms [1, 2, 2].
@pytest.mark.parametrize(
    ("log_term", "index", "granted"),
    [(2, 3, True), (2, 4, True), (3, 1, True), (2, 2, False), (1, 5, False), (0, 0, False)],
    ids=["equal", "longer-same-term", "later-term-shorter", "shorter-same-term",
         "earlier-term-longer", "empty"],
)
@pytest.mark.parametrize("msg_type", [eraftpb.MsgRequestVote, eraftpb.MsgRequestPreVote],
                         ids=["vote", "prevote"])
def test_election_restriction(log_term: int, index: int, granted: bool, msg_type: int) -> None:
    raw = new_raw_node(1, [1, 2, 3], log_terms=[1, 2, 2], term=2, commit=1)
    raw.step(vote_request(2, 1, term=3, log_term=log_term, index=index, msg_type=msg_type))
    resp_type = eraftpb.MsgRequestVoteResponse if msg_type == eraftpb.MsgRequestVote else (
        eraftpb.MsgRequestPreVoteResponse)
    resp = only(drain(raw), resp_type)
    assert [(m.to, m.reject) for m in resp] == [(2, not granted)]


def test_candidate_with_stale_log_cannot_win() -> None:
    # §5.4.1 at cluster level: a node that missed committed entries loses the election.
    net = Network([1, 2, 3])
    net.elect(1)
    net.isolate(3)
    for k in range(3):
        net.propose(1, f"v{k}".encode())
    net.heal()
    net.crash(1)
    net.campaign(3)
    assert net.role(3) != StateRole.Leader
    net.tick_until(lambda: net.leader() is not None, ticks_max=10 * ET)
    assert net.leader() == 2


def test_campaign_as_leader_is_ignored(cluster3: Network) -> None:
    leader = cluster3.elect(1)
    cluster3.campaign(leader)
    assert cluster3.role(leader) == StateRole.Leader and cluster3.term(leader) == 1


def test_learner_cannot_campaign() -> None:
    # Thesis §4.2.1: a non-voting member is not promotable; even an explicit campaign
    # request is ignored.
    net = Network([1, 2, 3], learners=[4])
    net.campaign(4)
    assert net.role(4) == StateRole.Follower and net.term(4) == 0
    assert not net.take_sent(eraftpb.MsgRequestVote)


def test_no_campaign_with_committed_unapplied_conf_change() -> None:
    # Thesis §4.1: a server uses the latest configuration in its log; one that has a
    # committed configuration change it has not applied yet does not know the
    # configuration it would lead, so it must not start an election.
    from kvraft.raft import Config, MemStorage, RawNode

    storage = MemStorage.new_with_conf_state(eraftpb.ConfState(voters=[1, 2, 3]))
    cc = eraftpb.ConfChange(change_type=eraftpb.AddNode, node_id=4)
    storage.append([
        eraftpb.Entry(index=1, term=1),
        eraftpb.Entry(index=2, term=1, entry_type=eraftpb.EntryConfChange,
                      data=cc.SerializeToString()),
    ])
    storage.set_hardstate(eraftpb.HardState(term=1, commit=2))
    raw = RawNode(Config(id=1, election_tick=ET, heartbeat_tick=1), storage)
    raw.campaign()
    assert raw.raft.state == StateRole.Follower and raw.raft.term == 1
    # Once the application applied it, the campaign goes ahead.
    rd = raw.ready()
    for e in rd.take_committed_entries():
        if e.entry_type == eraftpb.EntryConfChange:
            change = eraftpb.ConfChange()
            change.ParseFromString(e.data)
            raw.apply_conf_change(change)
    raw.advance(rd)
    raw.campaign()
    assert raw.raft.state == StateRole.Candidate and raw.raft.term == 2


@pytest.mark.parametrize("action", ["read_index", "transfer_leader"])
def test_candidate_drops_requests_needing_a_leader(action: str) -> None:
    net = Network([1, 2, 3])
    net.isolate(1)
    net.campaign(1)
    assert net.role(1) == StateRole.Candidate
    net.take_sent()
    if action == "read_index":
        net.node(1).read_index(b"x")
    else:
        net.node(1).transfer_leader(2)
    net.stabilize()
    assert net.nodes[1].read_states == []
    assert not [m for m in net.take_sent() if m.msg_type in (
        eraftpb.MsgReadIndex, eraftpb.MsgTransferLeader, eraftpb.MsgTimeoutNow)]
    assert net.role(1) == StateRole.Candidate and net.term(1) == 1


def test_candidate_ignores_timeout_now() -> None:
    net = Network([1, 2, 3])
    net.isolate(1)
    net.campaign(1)
    net.step(1, eraftpb.Message(msg_type=eraftpb.MsgTimeoutNow, from_=2, to=1, term=1))
    net.process(1)
    assert net.role(1) == StateRole.Candidate and net.term(1) == 1
