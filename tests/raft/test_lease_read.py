"""Lease-based reads, thesis §6.4.1 (`ReadOnlyOption.LeaseBased`): the leader answers a
ReadIndex without a heartbeat round only while a quorum acknowledged its heartbeats
within the lease (election timeout less a drift margin, on the tick clock), never
during a leadership transfer nor before it committed an entry of its term; otherwise
it runs the round. The argument is in kvraft/raft/read_only.py."""
from __future__ import annotations

import pytest

from kvraft.raft import (
    Config,
    ConfigInvalid,
    MemStorage,
    RawNode,
    ReadOnlyOption,
    StateRole,
    eraftpb,
)
from kvraft.raft.config import LEASE_GRANULARITY_TICKS
from kvraft.raft.quorum import JointConfig, MajorityConfig
from kvraft.raft.read_only import lease_heartbeat_ctx, parse_lease_heartbeat_ctx
from kvraft.raft.tracker import (
    NEVER_ACKED_TICK,
    Configuration,
    MapChangeType,
    ProgressTracker,
)
from tests.raft.network import DEFAULT_ELECTION_TICK, Network

ET = DEFAULT_ELECTION_TICK
LEASE = Config(id=1, election_tick=ET, check_quorum=True,
               read_only_option=ReadOnlyOption.LeaseBased).lease_ticks()


def lease_net(voters: list[int] | None = None, **config: object) -> Network:
    return Network(voters or [1, 2, 3], check_quorum=True,
                   read_only_option=ReadOnlyOption.LeaseBased, **config)


def answered_at_once(net: Network, node_id: int, ctx: bytes) -> bool:
    """Ask for a read and report whether it was answered before any message moved,
    i.e. without a round (the leader appends the ReadState while stepping)."""
    raft = net.raft(node_id)
    before = len(raft.read_states)
    net.node(node_id).read_index(ctx)
    return [rs.request_ctx for rs in raft.read_states[before:]] == [ctx]


def read_ctxs(net: Network, node_id: int) -> list[bytes]:
    """Contexts of the reads the node's application was handed (through Ready)."""
    return [bytes(rs.request_ctx) for rs in net.nodes[node_id].read_states]


def held_lease(voters: list[int] | None = None) -> tuple[Network, int]:
    """A leader of its first term whose first heartbeat round a quorum acknowledged."""
    net = lease_net(voters)
    leader = net.elect(1)
    net.tick([leader], ticks=1)
    assert net.raft(leader).lease_valid()
    return net, leader


def test_lease_ticks_are_the_election_timeout_less_the_stated_margin() -> None:
    cfg = Config(id=1, election_tick=20, check_quorum=True,
                 read_only_option=ReadOnlyOption.LeaseBased)
    # 10 % of 20 ticks for clock drift, plus one tick of granularity at each end.
    assert cfg.lease_drift_margin_ticks() == 2 + LEASE_GRANULARITY_TICKS
    assert cfg.lease_ticks() == 16
    assert LEASE == ET - 1 - LEASE_GRANULARITY_TICKS


def test_a_lease_shorter_than_a_heartbeat_interval_is_refused() -> None:
    cfg = Config(id=1, election_tick=5, heartbeat_tick=2, check_quorum=True,
                 read_only_option=ReadOnlyOption.LeaseBased)
    with pytest.raises(ConfigInvalid, match="longer than heartbeat_tick"):
        cfg.validate()


def test_lease_read_is_answered_without_a_round_while_the_lease_holds() -> None:
    # §6.4.1: "the leader would use the normal heartbeat mechanism to maintain a
    # lease"; while it holds, a read needs no round — even an isolated leader answers.
    net, leader = held_lease()
    net.propose(leader, b"v")
    committed = net.committed(leader)
    net.isolate(leader)
    net.take_sent()
    assert answered_at_once(net, leader, b"lease")
    assert net.raft(leader).read_states[-1].index == committed
    net.stabilize()
    assert net.take_sent(eraftpb.MsgHeartbeat) == []


def test_heartbeats_carry_their_send_tick_and_number() -> None:
    net = lease_net()
    leader = net.elect(1)
    net.take_sent()
    net.tick([leader], ticks=1)
    stamps = {parse_lease_heartbeat_ctx(m.context) for m in net.take_sent(eraftpb.MsgHeartbeat)}
    assert stamps == {(net.raft(leader).tick_count, 1)}
    prs = net.raft(leader).prs.progress
    assert [(prs[p].last_ack_tick, prs[p].last_ack_seq) for p in (2, 3)] == [(1, 1), (1, 1)]


