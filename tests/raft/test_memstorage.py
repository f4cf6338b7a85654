"""MemStorage: the in-memory Storage with raft-rs semantics (SPEC §1)."""
from __future__ import annotations

import pytest

from kvraft.raft import (
    CompactedError,
    LogTemporarilyUnavailableError,
    MemStorage,
    SnapshotOutOfDateError,
    SnapshotTemporarilyUnavailableError,
    UnavailableError,
    eraftpb,
)


def ents(*pairs: tuple[int, int], data: bytes = b"") -> list[eraftpb.Entry]:
    return [eraftpb.Entry(index=i, term=t, data=data) for i, t in pairs]


def store_with(*pairs: tuple[int, int]) -> MemStorage:
    store = MemStorage.new_with_conf_state(eraftpb.ConfState(voters=[1, 2, 3]))
    store.append(ents(*pairs))
    return store


def test_new_storage_is_empty_and_knows_its_founders() -> None:
    store = MemStorage.new_with_conf_state(eraftpb.ConfState(voters=[1, 2, 3]))
    assert (store.first_index(), store.last_index(), store.term(0)) == (1, 0, 0)
    state = store.initial_state()
    assert list(state.conf_state.voters) == [1, 2, 3]
    assert state.hard_state == eraftpb.HardState()
    assert state.initialized()
    assert not MemStorage().initial_state().initialized()


def test_initialize_twice_is_refused() -> None:
    store = MemStorage.new_with_conf_state(eraftpb.ConfState(voters=[1]))
    with pytest.raises(AssertionError):
        store.initialize_with_conf_state(eraftpb.ConfState(voters=[2]))


@pytest.mark.parametrize(
    ("idx", "expected"),
    [(2, CompactedError), (3, 3), (4, 4), (5, 5), (6, UnavailableError)],
)
def test_term_after_compaction(idx: int, expected: int | type) -> None:
    # Log 3..5 after compacting: the entry before the first (3) keeps its term.
    store = store_with((1, 1), (2, 2), (3, 3), (4, 4), (5, 5))
    store.compact(4)
    if isinstance(expected, type):
        with pytest.raises(expected):
            store.term(idx)
    else:
        assert store.term(idx) == expected


def test_entries_bounds_and_size_limit() -> None:
    store = store_with((1, 1), (2, 1), (3, 2), (4, 2))
    size = eraftpb.Entry(index=2, term=1).ByteSize()
    assert [e.index for e in store.entries(2, 5)] == [2, 3, 4]
    assert [e.index for e in store.entries(2, 5, max_size=2 * size)] == [2, 3]
    # At least one entry, even when it alone exceeds the limit.
    assert [e.index for e in store.entries(2, 5, max_size=0)] == [2]
    assert store.entries(3, 3) == []
    with pytest.raises(AssertionError):
        store.entries(2, 6)
    store.compact(3)
    with pytest.raises(CompactedError):
        store.entries(2, 4)


def test_append_truncates_a_conflicting_suffix() -> None:
    store = store_with((1, 1), (2, 1), (3, 1))
    store.append(ents((2, 2), (3, 2), (4, 2)))
    assert [(e.index, e.term) for e in store.entries(1, 5)] == [(1, 1), (2, 2), (3, 2), (4, 2)]
    store.append([])
    assert store.last_index() == 4


def test_append_refuses_gaps_and_compacted_indexes() -> None:
    store = store_with((1, 1), (2, 1), (3, 1))
    with pytest.raises(AssertionError):
        store.append(ents((5, 1)))
    store.compact(3)
    with pytest.raises(AssertionError):
        store.append(ents((2, 1)))


def test_compact_is_idempotent_and_bounded() -> None:
    store = store_with((1, 1), (2, 1), (3, 2))
    store.compact(3)
    assert (store.first_index(), store.last_index()) == (3, 3)
    store.compact(2)  # below the first index: nothing to do
    assert store.first_index() == 3
    with pytest.raises(AssertionError):
        store.compact(5)
    store.compact(4)  # everything: the log is empty after the dummy
    assert (store.first_index(), store.last_index(), store.term(3)) == (4, 3, 2)


def test_apply_snapshot_replaces_the_log() -> None:
    store = store_with((1, 1), (2, 1))
    snap = eraftpb.Snapshot()
    snap.metadata.index, snap.metadata.term = 5, 3
    snap.metadata.conf_state.voters.extend([1, 2])
    store.apply_snapshot(snap)
    assert (store.first_index(), store.last_index(), store.term(5)) == (6, 5, 3)
    hs = store.initial_state().hard_state
    assert (hs.term, hs.commit) == (3, 5)
    assert list(store.initial_state().conf_state.voters) == [1, 2]
    older = eraftpb.Snapshot()
    older.metadata.index, older.metadata.term = 4, 3
    with pytest.raises(SnapshotOutOfDateError):
        store.apply_snapshot(older)


def test_snapshot_is_taken_at_the_commit_index() -> None:
    store = store_with((1, 1), (2, 2), (3, 2))
    store.commit_to(2)
    store.set_conf_state(eraftpb.ConfState(voters=[1, 2, 3], learners=[4]))
    snap = store.snapshot(0, 2)
    assert (snap.metadata.index, snap.metadata.term) == (2, 2)
    assert list(snap.metadata.conf_state.learners) == [4]
    # A peer that asks for a newer snapshot gets at least that index.
    assert store.snapshot(3, 2).metadata.index == 3


def test_unavailable_hooks_fail_once() -> None:
    store = store_with((1, 1))
    store.trigger_snap_unavailable()
    with pytest.raises(SnapshotTemporarilyUnavailableError):
        store.snapshot(0, 2)
    store.snapshot(0, 2)
    store.trigger_log_unavailable()
    with pytest.raises(LogTemporarilyUnavailableError):
        store.entries(1, 2)
    assert len(store.entries(1, 2)) == 1


def test_commit_to_needs_a_held_entry() -> None:
    store = store_with((1, 1), (2, 1))
    store.commit_to(2)
    assert store.hard_state().commit == 2
    with pytest.raises(AssertionError):
        store.commit_to(3)


def test_initial_state_is_a_copy() -> None:
    store = store_with((1, 1))
    store.set_hardstate(eraftpb.HardState(term=1, vote=2, commit=1))
    state = store.initial_state()
    state.hard_state.term = 9
    assert store.initial_state().hard_state.term == 1
