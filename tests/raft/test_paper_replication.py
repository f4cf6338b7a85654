"""Log replication, paper §5.3 / thesis §3.5, and the commitment rule of §5.4.2."""
from __future__ import annotations

import pytest

from kvraft.raft import StateRole, eraftpb
from tests.raft.network import Network, drain, new_raw_node, only


def test_leader_appends_and_replicates_proposal(cluster3: Network) -> None:
    # §5.3: "The leader appends the command to its log as a new entry, then issues
    # AppendEntries RPCs in parallel to each of the other servers to replicate the entry."
    leader = cluster3.elect(1)
    last = cluster3.raft(leader).raft_log.last_index()
    cluster3.take_sent()
    cluster3.node(leader).propose(b"", b"cmd")
    cluster3.process(leader)
    assert cluster3.raft(leader).raft_log.last_index() == last + 1
    appends = cluster3.take_sent(eraftpb.MsgAppend)
    assert sorted(m.to for m in appends) == [2, 3]
    for m in appends:
        assert [e.data for e in m.entries] == [b"cmd"]
        assert (m.index, m.log_term) == (last, 1)


# §5.3: "A log entry is committed once the leader that created the entry has replicated
# it on a majority of the servers."
@pytest.mark.parametrize(
    ("size", "reachable", "committed"),
    [(3, [2], True), (3, [], False), (5, [2, 3], True), (5, [2], False), (5, [2, 3, 4, 5], True)],
)
def test_commit_needs_majority(size: int, reachable: list[int], committed: bool) -> None:
    net = Network(range(1, size + 1))
    net.elect(1)
    before = net.committed(1)
    net.partition([1, *reachable])
    net.propose(1, b"x")
    index = net.raft(1).raft_log.last_index()
    assert (net.committed(1) == index) is committed
    if not committed:
        assert net.committed(1) == before


def test_followers_apply_committed_entries_in_order(cluster5: Network) -> None:
    # §5.3: "Once a follower learns that a log entry is committed, it applies the entry to
    # its local state machine (in log order)."
    leader = cluster5.elect(3)
    values = [f"v{k}".encode() for k in range(10)]
    for v in values:
        cluster5.propose(leader, v)
    cluster5.tick(ticks=1)  # a heartbeat carries the final commit index
    for i in cluster5.ids():
        assert cluster5.applied_data(i) == values
        assert cluster5.committed(i) == cluster5.raft(leader).raft_log.last_index()


def test_follower_forwards_proposal_to_leader(cluster3: Network) -> None:
    # SPEC §1: "a follower forwards proposals ... to the leader".
    cluster3.elect(1)
    cluster3.propose(2, b"from-follower")
    cluster3.tick(ticks=1)
    for i in cluster3.ids():
        assert cluster3.applied_data(i) == [b"from-follower"]


# Figure 2, AppendEntries receiver: "Reply false if log doesn't contain an entry at
# prevLogIndex whose term matches prevLogTerm."  Follower log terms: [1, 2, 2].
@pytest.mark.parametrize(
    ("log_term", "index", "rejected"),
    [(2, 3, False), (2, 2, False), (1, 1, False), (0, 0, False),
     (3, 3, True), (2, 4, True), (1, 2, True)],
)
def test_append_consistency_check(log_term: int, index: int, rejected: bool) -> None:
    raw = new_raw_node(1, [1, 2, 3], log_terms=[1, 2, 2], term=2)
    raw.step(eraftpb.Message(msg_type=eraftpb.MsgAppend, from_=2, to=1, term=2,
                             log_term=log_term, index=index))
    resp = only(drain(raw), eraftpb.MsgAppendResponse)
    assert len(resp) == 1
    assert resp[0].reject is rejected
    if rejected:
        # Fast backtracking: the hint never points past the follower's last index.
        assert resp[0].reject_hint <= 3


