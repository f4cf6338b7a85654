"""etcd's revision rules, key by key: one store revision that each write entry raises
by one; per key create_revision, mod_revision, version; deletions as tombstones that
end a generation; Put's prev_kv / ignore_value / ignore_lease; DeleteRange's ranges."""
from __future__ import annotations

import pytest

from kvraft.storage.mvcc import (
    DeleteRangeRequest,
    EmptyKeyError,
    KeyNotFoundError,
    KeyValue,
    LeaseProvidedError,
    MVCCStore,
    PutRequest,
    RangeRequest,
    StatusCode,
    ValueProvidedError,
)
from tests.storage.mvcc.conftest import Opened
from tests.storage.mvcc.helpers import delete, get, keys, put


def test_an_empty_store_is_at_revision_1_and_the_first_write_gets_2(store: MVCCStore) -> None:
    assert store.revision == 1
    assert store.range(RangeRequest(b"a")).revision == 1
    assert put(store, b"a") == 2
    assert store.revision == 2


def test_versions_count_the_puts_of_one_generation(store: MVCCStore) -> None:
    put(store, b"a", b"1")
    put(store, b"b", b"x")
    put(store, b"a", b"2")
    assert get(store, b"a") == KeyValue(b"a", create_revision=2, mod_revision=4, version=2,
                                        value=b"2")


def test_a_delete_ends_the_generation_and_a_later_put_starts_a_new_one(
        store: MVCCStore) -> None:
    put(store, b"a", b"1")          # 2
    put(store, b"a", b"2")          # 3
    assert delete(store, b"a") == 1  # 4: the tombstone
    assert get(store, b"a") is None
    put(store, b"a", b"3")          # 5
    assert get(store, b"a") == KeyValue(b"a", 5, 5, 1, b"3")
    assert get(store, b"a", rev=4) is None
    assert get(store, b"a", rev=3) == KeyValue(b"a", 2, 3, 2, b"2")


def test_a_delete_of_nothing_does_not_raise_the_revision(store: MVCCStore) -> None:
    put(store, b"a")
    resp = store.delete_range(DeleteRangeRequest(b"zz"))
    assert (resp.deleted, resp.revision, store.revision) == (0, 2, 2)


def test_put_prev_kv_is_the_key_before_and_none_for_a_new_key(store: MVCCStore) -> None:
    assert store.put(PutRequest(b"a", b"1", prev_kv=True)).prev_kv is None
    resp = store.put(PutRequest(b"a", b"2", prev_kv=True))
    assert resp == type(resp)(3, KeyValue(b"a", 2, 2, 1, b"1"))
    delete(store, b"a")
    assert store.put(PutRequest(b"a", b"3", prev_kv=True)).prev_kv is None


def test_ignore_value_keeps_the_value_and_ignore_lease_keeps_the_lease(
        store: MVCCStore) -> None:
    put(store, b"a", b"1", lease=7)
    store.put(PutRequest(b"a", ignore_value=True, lease=8))
    assert get(store, b"a") == KeyValue(b"a", 2, 3, 2, b"1", lease=8)
    store.put(PutRequest(b"a", b"2", ignore_lease=True))
    assert get(store, b"a") == KeyValue(b"a", 2, 4, 3, b"2", lease=8)


@pytest.mark.parametrize("flag", ["ignore_value", "ignore_lease"])
def test_ignore_flags_on_a_missing_key_are_key_not_found(store: MVCCStore, flag: str) -> None:
    put(store, b"gone")
    delete(store, b"gone")
    for key in (b"never", b"gone"):
        with pytest.raises(KeyNotFoundError) as e:
            store.put(PutRequest(key, **{flag: True}))  # type: ignore[arg-type]
        assert str(e.value) == "etcdserver: key not found"
        assert e.value.code is StatusCode.INVALID_ARGUMENT
    assert store.revision == 3  # nothing written


@pytest.mark.parametrize(("req", "error", "message"), [
    (PutRequest(b""), EmptyKeyError, "etcdserver: key is not provided"),
    (PutRequest(b"a", b"v", ignore_value=True), ValueProvidedError,
     "etcdserver: value is provided"),
    (PutRequest(b"a", lease=3, ignore_lease=True), LeaseProvidedError,
     "etcdserver: lease is provided"),
])
def test_bad_puts_are_refused_with_etcds_message(store: MVCCStore, req: PutRequest,
                                                 error: type[Exception], message: str) -> None:
    put(store, b"a")
    with pytest.raises(error) as e:
        store.put(req)
    assert str(e.value) == message
    assert store.revision == 2


@pytest.mark.parametrize(("start", "end", "deleted"), [
    (b"b", b"", [b"b"]),                                  # "": the key alone
    (b"b", b"\x00", [b"b", b"b\x00", b"ba", b"c"]),        # "\0": every key >= key
    (b"\x00", b"\x00", [b"a", b"b", b"b\x00", b"ba", b"c"]),
    (b"a", b"ba", [b"a", b"b", b"b\x00"]),                # [key, range_end)
    (b"b", b"b", []),                                     # range_end <= key: nothing
    (b"c", b"a", []),
    (b"bb", b"", []),
])
def test_delete_range_covers_etcds_ranges(store: MVCCStore, start: bytes, end: bytes,
                                          deleted: list[bytes]) -> None:
    every = [b"a", b"b", b"b\x00", b"ba", b"c"]
    for k in every:
        put(store, k)
    resp = store.delete_range(DeleteRangeRequest(start, end, prev_kv=True))
    assert [kv.key for kv in resp.prev_kvs] == deleted
    assert resp.deleted == len(deleted)
    assert keys(store) == [k for k in every if k not in deleted]
    assert resp.revision == (7 if deleted else 6)


def test_a_delete_range_is_one_revision_with_a_sub_revision_per_key(store: MVCCStore) -> None:
    for k in (b"a", b"b", b"c"):
        put(store, k)
    store.delete_range(DeleteRangeRequest(b"a", b"\x00"))
    events = list(store.events(b"a", b"\x00", 5))
    assert [(e.type.name, e.kv.key, e.kv.mod_revision) for e in events] == [
        ("DELETE", b"a", 5), ("DELETE", b"b", 5), ("DELETE", b"c", 5)]


def test_keys_that_differ_by_a_nul_byte_keep_separate_histories(opened: Opened) -> None:
    """layout.py's escaping: "a" and "a\\0" must not share history records."""
    store = opened.store
    for i in range(3):
        put(store, b"a", b"a%d" % i)          # 2, 4, 6
        put(store, b"a\x00", b"n%d" % i)      # 3, 5, 7
    put(store, b"a\x00\x00", b"z")            # 8
    store = opened.reopen()
    for rev in range(2, 9):
        a, n = get(store, b"a", rev), get(store, b"a\x00", rev)
        assert a is not None and a.value == b"a%d" % min((rev - 2) // 2, 2)
        assert (n is None) if rev == 2 else (n is not None and n.value == b"n%d" % ((rev - 3) // 2))
    assert keys(store, b"a", b"b", rev=5) == [b"a", b"a\x00"]
