"""RawNode, Ready and LightReady: the contract between the core and the application,
including asynchronous persistence (thesis §10.2.1)."""
from __future__ import annotations

import pytest

from kvraft.raft import (
    Config,
    ConfigInvalid,
    MemStorage,
    ProposalDropped,
    RawNode,
    Ready,
    SnapshotStatus,
    StateRole,
    StepLocalMsg,
    StepPeerNotFound,
    eraftpb,
)
from kvraft.raft.raw_node import LightReady


def make_config(node_id: int, **kwargs: object) -> Config:
    return Config(id=node_id, election_tick=10, heartbeat_tick=1,
                  max_size_per_msg=1 << 20, **kwargs)


def new_node(node_id: int, voters: list[int], **kwargs: object) -> RawNode:
    store = MemStorage.new_with_conf_state(eraftpb.ConfState(voters=voters))
    return RawNode(make_config(node_id, **kwargs), store)


def persist(node: RawNode, rd: Ready) -> None:
    """What the application writes before advancing: snapshot, entries, hard state."""
    store = node.store()
    if rd.snapshot().metadata.index:
        store.apply_snapshot(rd.snapshot())
    store.append(rd.entries())
    if rd.hs() is not None:
        store.set_hardstate(rd.hs())


def handle(node: RawNode) -> tuple[Ready, LightReady, list[eraftpb.Message]]:
    """One synchronous round: persist, advance; returns every message to send."""
    rd = node.ready()
    persist(node, rd)
    out = list(rd.messages()) + list(rd.persisted_messages())
    light = node.advance(rd)
    if light.commit_index() is not None:
        node.store().commit_to(light.commit_index())
    out += light.messages()
    return rd, light, out


def test_single_node_campaign_and_commit() -> None:
    node = new_node(1, [1])
    assert not node.has_ready()
    node.campaign()
    assert node.has_ready()
    rd = node.ready()
    assert rd.number() == 1
    assert rd.ss().raft_state is StateRole.Leader and rd.ss().leader_id == 1
    assert (rd.hs().term, rd.hs().vote) == (1, 1)
    # The leader's no-op entry (§3.6.2) must be persisted, with fsync.
    assert [(e.index, e.term, e.data) for e in rd.entries()] == [(1, 1, b"")]
    assert rd.must_sync()
    assert rd.committed_entries() == []  # not durable on the only voter yet
    persist(node, rd)
    light = node.advance(rd)
    assert light.commit_index() == 1
    assert [e.index for e in light.committed_entries()] == [1]
    node.advance_apply()
    assert node.raft.raft_log.applied == 1
    assert not node.has_ready()


def test_proposal_commits_only_after_the_leaders_own_write() -> None:
    # With a single voter the leader's own durable copy is the whole quorum.
    node = new_node(1, [1])
    node.campaign()
    handle(node)
    node.propose(b"ctx", b"data")
    rd = node.ready()
    assert [e.data for e in rd.entries()] == [b"data"]
    assert rd.entries()[0].context == b"ctx"
    node.advance_append_async(rd)
    assert node.raft.raft_log.committed == 1
    assert not node.has_ready()
    persist(node, rd)
    node.on_persist_ready(rd.number())
    assert node.raft.raft_log.committed == 2
    rd2 = node.ready()
    assert rd2.hs().commit == 2
    assert [e.data for e in rd2.committed_entries()] == [b"data"]
    node.advance(rd2)
    assert node.raft.raft_log.applied == 2


def three_nodes(**kwargs: object) -> dict[int, RawNode]:
    return {i: new_node(i, [1, 2, 3], **kwargs) for i in (1, 2, 3)}


def deliver(nodes: dict[int, RawNode], msgs: list[eraftpb.Message]) -> None:
    for m in msgs:
        nodes[m.to].step(m)