@pytest.mark.parametrize(("silent_ticks", "at_once"), [
    (LEASE - 1, True),   # the last tick of the lease
    (LEASE, False),      # lease_ticks after the acknowledged heartbeat was sent
    (LEASE + 1, False),
])
def test_lease_ends_once_the_quorum_was_silent_for_the_lease(silent_ticks: int,
                                                             at_once: bool) -> None:
    # The lease runs from the *send* tick of the newest heartbeat a quorum
    # acknowledged; after that the leader must confirm with a round (§6.4 step 3).
    net, leader = held_lease()
    sent_at = net.raft(leader).tick_count
    net.isolate(leader)
    net.tick([leader], ticks=silent_ticks)
    raft = net.raft(leader)
    assert raft.state is StateRole.Leader and raft.tick_count - sent_at == silent_ticks
    assert raft.lease_valid() is at_once
    assert answered_at_once(net, leader, b"r") is at_once
    if not at_once:
        net.stabilize()
        assert read_ctxs(net, leader) == []
        net.heal()
        net.tick([leader], ticks=1)  # the next heartbeat is the round, and renews
        assert read_ctxs(net, leader) == [b"r"]
        assert raft.lease_valid()


def test_fallback_read_waits_for_a_heartbeat_sent_after_it_arrived() -> None:
    # A heartbeat answered after the read arrived but sent before it proves nothing
    # about the time of the read: only a later one releases it.
    net, leader = held_lease()
    raft = net.raft(leader)
    net.isolate(leader)
    net.tick([leader], ticks=LEASE)
    early = [m for m in net.take_sent(eraftpb.MsgHeartbeat)][-2:]
    assert not raft.lease_valid()
    net.node(leader).read_index(b"late")
    net.heal()
    for hb in early:  # answers to heartbeats sent before the read
        ack = eraftpb.Message(msg_type=eraftpb.MsgHeartbeatResponse, from_=hb.to,
                              to=leader, term=raft.term, context=hb.context)
        net.node(leader).step(ack)
    assert read_ctxs(net, leader) == []
    assert raft.lease_valid()  # they do renew the lease (sent within it)...
    net.stabilize()  # ... and the round requested for the read releases it
    assert read_ctxs(net, leader) == [b"late"]


def test_a_delayed_ack_counts_from_when_its_heartbeat_was_sent() -> None:
    # An acknowledgement arriving late must not stretch the lease: a follower's
    # promise dates from when it received the heartbeat, which is no earlier than
    # when the leader sent it — but possibly much earlier than the answer arrives.
    net, leader = held_lease()
    raft = net.raft(leader)
    net.isolate(leader)
    net.tick([leader], ticks=LEASE)
    assert not raft.lease_valid()
    old = lease_heartbeat_ctx(1, 1)  # the first round, sent at tick 1
    for peer in (2, 3):
        net.node(leader).step(eraftpb.Message(
            msg_type=eraftpb.MsgHeartbeatResponse, from_=peer, to=leader, term=raft.term,
            context=old))
    assert not raft.lease_valid()
    assert raft.prs.progress[2].last_ack_tick == 1


def test_an_ack_from_the_future_is_ignored() -> None:
    net, leader = held_lease()
    raft = net.raft(leader)
    bogus = lease_heartbeat_ctx(raft.tick_count + 100, raft.heartbeat_seq + 5)
    net.node(leader).step(eraftpb.Message(msg_type=eraftpb.MsgHeartbeatResponse, from_=2,
                                          to=leader, term=raft.term, context=bogus))
    assert raft.prs.progress[2].last_ack_seq == raft.heartbeat_seq


def test_lease_ends_when_a_leadership_transfer_starts() -> None:
    # §3.10: MsgTimeoutNow lets the target campaign at once, and voters grant it
    # despite their lease: the old leader's lease is void from the moment it starts
    # the transfer, and stays void for the term even if the transfer is abandoned
    # (its MsgTimeoutNow may still be on the way).
    net, leader = held_lease()
    net.drop_types.add(eraftpb.MsgTimeoutNow)
    net.node(leader).transfer_leader(2)
    raft = net.raft(leader)
    assert raft.lead_transferee == 2 and not raft.lease_valid()
    assert not answered_at_once(net, leader, b"during")
    net.stabilize()
    assert read_ctxs(net, leader) == [b"during"]  # by a heartbeat round
    net.tick([leader], ticks=ET)  # the transfer is abandoned after an election timeout
    assert raft.state is StateRole.Leader and raft.lead_transferee is None
    assert not raft.lease_valid()
    assert not answered_at_once(net, leader, b"after")
    net.stabilize()
    assert read_ctxs(net, leader)[-1] == b"after"


