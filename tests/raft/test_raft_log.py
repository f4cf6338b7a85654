"""RaftLog: Storage + Unstable, with the committed / persisted / applied positions."""
from __future__ import annotations

import pytest

from kvraft.raft import CompactedError, MemStorage, eraftpb
from kvraft.raft.raft_log import RaftLog


def ents(*pairs: tuple[int, int], data: bytes = b"") -> list[eraftpb.Entry]:
    return [eraftpb.Entry(index=i, term=t, data=data) for i, t in pairs]


def log_with(stored: list[tuple[int, int]], unstable: list[tuple[int, int]] = ()) -> RaftLog:
    store = MemStorage()
    store.append(ents(*stored))
    log = RaftLog(store)
    if unstable:
        log.append(ents(*unstable))
    return log


def terms(log: RaftLog) -> list[tuple[int, int]]:
    return [(e.index, e.term) for e in log.all_entries()]


# §3.5 Figure 7-style logs: (1,1) (2,2) (3,3).
BASE = [(1, 1), (2, 2), (3, 3)]


@pytest.mark.parametrize(
    ("new", "conflict"),
    [
        ([], 0),
        ([(1, 1), (2, 2)], 0),  # all present
        ([(2, 2), (3, 3), (4, 4), (5, 4)], 4),  # new entries start at 4
        ([(3, 3), (4, 4)], 4),
        ([(1, 4), (2, 4)], 1),  # conflict at the first
        ([(2, 1), (3, 4), (4, 4)], 2),
        ([(3, 1), (4, 2)], 3),
    ],
)
def test_find_conflict(new: list, conflict: int) -> None:
    assert log_with(BASE).find_conflict(ents(*new)) == conflict


@pytest.mark.parametrize(
    ("index", "term", "want"),
    [
        # Log terms 1 1 2 2 3 3 (indexes 1..6).
        (6, 3, (6, 3)),
        (6, 2, (4, 2)),  # skips every entry of term 3 at once
        (6, 1, (2, 1)),
        (6, 0, (0, 0)),
        (9, 3, (9, None)),  # past our log
    ],
)
def test_find_conflict_by_term(index: int, term: int, want: tuple) -> None:
    log = log_with([(1, 1), (2, 1), (3, 2), (4, 2), (5, 3), (6, 3)])
    assert log.find_conflict_by_term(index, term) == want


def test_find_conflict_by_term_runs_past_the_compacted_part() -> None:
    # Before the first index - 1 terms read as 0, which is <= any term: the search ends.
    store = MemStorage()
    store.append(ents((1, 1), (2, 2), (3, 3), (4, 3)))
    store.compact(3)
    log = RaftLog(store)
    assert log.find_conflict_by_term(4, 1) == (1, 0)


def test_maybe_append_appends_after_a_match() -> None:
    log = log_with(BASE)
    assert log.maybe_append(3, 3, 4, ents((4, 4), (5, 4))) == (4, 5)
    assert log.committed == 4
    assert log.last_index() == 5


def test_maybe_append_rejects_a_mismatch() -> None:
    # §3.5: "If the follower does not find an entry in its log with the same index and
    # term, then it refuses the new entries."
    log = log_with(BASE)
    assert log.maybe_append(3, 2, 3, ents((4, 4))) is None
    assert log.maybe_append(4, 3, 3, ents((5, 4))) is None
    assert log.committed == 0


def test_maybe_append_truncates_a_conflict_and_the_persisted_mark() -> None:
    log = log_with(BASE)
    assert log.persisted == 3
    assert log.maybe_append(1, 1, 2, ents((2, 4), (3, 4))) == (2, 3)
    assert terms(log) == [(1, 1), (2, 4), (3, 4)]
    assert log.persisted == 1
    # Commit never passes what the leader says matches.
    assert log.committed == 2


def test_maybe_append_never_truncates_committed_entries() -> None:
    log = log_with(BASE)
    log.commit_to(3)
    with pytest.raises(AssertionError):
        log.maybe_append(1, 1, 3, ents((2, 4)))


def test_maybe_append_duplicate_changes_nothing() -> None:
    log = log_with(BASE)
    assert log.maybe_append(0, 0, 0, ents(*BASE)) == (0, 3)
    assert log.unstable_entries() == []


def test_commit_to_never_decreases_and_stays_within_the_log() -> None:
    log = log_with(BASE)
    log.commit_to(2)
    log.commit_to(1)
    assert log.committed == 2
    with pytest.raises(AssertionError):
        log.commit_to(4)


def test_maybe_commit_only_counts_the_given_term() -> None:
    # §3.6.2: a leader commits by counting replicas only for entries of its term.
    log = log_with(BASE)
    assert not log.maybe_commit(2, 3)
    assert log.maybe_commit(3, 3)
    assert log.committed == 3
    assert not log.maybe_commit(3, 3)