def settle(nodes: dict[int, RawNode], rounds_max: int = 50) -> dict[int, list]:
    """Run Ready rounds until no message is left; the ReadStates each node received."""
    read_states: dict[int, list] = {i: [] for i in nodes}
    for _ in range(rounds_max):
        out: list[eraftpb.Message] = []
        for node_id, node in nodes.items():
            if node.has_ready():
                rd, _light, msgs = handle(node)
                read_states[node_id] += rd.read_states()
                out += msgs
        if not out:
            return read_states
        deliver(nodes, out)
    raise AssertionError("cluster did not settle")


def elect(nodes: dict[int, RawNode], leader: int = 1) -> RawNode:
    nodes[leader].campaign()
    settle(nodes)
    assert nodes[leader].raft.state is StateRole.Leader
    return nodes[leader]


def test_votes_wait_in_persisted_messages() -> None:
    # A vote (and the term it was cast in) must be durable before it is sent (§3.8).
    nodes = three_nodes()
    nodes[1].campaign()
    rd = nodes[1].ready()
    assert rd.messages() == []
    assert {m.to for m in rd.persisted_messages()} == {2, 3}
    assert all(m.msg_type == eraftpb.MsgRequestVote for m in rd.persisted_messages())
    assert rd.must_sync()
    nodes[1].advance(rd)
    nodes[2].step(rd.persisted_messages()[0])
    rd2 = nodes[2].ready()
    assert [m.msg_type for m in rd2.persisted_messages()] == [eraftpb.MsgRequestVoteResponse]
    assert (rd2.hs().term, rd2.hs().vote) == (1, 1)


def test_leader_sends_appends_before_its_own_write() -> None:
    nodes = three_nodes()
    leader = elect(nodes)
    leader.propose(b"", b"x")
    rd = leader.ready()
    appends = [m for m in rd.messages() if m.msg_type == eraftpb.MsgAppend]
    assert {m.to for m in appends} == {2, 3}
    assert rd.persisted_messages() == []
    assert [e.data for e in rd.entries()] == [b"x"]
    # Async: the leader has not written its entry, one follower acknowledges.
    leader.advance_append_async(rd)
    nodes[2].step(next(m for m in appends if m.to == 2))
    rd2 = nodes[2].ready()
    assert rd2.messages() == []  # a follower's answer waits for its own write
    persist(nodes[2], rd2)
    nodes[2].advance(rd2)
    deliver(nodes, rd2.persisted_messages())
    # Leader + follower 2 is a quorum, but the leader's copy is not durable yet...
    # ...though follower 2 and 3 would be; here only 2 answered, so nothing commits.
    committed_before = leader.raft.raft_log.committed
    assert leader.raft.raft_log.term(committed_before) == 1
    assert committed_before < leader.raft.raft_log.last_index()
    persist(leader, rd)
    leader.on_persist_ready(rd.number())
    assert leader.raft.raft_log.committed == leader.raft.raft_log.last_index()


def test_followers_alone_can_commit_while_the_leader_writes() -> None:
    # §10.2.1: the leader need not be part of the majority that stores an entry.
    nodes = three_nodes()
    leader = elect(nodes)
    leader.propose(b"", b"x")
    rd = leader.ready()
    leader.advance_append_async(rd)
    for follower in (2, 3):
        nodes[follower].step(next(m for m in rd.messages() if m.to == follower))
        rdf = nodes[follower].ready()
        persist(nodes[follower], rdf)
        nodes[follower].advance(rdf)
        deliver(nodes, rdf.persisted_messages())
    assert leader.raft.raft_log.committed == leader.raft.raft_log.last_index()
    # ...but it applies only what it has itself made durable.
    rd2 = leader.ready()
    assert [e.data for e in rd2.committed_entries()] == []
    leader.advance_append_async(rd2)
    persist(leader, rd)
    leader.on_persist_ready(rd2.number())
    rd3 = leader.ready()
    assert [e.data for e in rd3.committed_entries()] == [b"x"]


