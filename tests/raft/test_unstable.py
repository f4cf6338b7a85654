"""Unstable: the not-yet-durable tail of the log."""
from __future__ import annotations

import pytest

from kvraft.raft import eraftpb
from kvraft.raft.log_unstable import Unstable


def ents(*pairs: tuple[int, int]) -> list[eraftpb.Entry]:
    return [eraftpb.Entry(index=i, term=t) for i, t in pairs]


def snapshot(index: int, term: int) -> eraftpb.Snapshot:
    snap = eraftpb.Snapshot()
    snap.metadata.index, snap.metadata.term = index, term
    return snap


def unstable(offset: int, entries: list[eraftpb.Entry], snap: eraftpb.Snapshot | None = None
             ) -> Unstable:
    u = Unstable(offset)
    u.entries = list(entries)
    u.snapshot = snap
    return u


@pytest.mark.parametrize(
    ("u", "first", "last"),
    [
        (unstable(5, ents((5, 1))), None, 5),
        (unstable(5, []), None, None),
        (unstable(5, ents((5, 1)), snapshot(4, 1)), 5, 5),
        (unstable(5, [], snapshot(4, 1)), 5, 4),
    ],
)
def test_first_and_last_index(u: Unstable, first: int | None, last: int | None) -> None:
    assert u.maybe_first_index() == first
    assert u.maybe_last_index() == last


@pytest.mark.parametrize(
    ("u", "idx", "term"),
    [
        (unstable(5, ents((5, 1))), 5, 1),
        (unstable(5, ents((5, 1))), 6, None),
        (unstable(5, ents((5, 1))), 4, None),
        (unstable(5, ents((5, 1)), snapshot(4, 1)), 4, 1),
        (unstable(5, ents((5, 1)), snapshot(4, 1)), 3, None),
        (unstable(5, [], snapshot(4, 1)), 5, None),
    ],
)
def test_maybe_term(u: Unstable, idx: int, term: int | None) -> None:
    assert u.maybe_term(idx) == term


def test_entries_stay_until_durable() -> None:
    u = unstable(5, ents((5, 1), (6, 1)))
    assert [e.index for e in u.next_entries()] == [5, 6]
    u.accept_in_progress()
    assert u.next_entries() == [] and not u.has_next_entries()
    assert u.maybe_term(6) == 1  # still readable while being written
    u.truncate_and_append(ents((7, 1)))
    assert [e.index for e in u.next_entries()] == [7]
    assert u.stable_entries(6, 1)
    assert (u.offset, [e.index for e in u.entries]) == (7, [7])
    assert not u.stable_entries(6, 1)  # already dropped
    assert not u.stable_entries(7, 2)  # not the entry we hold
    assert u.stable_entries(7, 1)
    assert (u.offset, u.entries, u.offset_in_progress) == (8, [], 8)


def test_stable_snap_and_restore() -> None:
    u = unstable(5, ents((5, 1)))
    u.restore(snapshot(8, 2))
    assert (u.offset, u.entries, u.snapshot.metadata.index) == (9, [], 8)
    assert u.next_snapshot() is u.snapshot
    u.accept_in_progress()
    assert u.next_snapshot() is None and u.snapshot is not None
    u.stable_snap(7)  # not ours: ignored
    assert u.snapshot is not None
    u.stable_snap(8)
    assert u.snapshot is None


@pytest.mark.parametrize(
    ("offset", "held", "new", "want_offset", "want"),
    [
        # contiguous append
        (5, [(5, 1)], [(6, 1), (7, 1)], 5, [(5, 1), (6, 1), (7, 1)]),
        # replace everything unstable
        (5, [(5, 1)], [(5, 2), (6, 2)], 5, [(5, 2), (6, 2)]),
        (5, [(5, 1)], [(4, 2), (5, 2), (6, 2)], 4, [(4, 2), (5, 2), (6, 2)]),
        # truncate within the unstable part, then append
        (5, [(5, 1), (6, 1), (7, 1)], [(6, 2)], 5, [(5, 1), (6, 2)]),
        (5, [(5, 1), (6, 1), (7, 1)], [(7, 2), (8, 2)], 5, [(5, 1), (6, 1), (7, 2), (8, 2)]),
    ],
)
def test_truncate_and_append(offset: int, held: list, new: list, want_offset: int,
                             want: list) -> None:
    u = unstable(offset, ents(*held))
    u.truncate_and_append(ents(*new))
    assert u.offset == want_offset
    assert [(e.index, e.term) for e in u.entries] == want


def test_slice_checks_bounds() -> None:
    u = unstable(5, ents((5, 1), (6, 1), (7, 1)))
    assert [e.index for e in u.slice(6, 8)] == [6, 7]
    with pytest.raises(AssertionError):
        u.slice(4, 6)
    with pytest.raises(AssertionError):
        u.slice(6, 9)