def test_applied_to_bounds() -> None:
    log = log_with(BASE)
    log.commit_to(2)
    log.applied_to(2)
    assert log.applied == 2
    log.applied_to(0)  # ignored
    with pytest.raises(AssertionError):
        log.applied_to(3)  # not committed
    with pytest.raises(AssertionError):
        log.applied_to(1)  # backwards


@pytest.mark.parametrize(
    ("last_index", "term", "ok"),
    [(2, 4, True), (3, 4, True), (4, 4, True), (2, 2, False), (3, 3, True), (2, 3, False),
     (4, 3, True)],
)
def test_is_up_to_date(last_index: int, term: int, ok: bool) -> None:
    # §3.6.1: compare the last terms; with equal terms, the longer log is more up to date.
    assert log_with(BASE).is_up_to_date(last_index, term) is ok


def test_term_outside_the_log_is_zero() -> None:
    log = log_with(BASE, [(4, 4)])
    assert (log.term(0), log.term(4), log.term(5)) == (0, 4, 0)
    assert log.last_term() == 4


def test_next_entries_wait_for_commit_and_persistence() -> None:
    # §10.2.1: an entry is applied only once committed AND durable locally.
    log = log_with(BASE, [(4, 4), (5, 4)])
    assert not log.has_next_entries()
    log.commit_to(5)
    assert [e.index for e in log.next_entries()] == [1, 2, 3]
    log.unstable.accept_in_progress()  # handed out in a Ready, being written
    assert not log.maybe_persist(5, 3)  # not the entry the log holds
    log.store.append(ents((4, 4), (5, 4)))
    assert log.maybe_persist(5, 4)
    assert log.unstable_entries() == [] and log.unstable.offset == 6
    assert not log.maybe_persist(5, 4)  # already durable
    assert [e.index for e in log.next_entries()] == [1, 2, 3, 4, 5]
    log.applied_to(3)
    assert [e.index for e in log.next_entries()] == [4, 5]
    assert [e.index for e in log.next_entries_since(4)] == [5]


def test_next_entries_honour_the_size_limit() -> None:
    log = log_with([(1, 1), (2, 1), (3, 1)])
    log.commit_to(3)
    one = eraftpb.Entry(index=1, term=1).ByteSize()
    assert [e.index for e in log.next_entries(max_size=one)] == [1]
    assert [e.index for e in log.next_entries(max_size=0)] == [1]


def test_slice_spans_storage_and_unstable() -> None:
    log = log_with(BASE, [(4, 4), (5, 4)])
    assert [e.index for e in log.slice(2, 6)] == [2, 3, 4, 5]
    one = eraftpb.Entry(index=2, term=2).ByteSize()
    assert [e.index for e in log.slice(2, 6, 2 * one)] == [2, 3]
    assert [e.index for e in log.slice(3, 6, 2 * one)] == [3, 4]
    assert [e.index for e in log.slice(4, 6, 0)] == [4]
    assert log.slice(3, 3) == []
    with pytest.raises(AssertionError):
        log.slice(2, 7)


def test_slice_of_compacted_entries_raises() -> None:
    log = log_with(BASE)
    log.store.compact(3)
    with pytest.raises(CompactedError):
        log.slice(1, 3)


def test_maybe_persist_ignores_replaced_entries() -> None:
    # Entries 4, 5 (term 4) were handed out for writing, then replaced from 5 by a new
    # leader's entry: the write of (5, 4) does not cover what the log now holds.
    log = log_with(BASE, [(4, 4), (5, 4)])
    log.unstable.accept_in_progress()
    log.append(ents((5, 5)))
    assert log.unstable.offset_in_progress == 5
    assert not log.maybe_persist(5, 4)
    assert log.persisted == 3
    assert log.maybe_persist(4, 4)
    assert [e.index for e in log.unstable_entries()] == [5]


def test_restore_replaces_the_log_with_a_snapshot() -> None:
    log = log_with(BASE)
    log.commit_to(2)
    snap = eraftpb.Snapshot()
    snap.metadata.index, snap.metadata.term = 10, 5
    log.restore(snap)
    assert (log.committed, log.first_index(), log.last_index(), log.term(10)) == (10, 11, 10, 5)
    assert log.persisted == 3
    assert log.snapshot(10, 2) is snap
    log.unstable.accept_in_progress()
    log.store.apply_snapshot(snap)
    assert log.maybe_persist_snap(10)
    assert not log.maybe_persist_snap(10)
    assert log.persisted == 10 and log.unstable_snapshot() is None


def test_restore_below_commit_is_refused() -> None:
    log = log_with(BASE)
    log.commit_to(3)
    snap = eraftpb.Snapshot()
    snap.metadata.index, snap.metadata.term = 2, 2
    with pytest.raises(AssertionError):
        log.restore(snap)