def test_take_variants_empty_the_ready() -> None:
    nodes = three_nodes()
    elect(nodes)
    nodes[1].propose(b"", b"y")
    nodes[1].read_index(b"r1")
    rd = nodes[1].ready()
    assert rd.take_entries() and rd.entries() == []
    assert rd.take_messages() and rd.messages() == []
    assert rd.take_persisted_messages() == []
    assert rd.take_committed_entries() == [] and rd.take_read_states() == []
    assert "Ready(number=" in repr(rd)


def test_read_index_on_a_single_node_is_immediate_once_committed_in_term() -> None:
    node = new_node(1, [1])
    node.campaign()
    # Before its no-op commits, the leader holds the read (§6.4 step 1).
    node.read_index(b"early")
    rd = node.ready()
    assert rd.read_states() == []
    persist(node, rd)
    light = node.advance(rd)
    assert light.commit_index() == 1
    rd2 = node.ready()
    assert [(s.index, s.request_ctx) for s in rd2.read_states()] == [(1, b"early")]
    node.advance(rd2)
    node.read_index(b"late")
    rd3 = node.ready()
    assert [(s.index, s.request_ctx) for s in rd3.take_read_states()] == [(1, b"late")]


def test_follower_read_index_is_forwarded_and_answered() -> None:
    nodes = three_nodes()
    elect(nodes)
    nodes[2].read_index(b"ctx")
    rd = nodes[2].ready()
    forwarded = rd.persisted_messages()
    assert [(m.msg_type, m.to) for m in forwarded] == [(eraftpb.MsgReadIndex, 1)]
    nodes[2].advance(rd)
    deliver(nodes, forwarded)
    states = settle(nodes)[2]
    assert [(s.index, s.request_ctx) for s in states] == [(1, b"ctx")]


def test_errors_of_the_api() -> None:
    node = new_node(1, [1, 2, 3])
    with pytest.raises(ProposalDropped):
        node.propose(b"", b"no leader")
    with pytest.raises(StepLocalMsg):
        node.step(eraftpb.Message(msg_type=eraftpb.MsgHup, from_=2))
    with pytest.raises(StepPeerNotFound):
        node.step(eraftpb.Message(msg_type=eraftpb.MsgAppendResponse, from_=9, term=1))
    with pytest.raises(ConfigInvalid):
        RawNode(make_config(0), MemStorage())
    with pytest.raises(ProposalDropped):
        node.request_snapshot()  # no leader to ask


def test_advance_needs_the_latest_ready() -> None:
    node = new_node(1, [1])
    node.campaign()
    rd = node.ready()
    node.advance(rd)
    with pytest.raises(AssertionError):
        node.advance(rd)


def test_max_committed_size_per_ready_splits_application() -> None:
    node = new_node(1, [1], max_committed_size_per_ready=1)
    node.campaign()
    handle(node)
    for i in range(3):
        node.propose(b"", b"p%d" % i)
    rd = node.ready()
    persist(node, rd)
    light = node.advance_append(rd)
    # At least one entry per batch, never the whole backlog at once.
    assert [e.data for e in light.committed_entries()] == [b"p0"]
    node.advance_apply()
    rd = node.ready()
    assert [e.data for e in rd.committed_entries()] == [b"p1"]
    light = node.advance(rd)
    assert [e.data for e in light.committed_entries()] == [b"p2"]
    node.advance_apply()
    assert not node.has_ready()


def test_status_reports_progress_only_on_the_leader() -> None:
    nodes = three_nodes()
    elect(nodes)
    status = nodes[1].status()
    assert status.ss.raft_state is StateRole.Leader and status.hs.term == 1
    assert sorted(status.progress) == [1, 2, 3]
    assert status.progress[2].matched == nodes[1].raft.raft_log.last_index()
    assert nodes[2].status().progress is None
    assert nodes[2].status().ss.leader_id == 1


