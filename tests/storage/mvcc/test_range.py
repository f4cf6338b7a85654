"""etcd's Range: at any revision not compacted; limit, count and more as etcd reports
them; keys_only and count_only; the min/max revision filters; every sort target and
order; and the bounds that keep a range's memory within configuration."""
from __future__ import annotations

import pytest

from kvraft.storage.mvcc import (
    CompactedError,
    FutureRevisionError,
    InvalidSortOptionError,
    KeyValue,
    MVCCStore,
    RangeLimits,
    RangeRequest,
    RangeTooLargeError,
    SortOrder,
    SortTarget,
    StatusCode,
)
from tests.storage.mvcc.conftest import Opened
from tests.storage.mvcc.helpers import delete, get, keys, put


@pytest.fixture
def five(store: MVCCStore) -> MVCCStore:
    """e@2 d@3 c@4 b@5 a@6, then c again @7 (version 2) and a's value made smallest."""
    for i, k in enumerate([b"e", b"d", b"c", b"b", b"a"]):
        put(store, k, bytes([ord("z") - i]))
    put(store, b"c", b"0")
    return store


def test_a_read_at_a_past_revision_sees_that_revision(five: MVCCStore) -> None:
    assert keys(five, rev=3) == [b"d", b"e"]
    assert get(five, b"c", rev=6) == KeyValue(b"c", 4, 4, 1, b"x")
    assert get(five, b"c", rev=7) == KeyValue(b"c", 4, 7, 2, b"0")


def test_the_header_revision_is_the_current_one_also_for_a_past_read(five: MVCCStore) -> None:
    assert five.range(RangeRequest(b"a", revision=3)).revision == 7


def test_a_future_revision_is_refused(five: MVCCStore) -> None:
    with pytest.raises(FutureRevisionError) as e:
        five.range(RangeRequest(b"a", revision=8))
    assert str(e.value) == "etcdserver: mvcc: required revision is a future revision"
    assert e.value.code is StatusCode.OUT_OF_RANGE


def test_below_the_compact_revision_is_refused_and_at_it_is_served(five: MVCCStore) -> None:
    five.compact(4)
    with pytest.raises(CompactedError) as e:
        five.range(RangeRequest(b"a", b"\x00", revision=3))
    assert str(e.value) == "etcdserver: mvcc: required revision has been compacted"
    assert e.value.code is StatusCode.OUT_OF_RANGE and e.value.compact_revision == 4
    assert keys(five, rev=4) == [b"c", b"d", b"e"]


def test_limit_more_and_count(five: MVCCStore) -> None:
    resp = five.range(RangeRequest(b"a", b"\x00", limit=2))
    assert ([kv.key for kv in resp.kvs], resp.more, resp.count) == ([b"a", b"b"], True, 5)
    resp = five.range(RangeRequest(b"a", b"\x00", limit=5))
    assert (len(resp.kvs), resp.more, resp.count) == (5, False, 5)
    resp = five.range(RangeRequest(b"a", b"\x00", limit=-1))  # <= 0: no limit
    assert (len(resp.kvs), resp.more) == (5, False)


def test_count_ignores_the_filters_and_more_counts_what_passed_them(five: MVCCStore) -> None:
    """etcd prunes the filtered keys after counting: count is the range's, more says
    that filtered-in keys were left out by the limit."""
    resp = five.range(RangeRequest(b"a", b"\x00", min_mod_revision=5, limit=1))
    assert ([kv.key for kv in resp.kvs], resp.more, resp.count) == ([b"a"], True, 5)
    resp = five.range(RangeRequest(b"a", b"\x00", min_mod_revision=5, limit=3))
    assert ([kv.key for kv in resp.kvs], resp.more) == ([b"a", b"b", b"c"], False)


@pytest.mark.parametrize(("field", "bound", "want"), [
    ("min_mod_revision", 5, [b"a", b"b", b"c"]),
    ("max_mod_revision", 4, [b"d", b"e"]),
    ("min_create_revision", 4, [b"a", b"b", b"c"]),
    ("max_create_revision", 4, [b"c", b"d", b"e"]),
])
def test_revision_filters(five: MVCCStore, field: str, bound: int, want: list[bytes]) -> None:
    assert keys(five, **{field: bound}) == want


def test_keys_only_and_count_only(five: MVCCStore) -> None:
    resp = five.range(RangeRequest(b"c", keys_only=True))
    assert resp.kvs == [KeyValue(b"c", 4, 7, 2, b"")]
    resp = five.range(RangeRequest(b"a", b"\x00", count_only=True, limit=1))
    assert (list(resp.kvs), resp.more, resp.count) == ([], False, 5)