# Figure 2, AppendEntries receiver: "If an existing entry conflicts with a new one (same
# index but different terms), delete the existing entry and all that follow it";
# "Append any new entries not already in the log."
@pytest.mark.parametrize(
    ("follower", "prev", "new", "expected"),
    [
        ([1, 1, 1], (1, 1), [2, 2], [1, 2, 2]),
        ([1, 2, 2], (1, 1), [2], [1, 2, 2]),  # already present: nothing truncated
        ([1, 2], (2, 2), [2, 2], [1, 2, 2, 2]),
        ([1, 1, 1, 1], (0, 0), [3], [3]),
    ],
    ids=["conflict", "duplicate", "append", "replace-all"],
)
def test_follower_truncates_conflicts(follower, prev, new, expected) -> None:
    raw = new_raw_node(1, [1, 2, 3], log_terms=follower, term=3)
    entries = [eraftpb.Entry(index=prev[1] + k + 1, term=t) for k, t in enumerate(new)]
    raw.step(eraftpb.Message(msg_type=eraftpb.MsgAppend, from_=2, to=1, term=3,
                             log_term=prev[0], index=prev[1], entries=entries))
    resp = only(drain(raw), eraftpb.MsgAppendResponse)
    assert [m.reject for m in resp] == [False]
    log = raw.raft.raft_log
    assert [log.term(i) for i in range(1, log.last_index() + 1)] == expected


# Figure 7: the leader of term 8 meets followers whose logs are missing entries (a, b),
# have extra uncommitted entries (c, d), or both (e, f). §5.3: "the leader handles
# inconsistencies by forcing the followers' logs to duplicate its own."
LEADER_LOG = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6]
FIGURE_7 = {
    "a": [1, 1, 1, 4, 4, 5, 5, 6, 6],
    "b": [1, 1, 1, 4],
    "c": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],
    "d": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7],
    "e": [1, 1, 1, 4, 4, 4, 4],
    "f": [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],
}


@pytest.mark.parametrize("case", sorted(FIGURE_7))
def test_figure7_log_repair(case: str) -> None:
    net = Network([1, 2, 3])
    net.load(1, LEADER_LOG, term=7, commit=3)
    net.load(2, FIGURE_7[case], term=7, commit=3)
    # Node 3 has an empty log, so it votes for node 1 whatever node 2 (which may hold the
    # more up-to-date log, cases c and d) answers.
    net.campaign(1)
    assert net.role(1) == StateRole.Leader and net.term(1) == 8
    net.tick(ticks=2)
    leader_terms = net.log_terms(1)
    assert leader_terms == [*LEADER_LOG, 8]
    assert net.log_terms(2) == leader_terms
    assert net.log_terms(3) == leader_terms
    # The repaired follower applies exactly the leader's entries.
    assert net.applied_data(2) == net.applied_data(1)
    assert net.committed(2) == net.committed(1) == len(leader_terms)


def test_figure7_repair_backtracks_quickly() -> None:
    # Thesis §3.5: with the follower's conflict hint the leader skips a whole term of
    # conflicting entries per round trip instead of one entry (case f).
    net = Network([1, 2, 3])
    net.load(1, LEADER_LOG, term=7, commit=3)
    net.load(2, FIGURE_7["f"], term=7, commit=3)
    net.campaign(1)
    net.tick(ticks=2)
    rejects = [m for m in net.sent if m.msg_type == eraftpb.MsgAppendResponse and m.reject
               and m.from_ == 2]
    assert net.log_terms(2) == net.log_terms(1)
    assert len(rejects) <= 4, f"{len(rejects)} rejections to repair 8 conflicting entries"


def _strip_entries_of_term(term: int):
    def strip(m: eraftpb.Message) -> bool:
        if m.msg_type == eraftpb.MsgAppend:
            keep = [e for e in m.entries if e.term != term]
            del m.entries[:]
            m.entries.extend(keep)
        return False  # deliver what is left

    return strip