def test_a_transfer_to_a_learner_or_to_itself_keeps_the_lease() -> None:
    net, leader = held_lease()
    net.node(leader).transfer_leader(leader)
    assert net.raft(leader).lease_valid()


def test_no_lease_before_the_first_commit_of_the_term() -> None:
    # §6.4 step 1: until it commits an entry of its term the leader may not know the
    # latest commit index, lease or not.
    net = lease_net()
    net.drop_types.add(eraftpb.MsgAppend)
    leader = net.elect(1)
    net.tick([leader], ticks=1)  # heartbeats are acknowledged: the quorum is there
    raft = net.raft(leader)
    noop = raft.raft_log.last_index()
    assert raft.prs.quorum_ack_tick(leader, raft.tick_count) >= 0
    assert net.committed(leader) < noop and not raft.lease_valid()
    assert not answered_at_once(net, leader, b"early")
    net.tick([leader], ticks=1)
    assert read_ctxs(net, leader) == []
    net.heal()
    net.tick([leader], ticks=1)
    assert net.committed(leader) >= noop
    assert read_ctxs(net, leader) == [b"early"]
    assert net.nodes[leader].read_states[-1].index >= noop
    assert raft.lease_valid()


def test_forwarded_follower_read_gets_the_index_from_the_lease() -> None:
    # SPEC §1: a follower forwards a ReadIndex to the leader; with a lease the leader
    # answers it from the lease too, with no round.
    net, leader = held_lease()
    net.propose(leader, b"v")
    net.take_sent()
    net.node(2).read_index(b"fwd")
    net.stabilize()
    sent = net.take_sent()
    assert [m.msg_type for m in sent if m.from_ == leader] == [eraftpb.MsgReadIndexResp]
    assert read_ctxs(net, 2) == [b"fwd"]
    assert net.nodes[2].read_states[0].index == net.committed(leader)


def test_forwarded_read_without_a_lease_takes_a_round() -> None:
    net = lease_net()
    net.elect(1)
    net.take_sent()
    net.node(3).read_index(b"fwd")
    net.stabilize()
    hb = net.take_sent(eraftpb.MsgHeartbeat)
    assert sorted(m.to for m in hb) == [2, 3]
    assert read_ctxs(net, 3) == [b"fwd"]


def test_partitioned_old_leader_cannot_read_once_a_new_leader_could_exist() -> None:
    # The case the lease must get right: the old leader, cut off with a minority,
    # keeps answering only until its lease ends — before the majority can elect a
    # new leader — and never answers once a new one commits writes.
    net, old = held_lease([1, 2, 3, 4, 5])
    net.partition([1, 2], [3, 4, 5])
    new = None
    for _ in range(4 * ET):
        net.tick()
        new = next((n for n in (3, 4, 5) if net.role(n) is StateRole.Leader), None)
        if new is not None:
            break
        assert net.role(old) is StateRole.Leader
    assert new is not None and net.term(new) > net.term(old)
    raft = net.raft(old)
    assert not raft.lease_valid()
    net.propose(new, b"newer")
    for k in range(3):
        assert not answered_at_once(net, old, f"stale{k}".encode())
        net.tick([1, 2], ticks=1)
    assert read_ctxs(net, old) == []


def test_the_lease_ends_before_any_other_node_may_vote() -> None:
    # The margin at work: at the last tick the lease holds, every voter that
    # acknowledged the heartbeat still ignores a campaign for a higher term.
    net, leader = held_lease()
    net.isolate(leader)
    net.tick(ticks=LEASE - 1)
    assert net.raft(leader).lease_valid()
    for voter in (2, 3):
        assert net.raft(voter).in_lease()
        assert net.role(voter) is StateRole.Follower


def test_a_follower_in_lease_ignores_a_stale_higher_term_vote_answer() -> None:
    # Without this, a follower that had campaigned before it heard from the leader
    # could be moved to the higher term by a late rejection, with no leader, and
    # grant a vote there at once — breaking the lease it just promised.
    net, leader = held_lease()
    follower = net.raft(2)
    term = follower.term
    net.node(2).step(eraftpb.Message(msg_type=eraftpb.MsgRequestPreVoteResponse, from_=3,
                                     to=2, term=term + 1, reject=True))
    assert follower.term == term and follower.leader_id == leader


