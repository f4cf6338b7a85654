"""No message carries a term (or a vote) that is not yet durable on its sender.

The failure this guards against (issue 11, item 1): a single voter wins an election at
once, so the Ready that raises its term already holds its appends to the learners. Were
they sent before the new term is on disk, a crash before the fsync would let the node
win the same term again and write a different entry at the same (index, term): the
learner keeps the old one, Log Matching (thesis §3.5) is broken and the learner applies
an entry that was never committed. Thesis §3.8: currentTerm and votedFor are updated
on stable storage before responding to (or sending) RPCs.
"""
from __future__ import annotations

import pytest

from kvraft.raft import Config, MemStorage, RawNode, Ready, eraftpb
from tests.raft.network import Network

VOTER, LEARNER = 1, 2


def single_voter_with_learner() -> RawNode:
    """Voter 1 + learner 2, at durable term 0: the documented way to grow one node."""
    store = MemStorage.new_with_conf_state(
        eraftpb.ConfState(voters=[VOTER], learners=[LEARNER]))
    return RawNode(Config(id=VOTER, election_tick=10, heartbeat_tick=1,
                          max_size_per_msg=1 << 20), store)


def persist(node: RawNode, rd: Ready) -> None:
    store = node.store()
    store.append(rd.entries())
    if rd.hs() is not None:
        store.set_hardstate(rd.hs())


def new_term_messages(msgs: list[eraftpb.Message], durable_term: int) -> list[str]:
    return [f"{eraftpb.MessageType.Name(m.msg_type)} term {m.term} to {m.to}"
            for m in msgs if m.term > durable_term]


def test_sync_single_voter_sends_nothing_of_the_new_term_before_its_write() -> None:
    node = single_voter_with_learner()
    node.campaign()
    node.propose(b"", b"v1")
    rd = node.ready()
    assert rd.hs() is not None and rd.hs().term == 1 and rd.must_sync()
    # The node's durable term is still 0: nothing at term 1 may leave before the write.
    assert new_term_messages(rd.messages(), 0) == []
    appends = [m for m in rd.persisted_messages() if m.msg_type == eraftpb.MsgAppend]
    assert [(m.to, m.term, [e.data for e in m.entries]) for m in appends] == [
        (LEARNER, 1, [b"", b"v1"])]
    persist(node, rd)
    light = node.advance(rd)
    assert light.commit_index() == 2
    # Term 1 is durable now: the leader's next messages go out at once again (§10.2.1).
    node.tick()
    rd2 = node.ready()
    assert [(m.msg_type, m.to, m.term) for m in rd2.messages()] == [
        (eraftpb.MsgHeartbeat, LEARNER, 1)]
    assert rd2.persisted_messages() == []


def test_async_later_ready_without_hard_state_holds_the_new_term_too() -> None:
    # advance_append_async: the Ready that raised the term is handed back while its
    # write is still queued; the next Ready has no HardState but the leader's
    # heartbeats (and appends) in it are at the term that is not durable yet.
    node = single_voter_with_learner()
    node.campaign()
    node.propose(b"", b"v1")
    rd1 = node.ready()
    assert rd1.hs().term == 1
    node.advance_append_async(rd1)
    released = list(rd1.messages())
    node.tick()  # a heartbeat round at term 1
    node.propose(b"", b"v2")
    rd2 = node.ready()
    assert rd2.hs() is None
    node.advance_append_async(rd2)
    released += rd2.messages()
    assert new_term_messages(released, 0) == []
    held = rd1.persisted_messages() + rd2.persisted_messages()
    assert {m.msg_type for m in held} == {eraftpb.MsgAppend, eraftpb.MsgHeartbeat}
    # Once rd1 (the hard state) is durable, rd2's held messages may go with rd2's write;
    # nothing at term 1 is stuck, and later Readies send at once.
    persist(node, rd1)
    node.on_persist_ready(rd1.number())
    persist(node, rd2)
    node.on_persist_ready(rd2.number())
    node.tick()
    rd3 = node.ready()
    assert eraftpb.MsgHeartbeat in {m.msg_type for m in rd3.messages()}
    assert rd3.persisted_messages() == []