def test_report_unreachable_and_snapshot_status_move_progress() -> None:
    from kvraft.raft import ProgressState

    nodes = three_nodes()
    leader = elect(nodes)
    pr = leader.raft.prs.progress[2]
    assert pr.state is ProgressState.Replicate
    leader.report_unreachable(2)
    assert pr.state is ProgressState.Probe
    pr.become_snapshot(5)
    leader.report_snapshot(2, SnapshotStatus.Failure)
    assert pr.state is ProgressState.Probe and pr.paused
    pr.become_snapshot(5)
    leader.report_snapshot(2, SnapshotStatus.Finish)
    assert pr.state is ProgressState.Probe and pr.next_idx == 6


def test_transfer_leader_through_the_raw_node() -> None:
    nodes = three_nodes()
    elect(nodes)
    nodes[1].transfer_leader(3)
    settle(nodes)
    assert nodes[3].raft.state is StateRole.Leader
    assert nodes[1].raft.state is StateRole.Follower


def test_conf_change_through_the_raw_node() -> None:
    nodes = three_nodes()
    leader = elect(nodes)
    cc = eraftpb.ConfChange(change_type=eraftpb.AddLearnerNode, node_id=4)
    leader.propose_conf_change(b"", cc)
    rd = leader.ready()
    assert rd.entries()[-1].entry_type == eraftpb.EntryConfChange
    persist(leader, rd)
    leader.advance(rd)
    cs = leader.apply_conf_change(cc)
    assert list(cs.learners) == [4]
    assert 4 in leader.raft.prs.progress


def test_restart_resumes_from_storage() -> None:
    node = new_node(1, [1])
    node.campaign()
    handle(node)
    node.propose(b"", b"kept")
    handle(node)
    restarted = RawNode(make_config(1, applied=1), node.store())
    assert restarted.raft.term == 1
    assert restarted.raft.raft_log.committed == 2
    rd = restarted.ready()
    # Only what was not applied before the restart is handed out again.
    assert [e.data for e in rd.committed_entries()] == [b"kept"]


def test_restart_with_applied_beyond_the_durable_commit() -> None:
    # The application applied index 2 but stopped before writing the hard state that
    # says so: the restart trusts `applied` (it was committed when handed out).
    node = new_node(1, [1])
    node.campaign()
    handle(node)
    node.propose(b"", b"x")
    handle(node)
    node.store().set_hardstate(eraftpb.HardState(term=1, vote=1, commit=1))
    restarted = RawNode(make_config(1, applied=2), node.store())
    assert restarted.raft.raft_log.committed == 2
    assert restarted.raft.raft_log.applied == 2
    assert not restarted.ready().committed_entries()


def append_from(leader: int, term: int, prev: tuple[int, int], commit: int,
                *entries: tuple[int, int]) -> eraftpb.Message:
    m = eraftpb.Message(msg_type=eraftpb.MsgAppend, to=3, from_=leader, term=term,
                        index=prev[0], log_term=prev[1], commit=commit)
    m.entries.extend(eraftpb.Entry(index=i, term=t) for i, t in entries)
    return m


@pytest.mark.parametrize("second_write_handed_out", [True, False])
def test_durable_write_overtaken_by_a_rewrite(second_write_handed_out: bool) -> None:
    # A follower writes entries 1-3 of term 1 asynchronously; before the write finishes
    # a new leader replaces 2-3. When the first write completes only entry 1 is durable
    # for good: 2-3 on disk are about to be overwritten (or were never what we hold).
    node = new_node(3, [1, 2, 3])
    node.step(append_from(1, 1, (0, 0), 0, (1, 1), (2, 1), (3, 1)))
    rd1 = node.ready()
    assert [e.index for e in rd1.entries()] == [1, 2, 3]
    node.advance_append_async(rd1)
    node.step(append_from(2, 2, (1, 1), 0, (2, 2), (3, 2)))
    if second_write_handed_out:
        rd2 = node.ready()
        assert [(e.index, e.term) for e in rd2.entries()] == [(2, 2), (3, 2)]
        node.advance_append_async(rd2)
    persist(node, rd1)
    node.on_persist_ready(rd1.number())
    log = node.raft.raft_log
    assert log.persisted == 1
    assert [(log.term(i)) for i in (1, 2, 3)] == [1, 2, 2]
    if not second_write_handed_out:
        rd2 = node.ready()
        assert [(e.index, e.term) for e in rd2.entries()] == [(2, 2), (3, 2)]
        node.advance_append_async(rd2)
    persist(node, rd2)
    node.on_persist_ready(rd2.number())
    assert log.persisted == 3
    assert log.unstable_entries() == []