def test_a_follower_in_lease_still_follows_a_higher_term_leader() -> None:
    net, _leader = held_lease()
    follower = net.raft(2)
    term = follower.term
    net.node(2).step(eraftpb.Message(msg_type=eraftpb.MsgHeartbeat, from_=3, to=2,
                                     term=term + 1))
    assert follower.term == term + 1 and follower.leader_id == 3


def test_safe_mode_keeps_the_old_rule_for_stale_vote_answers() -> None:
    net = Network([1, 2, 3], check_quorum=True)
    leader = net.elect(1)
    follower = net.raft(2)
    net.node(2).step(eraftpb.Message(msg_type=eraftpb.MsgRequestPreVoteResponse, from_=3,
                                     to=2, term=follower.term + 1, reject=True))
    assert follower.leader_id != leader  # moved to the higher term, no leader


def _restarted(lease: bool) -> RawNode:
    store = MemStorage.new_with_conf_state(eraftpb.ConfState(voters=[1, 2, 3]))
    store.set_hardstate(eraftpb.HardState(term=3, vote=1, commit=0))
    option = ReadOnlyOption.LeaseBased if lease else ReadOnlyOption.Safe
    return RawNode(Config(id=2, election_tick=ET, heartbeat_tick=1, check_quorum=True,
                          read_only_option=option), store)


def _vote_request(term: int) -> eraftpb.Message:
    return eraftpb.Message(msg_type=eraftpb.MsgRequestVote, from_=3, to=2, term=term,
                           index=10, log_term=3)


def test_a_restarted_voter_honours_a_lease_it_may_have_forgotten() -> None:
    # A voter that acknowledged the leader's heartbeat and then restarted forgets it
    # did; in LeaseBased mode it ignores campaigns for its first election timeout.
    node = _restarted(lease=True)
    node.step(_vote_request(4))
    assert node.raft.term == 3 and node.raft.vote == 1
    for _ in range(ET):
        node.tick()
    node.step(_vote_request(4))
    assert node.raft.term == 4 and node.raft.vote == 3


def test_a_restarted_voter_in_safe_mode_votes_at_once() -> None:
    node = _restarted(lease=False)
    node.step(_vote_request(4))
    assert node.raft.term == 4 and node.raft.vote == 3


def test_quorum_ack_tick_follows_both_halves_of_a_joint_configuration() -> None:
    prs = ProgressTracker(16)
    conf = Configuration(JointConfig(MajorityConfig({1, 2, 3}), MajorityConfig({1, 4, 5})))
    prs.apply_conf(conf, [(i, MapChangeType.Add) for i in (1, 2, 3, 4, 5)], 1)
    assert prs.quorum_ack_tick(1, 10) == NEVER_ACKED_TICK
    prs.progress[2].ack_lease_heartbeat(7, 3)
    assert prs.quorum_ack_tick(1, 10) == NEVER_ACKED_TICK  # the outgoing half is silent
    prs.progress[4].ack_lease_heartbeat(5, 2)
    assert prs.quorum_ack_tick(1, 10) == 5
    assert prs.quorum_ack_seq(1, 3) == 2
    prs.progress[4].ack_lease_heartbeat(4, 1)  # an older, reordered ack changes nothing
    assert prs.progress[4].last_ack_tick == 5


def test_a_stamp_no_heartbeat_could_carry_is_not_recorded() -> None:
    net, leader = held_lease()
    net.tick([leader], ticks=2)  # heartbeat 2 at a later tick, acknowledged
    pr = net.raft(leader).prs.progress[2]
    seq, tick = pr.last_ack_seq, pr.last_ack_tick
    assert not pr.ack_lease_heartbeat(tick - 1, seq + 1)  # a later number, an earlier tick
    assert (pr.last_ack_seq, pr.last_ack_tick) == (seq, tick)


def test_an_ack_without_a_lease_stamp_is_no_evidence() -> None:
    # A heartbeat answer carrying another context (a safe-mode round of an earlier
    # configuration, say) dates nothing: it neither renews the lease nor counts.
    net = lease_net()
    leader = net.elect(1)
    raft = net.raft(leader)
    for ctx in (b"", b"read-ctx", lease_heartbeat_ctx(0, 1)[:-1]):
        net.node(leader).step(eraftpb.Message(msg_type=eraftpb.MsgHeartbeatResponse, from_=2,
                                              to=leader, term=raft.term, context=ctx))
    assert raft.prs.progress[2].last_ack_seq == -1 and not raft.lease_valid()


def test_no_voters_means_no_quorum_ack() -> None:
    assert ProgressTracker(4).quorum_ack_tick(1, 10) == NEVER_ACKED_TICK