def test_light_ready_holds_messages_of_a_term_raised_after_the_ready() -> None:
    # The term moves between ready() and advance(): the LightReady must not carry the
    # new term's appends; they wait for the next Ready, which carries its HardState.
    node = single_voter_with_learner()
    rd = node.ready()  # nothing to do yet, at term 0
    node.campaign()  # wins term 1 at once, while rd (term 0) is being handled
    persist(node, rd)
    light = node.advance(rd)
    assert new_term_messages(light.messages(), 0) == []
    rd2 = node.ready()
    assert rd2.hs().term == 1
    assert new_term_messages(rd2.messages(), 0) == []
    assert eraftpb.MsgAppend in {m.msg_type for m in rd2.persisted_messages()}


def test_granted_pre_vote_answer_of_a_leader_is_not_held() -> None:
    # A pre-vote grant carries the requester's (future) term, not the sender's, and
    # depends on no durable state (§9.6): a leader sends it with its other messages.
    node = single_voter_with_learner()
    node.campaign()
    rd = node.ready()
    persist(node, rd)
    node.advance(rd)
    # Without check_quorum the leader considers a pre-vote for a later term.
    node.step(eraftpb.Message(msg_type=eraftpb.MsgRequestPreVote, from_=LEARNER,
                              to=VOTER, term=5, index=10, log_term=1))
    rd2 = node.ready()
    answers = [(m.msg_type, m.term, m.reject) for m in rd2.messages()
               if m.msg_type == eraftpb.MsgRequestPreVoteResponse]
    assert answers == [(eraftpb.MsgRequestPreVoteResponse, 5, False)]


def test_learner_never_applies_what_a_leader_lost_in_a_crash_before_its_fsync() -> None:
    # The sequence of issue 11: node 1 is elected at term 1 and offers a no-op and
    # `v1` in one round; it crashes before the fsync, restarts at term 0, wins term 1
    # again and writes `v2` at the same index and term. The learner must end up with,
    # and apply, v2 — the only entry that was ever committed there.
    net = Network([VOTER], learners=[LEARNER], async_persist=True, auto_persist=False,
                  max_size_per_msg=1 << 20)
    net.node(VOTER).campaign()
    net.node(VOTER).propose(b"", b"v1")
    net.handle_ready(VOTER)  # write queued; messages() go on the wire now
    while net.deliver_one():
        pass
    net.handle_ready(LEARNER)
    while net.persist(LEARNER):
        pass
    net.crash(VOTER)  # before persist(VOTER): its write is lost
    net.restart(VOTER)
    assert net.term(VOTER) == 0
    net.auto_persist = True
    net.node(VOTER).campaign()
    net.node(VOTER).propose(b"", b"v2")
    net.stabilize()
    assert net.term(VOTER) == 1
    assert net.applied_data(VOTER) == [b"v2"]
    assert net.applied_data(LEARNER) == [b"v2"]
    keys = [net.nodes[i].storage.mirror for i in (VOTER, LEARNER)]
    assert keys[0] == keys[1]  # Log Matching, learner included


M = eraftpb


@pytest.mark.parametrize(("msg_type", "term", "to", "reject", "covered"), [
    (M.MsgAppend, 3, 2, False, True),
    (M.MsgHeartbeat, 4, 2, False, False),              # a term not yet durable
    (M.MsgRequestPreVote, 4, 2, False, True),          # asks about term + 1
    (M.MsgRequestPreVote, 5, 2, False, False),
    (M.MsgRequestPreVoteResponse, 9, 2, False, True),  # the requester's term
    (M.MsgRequestPreVoteResponse, 4, 2, True, False),  # a rejection carries ours
    (M.MsgRequestVote, 3, 2, False, True),             # our durable vote is for us
    (M.MsgRequestVoteResponse, 3, 1, False, True),     # ...so we granted nobody else
    (M.MsgRequestVoteResponse, 3, 2, False, False),
    (M.MsgRequestVoteResponse, 3, 2, True, True),
    (M.MsgRequestVoteResponse, 2, 2, False, True),     # a later term is durable
])
def test_the_routing_rule(msg_type: int, term: int, to: int, reject: bool,
                          covered: bool) -> None:
    # Durable term 3 and vote 1 (node 1 voted for itself), as a restart reads them.
    store = MemStorage.new_with_conf_state(eraftpb.ConfState(voters=[1, 2, 3]))
    store.set_hardstate(eraftpb.HardState(term=3, vote=1))
    node = RawNode(Config(id=1, election_tick=10, heartbeat_tick=1), store)
    m = eraftpb.Message(msg_type=msg_type, from_=1, to=to, term=term, reject=reject)
    assert node._covered_by_durable_state(m, node._durable_term) is covered