@pytest.mark.parametrize(("target", "order", "want"), [
    (SortTarget.KEY, SortOrder.NONE, [b"a", b"b", b"c", b"d", b"e"]),
    (SortTarget.KEY, SortOrder.ASCEND, [b"a", b"b", b"c", b"d", b"e"]),
    (SortTarget.KEY, SortOrder.DESCEND, [b"e", b"d", b"c", b"b", b"a"]),
    # any other target with NONE sorts ascending (etcd's default)
    (SortTarget.CREATE, SortOrder.NONE, [b"e", b"d", b"c", b"b", b"a"]),
    (SortTarget.CREATE, SortOrder.DESCEND, [b"a", b"b", b"c", b"d", b"e"]),
    (SortTarget.MOD, SortOrder.ASCEND, [b"e", b"d", b"b", b"a", b"c"]),
    (SortTarget.MOD, SortOrder.DESCEND, [b"c", b"a", b"b", b"d", b"e"]),
    (SortTarget.VALUE, SortOrder.ASCEND, [b"c", b"a", b"b", b"d", b"e"]),
    # ties (version 1) by key; descending is the exact reverse of ascending
    (SortTarget.VERSION, SortOrder.ASCEND, [b"a", b"b", b"d", b"e", b"c"]),
    (SortTarget.VERSION, SortOrder.DESCEND, [b"c", b"e", b"d", b"b", b"a"]),
])
def test_sort(five: MVCCStore, target: SortTarget, order: SortOrder, want: list[bytes]) -> None:
    assert keys(five, sort_target=target, sort_order=order) == want
    for limit in (1, 2, 4):  # a limit keeps the first `limit` of the sorted result
        resp = five.range(RangeRequest(b"a", b"\x00", sort_target=target, sort_order=order,
                                       limit=limit))
        assert ([kv.key for kv in resp.kvs], resp.more) == (want[:limit], True)


@pytest.mark.parametrize(("order", "target"), [(3, 0), (0, 5), (-1, 0)])
def test_an_unknown_sort_option_is_refused(five: MVCCStore, order: int, target: int) -> None:
    with pytest.raises(InvalidSortOptionError) as e:
        five.range(RangeRequest(b"a", sort_order=order, sort_target=target))
    assert str(e.value) == "etcdserver: invalid sort option"


def test_a_range_over_its_bound_is_refused_but_a_limit_within_it_is_served(
        opened: Opened) -> None:
    """Memory: without a limit a range holds its whole result, which the bound caps; a
    sorted range with a limit holds only `limit` entries, so it is served however many
    keys the range covers."""
    db = opened.db
    store = type(opened.store)(db, range_limits=RangeLimits(entries_max=3, bytes_max=1 << 20),
                               sync=False)
    for i in range(50):
        put(store, b"k%02d" % i, b"v")
    with pytest.raises(RangeTooLargeError) as e:
        store.range(RangeRequest(b"k", b"l"))
    assert e.value.code is StatusCode.RESOURCE_EXHAUSTED and "use a limit" in str(e.value)
    for target, order in [(SortTarget.KEY, SortOrder.NONE), (SortTarget.KEY, SortOrder.DESCEND),
                          (SortTarget.MOD, SortOrder.DESCEND),
                          (SortTarget.VALUE, SortOrder.ASCEND)]:
        resp = store.range(RangeRequest(b"k", b"l", limit=3, sort_target=target,
                                        sort_order=order))
        assert (len(resp.kvs), resp.count, resp.more) == (3, 50, True)
    resp = store.range(RangeRequest(b"k", b"l", count_only=True))
    assert resp.count == 50
    small = type(opened.store)(db, range_limits=RangeLimits(bytes_max=200), sync=False)
    with pytest.raises(RangeTooLargeError):
        small.range(RangeRequest(b"k", b"l", limit=10))


def test_past_reads_seek_through_long_histories(opened: Opened) -> None:
    """A key rewritten many times after the read revision, between keys that were not:
    the history cursor must step or reopen to each key's version at the revision."""
    store = opened.store
    for k in (b"a", b"b", b"c"):
        put(store, k, b"0")              # 2, 3, 4
    for i in range(1, 60):
        put(store, b"b", b"%d" % i)      # 5 .. 63
        if i % 20 == 0:
            put(store, b"a", b"a%d" % i)
    store = opened.reopen()
    resp = store.range(RangeRequest(b"a", b"\x00", revision=4))
    assert [(kv.key, kv.value) for kv in resp.kvs] == [(b"a", b"0"), (b"b", b"0"), (b"c", b"0")]
    at_30 = store.range(RangeRequest(b"a", b"\x00", revision=30)).kvs
    assert [(kv.key, kv.value) for kv in at_30] == [(b"a", b"a20"), (b"b", b"25"), (b"c", b"0")]
    delete(store, b"b")
    assert keys(store, rev=30) == [b"a", b"b", b"c"]
    assert keys(store) == [b"a", b"c"]
