"""The history a watch replays (revision order, filters by range, prev_kv as etcd's
watch reads it) and the lease index (keys of a lease, kept right through overwrites,
ignore_lease, deletes and a lease's deletion of its keys)."""
from __future__ import annotations

import pytest

from kvraft.storage.mvcc import (
    CompactedError,
    EventType,
    KeyValue,
    LeaseNotFoundError,
    MVCCStore,
    PutRequest,
    StatusCode,
    TxnRequest,
)
from tests.storage.mvcc.conftest import Opened
from tests.storage.mvcc.helpers import delete, keys, put


def test_events_come_in_revision_order_with_prev_kv(store: MVCCStore) -> None:
    put(store, b"a", b"1")                                       # 2
    store.txn(TxnRequest([], [PutRequest(b"b", b"1"), PutRequest(b"a", b"2")]))  # 3
    delete(store, b"a")                                          # 4
    put(store, b"a", b"3")                                       # 5
    got = [(e.type, e.kv, e.prev_kv) for e in store.events(b"a", b"c", 2, prev_kv=True)]
    assert got == [
        (EventType.PUT, KeyValue(b"a", 2, 2, 1, b"1"), None),
        (EventType.PUT, KeyValue(b"b", 3, 3, 1, b"1"), None),
        (EventType.PUT, KeyValue(b"a", 2, 3, 2, b"2"), KeyValue(b"a", 2, 2, 1, b"1")),
        (EventType.DELETE, KeyValue(b"a", mod_revision=4), KeyValue(b"a", 2, 3, 2, b"2")),
        (EventType.PUT, KeyValue(b"a", 5, 5, 1, b"3"), None),    # after a delete: none
    ]


def test_events_filter_by_range_start_and_stop(store: MVCCStore) -> None:
    for k in (b"a", b"b", b"c", b"b"):
        put(store, k)                                            # 2..5
    assert [e.kv.mod_revision for e in store.events(b"b", b"", 0)] == []  # 0: from now on
    assert [e.kv.mod_revision for e in store.events(b"b", b"", 1)] == [3, 5]
    assert [e.kv.mod_revision for e in store.events(b"b", b"\x00", 4)] == [4, 5]
    assert [e.kv.mod_revision for e in store.events(b"a", b"\x00", 3, stop_revision=5)] == [3, 4]


def test_events_below_the_compact_revision_are_refused_with_it(store: MVCCStore) -> None:
    for _ in range(4):
        put(store, b"a")                                         # 2..5
    store.compact(4)
    with pytest.raises(CompactedError) as e:
        store.events(b"a", b"", 3)
    assert e.value.compact_revision == 4 and e.value.code is StatusCode.OUT_OF_RANGE
    # from the compact revision on: all held; prev_kv of the event AT it is compacted
    events = list(store.events(b"a", b"", 4, prev_kv=True))
    assert [(e.kv.mod_revision, e.prev_kv is not None) for e in events] == [(4, False),
                                                                           (5, True)]


def test_the_lease_index_follows_every_write(opened: Opened) -> None:
    store = opened.store
    put(store, b"a", lease=1)
    put(store, b"b", lease=1)
    put(store, b"c", lease=2)
    put(store, b"b", lease=2)                      # moves b to lease 2
    store.put(PutRequest(b"c", b"new", ignore_lease=True))   # stays on 2
    put(store, b"d", lease=1)
    delete(store, b"d")
    store = opened.reopen()
    assert store.keys_with_lease(1, limit=10) == [b"a"]
    assert store.keys_with_lease(2, limit=10) == [b"b", b"c"]
    assert store.keys_with_lease(2, limit=1) == [b"b"]       # paged
    assert store.keys_with_lease(2, limit=1, after=b"b") == [b"c"]
    assert store.keys_with_lease(2, limit=1, after=b"c") == []
    assert store.keys_with_lease(-1, limit=10) == []


def test_deleting_a_leases_keys_is_one_revision(store: MVCCStore) -> None:
    for k in (b"a", b"b", b"c"):
        put(store, k, lease=7)
    put(store, b"x")
    resp = store.delete_keys_with_lease(7)
    assert (resp.deleted, resp.revision, store.revision) == (3, 6, 6)
    assert keys(store) == [b"x"] and store.keys_with_lease(7, limit=10) == []
    assert store.delete_keys_with_lease(7).revision == 6    # nothing left: no revision


def test_a_put_with_an_unknown_lease_is_refused_when_a_lessor_is_given(
        opened: Opened) -> None:
    store = MVCCStore(opened.db, lease_exists=lambda lease: lease == 5, sync=False)
    put(store, b"a", lease=5)
    for req in (PutRequest(b"b", lease=6),
                TxnRequest([], [PutRequest(b"c"), PutRequest(b"d", lease=6)])):
        with pytest.raises(LeaseNotFoundError) as e:
            store.put(req) if isinstance(req, PutRequest) else store.txn(req)
        assert str(e.value) == "etcdserver: requested lease not found"
        assert e.value.code is StatusCode.NOT_FOUND
    assert keys(store) == [b"a"] and store.revision == 2
