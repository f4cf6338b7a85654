"""Removing the history that a compaction frees, in bounded, resumable steps.

`MVCCBatch.compact(rev)` only records the compact revision C: from then on reads below
C fail, and nothing at or above C is ever removed, so the removal can run later, a few
revisions at a time, between applies, while reads go on: a read at or above C sees
the same answer before, during and after it (tests/storage/mvcc check this).

What C frees (etcd's rule): every record of a key older than its newest record at or
below C, and that newest one too if it is a tombstone. The removal walks the revision
index (Ve) from where the last one ended up to C; for each change at (m, s):
* its record's predecessor (the `prev` it points to) is superseded at m <= C: removed,
  with its Ve entry — unless it is at revision C itself (two writes to one key in one
  revision), which the next compaction removes;
* if it is a tombstone and m < C, it is removed with its Ve entry. A tombstone at C is
  kept until the next compaction, so that a watch may start at C (etcd allows it) and
  still see C's deletions.
Each record is removed when its successor's change is visited, so every step is point
reads and deletes: O(entries_max) reads and writes, one iterator, whatever the size
of the history. The revision C itself is visited again by the next compaction (its
tombstones are due then); visiting a change twice removes nothing twice.

Progress (layout.py): `Vm compacted` = the last C whose removal completed;
`Vm compact_next` = <C being removed> <Ve key to resume at>. If a newer compaction
arrives mid-way, the removal resumes at the start of that Ve key's revision (the
revision the old C may have been part-way through, whose tombstones the old C kept).
"""
from __future__ import annotations

from kvraft.storage.mvcc import layout
from kvraft.storage.mvcc.layout import decode_record
from kvraft.storage.mvcc.reads import compact_revision, items_of
from kvraft.storage.mvcc.view import Reader, WriteSet


def completed_revision(view: Reader) -> int:
    """The compact revision whose removal is complete (0: none yet)."""
    raw = view.get(layout.META_COMPACTED)
    return 0 if raw is None else layout.unpack_int(raw)


def pending(view: Reader) -> bool:
    return completed_revision(view) < compact_revision(view)


def step(ws: WriteSet, entries_max: int) -> bool:
    """Visit at most `entries_max` changes (module docstring); True while more are left.
    Writes into `ws`'s open entry."""
    assert entries_max >= 1
    target = compact_revision(ws)
    done = completed_revision(ws)
    if done >= target:
        return False
    start = layout.event_key(done, 0)
    resume = ws.get(layout.META_COMPACT_NEXT)
    if resume is not None:
        resume_target, resume_key = layout.unpack_int(resume[:8]), resume[8:]
        if resume_target == target:
            start = resume_key
        else:
            start = layout.event_key(layout.event_revision(resume_key)[0], 0)
    visited = 0
    it = ws.iterator(start=start, stop=layout.event_key(target + 1, 0))
    try:
        for ekey, evalue in items_of(it):
            if visited >= entries_max:
                ws.put(layout.META_COMPACT_NEXT, layout.pack_int(target) + ekey)
                return True
            visited += 1
            _visit(ws, ekey, evalue[1:], target)
    finally:
        it.close()
    ws.put(layout.META_COMPACTED, layout.pack_int(target))
    ws.delete(layout.META_COMPACT_NEXT)
    return False


def _visit(ws: WriteSet, ekey: bytes, key: bytes, target: int) -> None:
    main, sub = layout.event_revision(ekey)
    latest_key = layout.latest_key(key)
    latest_raw = ws.get(latest_key)
    assert latest_raw is not None, f"a change of {key!r} at ({main}, {sub}) but no record"
    latest = decode_record(latest_raw)
    if (latest.mod_main, latest.mod_sub) == (main, sub):
        rec, rec_key = latest, latest_key
    else:
        rec_key = layout.history_key(key, main, sub)
        raw = ws.get(rec_key)
        assert raw is not None, f"no record of {key!r} at ({main}, {sub})"
        rec = decode_record(raw)
    if (rec.prev_main or rec.prev_sub) and rec.prev_main < target:
        prev_key = layout.history_key(key, rec.prev_main, rec.prev_sub)
        if ws.get(prev_key) is not None:
            ws.delete(prev_key)
            ws.delete(layout.event_key(rec.prev_main, rec.prev_sub))
    if not rec.live and main < target:
        ws.delete(rec_key)
        ws.delete(ekey)
