"""The MVCC layout's invariants (kvraft/storage/mvcc/layout.py), checked over a whole
database by scanning it: what the model-based test asserts after every step."""
from __future__ import annotations

import struct

import plyvel

from kvraft.storage.mvcc import layout

_U64 = (1 << 64) - 1


def _unescape(group: bytes) -> bytes:
    assert group.endswith(b"\x00\x01"), group
    body = group[:-2]
    assert b"\x00" not in body.replace(b"\x00\xff", b""), group
    return body.replace(b"\x00\xff", b"\x00")


def _int(db: plyvel.DB, key: bytes) -> int:
    raw = db.get(key)
    return 0 if raw is None else struct.unpack(">q", raw)[0]


def check_layout(db: plyvel.DB) -> None:
    latest: dict[bytes, layout.Record] = {}
    records: dict[tuple[int, int], tuple[bytes, layout.Record]] = {}
    events: dict[tuple[int, int], tuple[int, bytes]] = {}
    leases: set[tuple[int, bytes]] = set()
    history_keys: set[bytes] = set()
    for k, v in db.iterator(prefix=layout.PREFIX):
        if k.startswith(layout.LATEST_PREFIX):
            rec = layout.decode_record(v)
            latest[k[2:]] = rec
            assert (rec.mod_main, rec.mod_sub) not in records
            records[(rec.mod_main, rec.mod_sub)] = (k[2:], rec)
        elif k.startswith(layout.HISTORY_PREFIX):
            user_key = _unescape(k[2:-16])
            inv_main, inv_sub = struct.unpack(">QQ", k[-16:])
            rec = layout.decode_record(v)
            assert (rec.mod_main, rec.mod_sub) == (_U64 - inv_main, _U64 - inv_sub), k
            assert (rec.mod_main, rec.mod_sub) not in records
            records[(rec.mod_main, rec.mod_sub)] = (user_key, rec)
            history_keys.add(user_key)
        elif k.startswith(layout.EVENT_PREFIX):
            events[layout.event_revision(k)] = (v[0], v[1:])
        elif k.startswith(layout.LEASE_PREFIX):
            assert v == b""
            leases.add((struct.unpack(">q", k[2:10])[0], k[10:]))
        else:
            assert k.startswith(b"Vm"), k
    revision = _int(db, layout.META_REVISION) or layout.FIRST_REVISION
    compact = _int(db, layout.META_COMPACT)
    completed = _int(db, layout.META_COMPACTED)
    assert completed <= compact <= revision

    # Vh only for keys with a Vk; the latest record is each key's newest.
    assert history_keys <= set(latest), history_keys - set(latest)
    for rev, (key, rec) in records.items():
        assert rev[0] <= revision
        assert (rec.prev_main, rec.prev_sub) < rev
        newest = latest[key]
        assert (newest.mod_main, newest.mod_sub) >= rev
    # A Ve entry per record and a record per Ve entry, of the same key and kind.
    assert set(events) == set(records), (set(events) ^ set(records))
    for rev, (kind, key) in events.items():
        rkey, rec = records[rev]
        assert rkey == key
        assert kind == (layout.EVENT_PUT if rec.live else layout.EVENT_DELETE)
    # Vl: exactly the live latest records with a lease.
    assert leases == {(rec.lease, key) for key, rec in latest.items()
                      if rec.live and rec.lease}
    # A finished compaction left nothing it frees (compaction.py's rule).
    if completed == compact and compact:
        by_key: dict[bytes, list[tuple[int, layout.Record]]] = {}
        for (main, _), (key, rec) in records.items():
            if main <= compact:
                by_key.setdefault(key, []).append((main, rec))
        for key, held in by_key.items():
            held.sort(key=lambda h: (h[1].mod_main, h[1].mod_sub))
            *older, (main, rec) = held
            # only the newest at or below it, and records superseded within the
            # compact revision itself (a key written twice in it: next compaction's)
            assert all(m == compact for m, _ in older), (key, held)
            assert rec.live or main == compact, (key, held)
