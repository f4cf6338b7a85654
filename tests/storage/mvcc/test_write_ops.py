"""`write_ops`: kvraft's own batch command as one MVCC entry — puts and deletes in
order at one revision, a key possibly written several times (which a Txn refuses):
each write gets its sub-revision and event, the version counts each, reads at that
revision see the last, and compaction removes the superseded ones."""
from __future__ import annotations

import pytest

from kvraft.storage.mvcc import (
    DeleteRangeRequest,
    EmptyKeyError,
    KeyNotFoundError,
    KeyValue,
    PutRequest,
    RangeRequest,
)
from tests.storage.mvcc.conftest import Opened
from tests.storage.mvcc.helpers import get, keys, put
from tests.storage.mvcc.layout_check import check_layout


def test_a_key_written_several_times_in_one_batch(opened: Opened) -> None:
    store = opened.store
    put(store, b"a", b"0")                                   # 2
    out = store.write_ops([PutRequest(b"a", b"1"), PutRequest(b"b", b"x"),
                           PutRequest(b"a", b"2", prev_kv=True),
                           DeleteRangeRequest(b"b"), PutRequest(b"b", b"y")])   # 3
    assert [r.revision for r in out] == [3] * 5
    assert out[2].prev_kv == KeyValue(b"a", 2, 3, 2, b"1")   # type: ignore[union-attr]
    assert store.revision == 3
    assert get(store, b"a") == KeyValue(b"a", 2, 3, 3, b"2")
    assert get(store, b"b") == KeyValue(b"b", 3, 3, 1, b"y")  # a new generation
    assert get(store, b"a", rev=2) == KeyValue(b"a", 2, 2, 1, b"0")
    assert keys(store, rev=2) == [b"a"]
    events = [(e.type.name, e.kv.key, e.kv.value) for e in store.events(b"a", b"c", 3)]
    assert events == [("PUT", b"a", b"1"), ("PUT", b"b", b"x"), ("PUT", b"a", b"2"),
                      ("DELETE", b"b", b""), ("PUT", b"b", b"y")]
    check_layout(opened.db)
    put(store, b"c")                                         # 4
    for target in (3, 4):
        store.compact(target)
        while store.compact_step(2):
            pass
        check_layout(opened.db)
        assert store.range(RangeRequest(b"a", b"\x00", revision=target)).count == \
            (2 if target == 3 else 3)
    assert sum(1 for _ in opened.db.iterator(prefix=b"Vh")) == 0


def test_a_refused_op_leaves_the_whole_batch_unwritten(opened: Opened) -> None:
    store = opened.store
    with pytest.raises(EmptyKeyError):
        store.write_ops([PutRequest(b"a"), PutRequest(b"")])
    with pytest.raises(KeyNotFoundError):
        store.write_ops([PutRequest(b"a"), PutRequest(b"missing", ignore_value=True)])
    assert store.revision == 1 and keys(store) == []