def test_figure8_leader_does_not_commit_previous_term_by_counting() -> None:
    # §5.4.2 (Figure 8): "Raft never commits log entries from previous terms by counting
    # replicas. Only log entries from the leader's current term are committed by counting
    # replicas." Index 2 (term 2) reaches 4 of 5 logs under S1's term-4 leadership, yet it
    # is not committed; S5 (holding a term-3 entry at index 2) may still win and
    # overwrite it, which would be a safety violation had S1 committed it.
    net = Network([1, 2, 3, 4, 5], max_size_per_msg=1)
    net.load(1, [1, 2], term=3, commit=1)
    net.load(2, [1, 2], term=3, commit=1)
    net.load(3, [1], term=3, commit=1)
    net.load(4, [1], term=3, commit=1)
    net.load(5, [1, 3], term=3, vote=5, commit=1)
    # S1's own no-op (term 4) is what would commit index 2 indirectly: strip it from
    # every append, so peers receive the term-2 entry alone. S5 stays out of reach so it
    # keeps its term-3 entry.
    net.filters.append(_strip_entries_of_term(4))
    net.cut(1, 5)
    net.campaign(1)
    assert net.role(1) == StateRole.Leader and net.term(1) == 4
    net.tick([1], ticks=3)
    assert [net.raft(i).raft_log.term(2) for i in (1, 2, 3, 4)] == [2, 2, 2, 2]
    assert all(net.committed(i) == 1 for i in net.ids()), "term-2 entry committed by counting"
    # (d): S1 crashes; S5 is elected (its last term 3 beats term 2) and overwrites index 2.
    net.crash(1)
    net.heal()
    net.campaign(5)  # term 4: S2-S4 already voted for S1 in term 4
    if net.role(5) != StateRole.Leader:
        net.campaign(5)  # term 5
    assert net.role(5) == StateRole.Leader
    net.tick([5], ticks=2)
    for i in (2, 3, 4, 5):
        assert net.raft(i).raft_log.term(2) == 3
        assert net.committed(i) == net.raft(5).raft_log.last_index()


def test_figure8_previous_term_entry_commits_with_current_term_entry() -> None:
    # §5.4.2 (Figure 8 e): once an entry from the current term is replicated on a
    # majority, the earlier entries are committed indirectly by Log Matching.
    net = Network([1, 2, 3, 4, 5])
    net.load(1, [1, 2], term=3, commit=1)
    for i in (2, 3, 4, 5):
        net.load(i, [1], term=3, commit=1)
    net.campaign(1)
    net.tick([1], ticks=2)
    for i in net.ids():
        assert net.log_terms(i) == [1, 2, 4]
        assert net.committed(i) == 3


def test_leader_append_only() -> None:
    # Figure 3, Leader Append-Only: "a leader never overwrites or deletes entries in its
    # log; it only appends new entries." An append from a deposed leader is ignored.
    net = Network([1, 2, 3])
    for i in net.ids():
        net.load(i, [1, 2], term=5, commit=2)
    net.elect(1)
    net.propose(1, b"a")
    before = net.log_terms(1)
    stale = eraftpb.Message(msg_type=eraftpb.MsgAppend, from_=2, to=1, term=5, log_term=1,
                            index=1, entries=[eraftpb.Entry(index=2, term=5, data=b"x")])
    net.step(1, stale)
    net.stabilize()
    assert net.log_terms(1) == before == [1, 2, 6, 6]
    assert net.role(1) == StateRole.Leader and net.term(1) == 6


def test_restarted_follower_catches_up(cluster3: Network) -> None:
    # Figure 2: log[] is persistent; a follower restarted from its storage resumes and the
    # leader's AppendEntries bring it up to date.
    leader = cluster3.elect(1)
    cluster3.propose(leader, b"a")
    cluster3.crash(3)
    cluster3.propose(leader, b"b")
    cluster3.restart(3)
    assert cluster3.log_terms(3) == [1, 1]  # what was persisted before the crash
    cluster3.tick(ticks=2)
    assert cluster3.applied_data(3) == [b"a", b"b"]
