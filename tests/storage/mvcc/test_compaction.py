"""Compact(rev): reads below rev fail from then on; the history it frees (every record
older than each key's newest at or below rev, and that one too if it is a tombstone)
is removed in bounded steps that resume where they stopped, across reopens and newer
compactions, and never change what a read at or above rev sees."""
from __future__ import annotations

import pytest

from kvraft.storage.mvcc import (
    CompactedError,
    DeleteRangeRequest,
    FutureRevisionError,
    MVCCStore,
    RangeRequest,
)
from tests.storage.mvcc.conftest import Opened
from tests.storage.mvcc.helpers import delete, put
from tests.storage.mvcc.layout_check import check_layout


def snapshot_reads(store: MVCCStore, lo: int) -> dict[int, object]:
    return {rev: store.range(RangeRequest(b"\x00", b"\x00", revision=rev))
            for rev in range(lo, store.revision + 1)}


def history_records(opened: Opened) -> int:
    return sum(1 for _ in opened.db.iterator(prefix=b"Vh"))


def test_compact_refuses_the_compacted_and_the_future_revisions(store: MVCCStore) -> None:
    put(store, b"a")
    put(store, b"a")
    with pytest.raises(FutureRevisionError):
        store.compact(4)
    assert store.compact(3).revision == 3  # the current revision may be compacted
    for rev in (3, 2):
        with pytest.raises(CompactedError) as e:
            store.compact(rev)
        assert e.value.compact_revision == 3
    assert store.revision == 3  # compaction is no write entry


def test_compaction_keeps_each_keys_newest_version_at_or_below_it(opened: Opened) -> None:
    store = opened.store
    for i in range(5):
        put(store, b"a", b"%d" % i)  # 2..6
    put(store, b"b")                 # 7
    delete(store, b"b")              # 8
    put(store, b"c")                 # 9
    store.compact(8)
    while store.compact_step(1):
        pass
    check_layout(opened.db)
    # a: only its version at 6 (the newest <= 8) is left; b: only its tombstone at 8
    # (the newest <= 8, kept until the next compaction); c: untouched.
    assert store.range(RangeRequest(b"a", revision=8)).kvs[0].value == b"4"
    assert history_records(opened) == 0
    assert [e.kv.key for e in store.events(b"\x00", b"\x00", 8)] == [b"b", b"c"]
    put(store, b"d")                 # 10
    store.compact(10)
    while store.compact_step(100):
        pass
    check_layout(opened.db)
    assert history_records(opened) == 0
    assert {k[2:] for k, _ in opened.db.iterator(prefix=b"Vk")} == {b"a", b"c", b"d"}


def test_reads_at_or_above_the_compact_revision_never_change_during_removal(
        opened: Opened) -> None:
    store = opened.store
    for i in range(30):
        put(store, b"k%d" % (i % 4), b"%d" % i)
        if i % 7 == 3:
            store.delete_range(DeleteRangeRequest(b"k", b"l"))
    target = store.revision - 5
    before = snapshot_reads(store, target)
    store.compact(target)
    steps = 0
    while store.compact_step(2):
        steps += 1
        assert snapshot_reads(store, target) == before
        if steps % 3 == 0:
            store = opened.reopen()  # resumable: the progress is in the database
    assert steps > 3
    assert snapshot_reads(store, target) == before
    check_layout(opened.db)


def test_a_step_visits_at_most_entries_max_changes(opened: Opened) -> None:
    store = opened.store
    for i in range(10):
        put(store, b"a", b"%d" % i)   # 2..11
    store.compact(11)
    removed = []
    while True:
        n = history_records(opened)
        more = store.compact_step(3)
        removed.append(n - history_records(opened))
        if not more:
            break
    assert max(removed) <= 3 and sum(removed) == 9
    check_layout(opened.db)


def test_a_watch_may_start_at_the_compact_revision_and_sees_its_deletions(
        store: MVCCStore) -> None:
    """etcd lets a watch start at the compact revision; its deletions are kept."""
    put(store, b"a")                       # 2
    put(store, b"b")                       # 3
    store.delete_range(DeleteRangeRequest(b"a", b"c"))  # 4
    store.compact(4)
    while store.compact_step(1):
        pass
    events = list(store.events(b"a", b"c", 4))
    assert [(e.type.name, e.kv.key, e.kv.mod_revision) for e in events] == [
        ("DELETE", b"a", 4), ("DELETE", b"b", 4)]
    with pytest.raises(CompactedError):
        store.events(b"a", b"c", 3)


def test_a_newer_compaction_mid_removal_still_removes_the_older_ones_tombstones(
        opened: Opened) -> None:
    """Compaction at 5 stops inside revision 5 (a delete of several keys), keeping its
    tombstones as the rule says; compaction at 6 then arrives: the removal must go
    back to the start of revision 5, whose tombstones are now due."""
    store = opened.store
    for k in (b"a", b"b", b"c", b"d"):
        put(store, k)                  # 2..5
    store.delete_range(DeleteRangeRequest(b"a", b"\x00"))  # 6: four tombstones
    put(store, b"e")                   # 7
    store.compact(6)
    # Visit 2, 3, 4, 5 and two of revision 6's changes, then stop.
    assert store.compact_step(6)
    store.compact(7)
    while store.compact_step(1):
        pass
    check_layout(opened.db)
    assert {k[2:] for k, _ in opened.db.iterator(prefix=b"Vk")} == {b"e"}