def test_joining_node_starts_from_a_snapshot() -> None:
    # A node started with no configuration must not rebuild one by replaying the log
    # from index 1 (the founders are not in the log): it asks for a snapshot.
    nodes = three_nodes()
    leader = elect(nodes)
    leader.propose(b"", b"before-join")
    settle(nodes)
    cc = eraftpb.ConfChange(change_type=eraftpb.AddNode, node_id=4)
    leader.propose_conf_change(b"", cc)
    settle(nodes)
    for node in nodes.values():
        node.apply_conf_change(cc)
        node.store().set_conf_state(node.raft.prs.conf_state())
    nodes[4] = RawNode(make_config(4), MemStorage())
    assert not nodes[4].raft.promotable
    settle(nodes)
    joined = nodes[4].raft
    assert sorted(joined.prs.conf.voters.ids()) == [1, 2, 3, 4]
    assert joined.promotable and joined.leader_id == 1
    assert nodes[4].store().first_index() > 1  # restored from a snapshot, not replayed
    leader.propose(b"", b"after-join")
    settle(nodes)
    assert joined.raft_log.committed == leader.raft.raft_log.last_index()


def test_has_ready_has_no_side_effects_yet_reports_a_deferred_heartbeat_round() -> None:
    # Issue 15: has_ready() answers without producing anything (raft-rs's does); a Safe
    # ReadIndex round deferred to the next Ready still counts as ready, and ready()
    # sends it.
    nodes = three_nodes()
    leader = elect(nodes)
    raft = leader.raft
    assert not leader.has_ready()
    leader.read_index(b"r1")
    assert raft.msgs == []  # the heartbeat round waits for the Ready
    assert leader.has_ready() and leader.has_ready()
    assert raft.msgs == [] and raft.bcast_read_heartbeat_pending
    leader.read_index(b"r2")  # a read after has_ready() still shares the round
    rd = leader.ready()
    beats = [(m.to, bytes(m.context)) for m in rd.messages()
             if m.msg_type == eraftpb.MsgHeartbeat]
    assert sorted(beats) == [(2, b"r2"), (3, b"r2")]
    assert not raft.bcast_read_heartbeat_pending


def test_has_ready_has_no_side_effects_yet_reports_deferred_appends() -> None:
    nodes = three_nodes()
    leader = elect(nodes)
    raft = leader.raft
    raft.request_bcast_append()  # e.g. a commit index to tell everyone
    assert leader.has_ready() and leader.has_ready()
    assert raft.msgs == [] and raft.bcast_append_pending
    leader.propose(b"", b"a")
    assert leader.has_ready()
    leader.propose(b"", b"b")  # proposals between has_ready() and ready() coalesce too
    rd = leader.ready()
    appends = sorted((m.to, [e.data for e in m.entries]) for m in rd.messages()
                     if m.msg_type == eraftpb.MsgAppend)
    assert appends == [(2, [b"a", b"b"]), (3, [b"a", b"b"])]


def test_has_ready_ignores_a_deferred_broadcast_a_follower_cannot_send() -> None:
    nodes = three_nodes()
    elect(nodes)
    follower = nodes[2]
    follower.raft.request_bcast_append()  # only a leader broadcasts
    assert not follower.has_ready()
