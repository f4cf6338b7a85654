"""Flow control: the bounded window of in-flight appends to one follower."""

from __future__ import annotations

import pytest

from kvraft.raft.tracker import Inflights


def filled(cap: int, indexes: list[int], freed_to: int | None = None) -> Inflights:
    ins = Inflights(cap)
    for index in indexes:
        ins.add(index)
    if freed_to is not None:
        ins.free_to(freed_to)
    return ins


def test_add_until_full():
    ins = Inflights(3)
    assert ins.count() == 0 and not ins.full()
    for expected_count, index in enumerate([5, 7, 9], start=1):
        ins.add(index)
        assert ins.count() == expected_count
    assert ins.full()
    assert ins.indexes() == [5, 7, 9]


def test_add_beyond_cap_is_an_invariant_violation():
    ins = filled(2, [1, 2])
    with pytest.raises(AssertionError, match="full"):
        ins.add(3)


@pytest.mark.parametrize("index", [4, 3])
def test_add_must_be_increasing(index):
    ins = filled(4, [2, 4])
    with pytest.raises(AssertionError, match="must grow"):
        ins.add(index)


def test_add_must_be_increasing_across_the_wrap():
    ins = filled(3, [1, 2, 3], freed_to=2)   # start at slot 2, newest at slot 2
    ins.add(4)                                # wraps to slot 0
    with pytest.raises(AssertionError, match="must grow"):
        ins.add(4)


def test_capacity_must_be_positive():
    with pytest.raises(AssertionError):
        Inflights(0)


# (cap, added, free_to, remaining)
FREE_TO = [
    (10, list(range(10)), 4, [5, 6, 7, 8, 9]),
    (10, list(range(10)), -1, list(range(10))),   # below the oldest: nothing freed
    (10, list(range(10)), 9, []),
    (10, list(range(10)), 100, []),
    (10, [10, 20, 30], 25, [30]),                  # frees by index, not by count
    (10, [10, 20, 30], 19, [20, 30]),
    (10, [], 5, []),
]


@pytest.mark.parametrize(("cap", "added", "to", "remaining"), FREE_TO)
def test_free_to(cap, added, to, remaining):
    ins = filled(cap, added)
    ins.free_to(to)
    assert ins.indexes() == remaining
    assert ins.count() == len(remaining)


def test_ring_wraps_around():
    """Slots are reused once freed: the window never allocates beyond cap."""
    ins = filled(10, list(range(10)), freed_to=4)      # 5..9 remain, start at slot 5
    for index in range(10, 15):                        # wraps into slots 0..4
        ins.add(index)
    assert ins.full()
    assert ins.indexes() == list(range(5, 15))
    ins.free_to(8)
    assert ins.indexes() == list(range(9, 15))
    ins.free_to(12)                                    # frees across the wrap
    assert ins.indexes() == [13, 14]
    assert len(ins._buffer) == 10
    ins.free_to(14)
    assert ins.count() == 0
    # An emptied window restarts at slot 0.
    assert ins._start == 0


def test_free_first_one():
    ins = filled(10, [3, 6, 9])
    ins.free_first_one()
    assert ins.indexes() == [6, 9]
    ins.free_first_one()
    ins.free_first_one()
    assert ins.count() == 0
    ins.free_first_one()  # empty: no-op
    assert ins.count() == 0


def test_reset():
    ins = filled(3, [1, 2, 3])
    ins.reset()
    assert ins.count() == 0 and not ins.full()
    ins.add(1)  # after a reset the order starts over
    assert ins.indexes() == [1]


def test_repr_shows_contents():
    assert repr(filled(4, [1, 2])) == "Inflights(count=2, cap=4, indexes=[1, 2])"
