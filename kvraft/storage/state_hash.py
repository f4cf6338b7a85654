"""The hashes of a member's replicated state: the whole of it (etcd's Maintenance.Hash,
`hash_view`) and its key-value history at a revision (etcd's HashKV, `hash_history`).

etcd's Hash is a CRC of its bbolt file, page by page, so it differs between members
holding the same data (free pages, the order pages were allocated in) and is useful
only to compare one member with itself. kvraft hashes what applying the log decides,
and nothing else, so that two members that applied the same entries give the same
hash, and a member whose data changed under it (a disk, a bug, a hand) gives another.

What is hashed, in LevelDB key order within each part (keys.py and mvcc/layout.py):
* `K` — the key-value data before MVCC (cluster version 1), record by record;
* `S m` — every member's record (its addresses, learner flag): the membership;
* `V` — the MVCC state: every key's latest record when it is live (its key, mod
  revision, create revision, version, lease and value — not the pointer to its
  previous record, which is bookkeeping of compaction), the lease attachments (`Vl`)
  and grants with their checkpoints (`Vg`), the alarms (`Va`), the auth users, roles
  and flag (`Vu`, `Vr`, `Vz`), the cluster version (`Vc`), the current and the compact
  revision (`Vm rev`, `Vm compact`).

Left out, because members that applied the same entries may hold them differently:
* the Raft log and state (`L`, `R hs`, `R off`, `R snap`: each member's own), and `R
  cs`, which a member that joined holds from its snapshot's metadata and which says
  nothing the member records do not;
* the applied index (`S applied`): equal states at different indexes (an empty entry
  changes nothing) hash alike;
* the history older than the latest records and the revision index (`Vh`, `Ve`), the
  compaction's progress (`Vm compacted`, `Vm compact_next`) and the tombstones: the
  compaction removes them in bounded steps per apply call (mvcc_apply.py), and
  members group entries into apply calls differently. The history is what HashKV
  hashes (`hash_history`, below), at a revision and compact revision.

Each item enters the CRC-32 (zlib's) as: part tag (1 byte), key length, value length
(u32 each), key, value.

HashKV at a revision R (`hash_history`) hashes, with compact revision C: every key
live at C (when C > 0: what the compaction keeps of the history before it), then
every change at a revision in (C, R], in revision order — each as its type (2 for a
key live at C, else etcd's PUT 0 or DELETE 1), create and mod revisions, version,
lease, key and value — with CRC-32 (zlib's; etcd's is Castagnoli's, so the values
differ from etcd's, not their use). Both parts are logical (the compaction's progress
does not show), so members that applied the same entries give the same hash at R
when their compact revisions agree, which is what `compact_revision` in the answer is
for (etcd's corruption check compares only such answers). etcd's HashKV also covers
the keys unchanged since before C; without the first part a value written before the
last compaction would escape every comparison. R above the current revision is etcd's
future-revision error, at or below C (etcd 3.4/3.5) its compacted error.
"""
from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass

from kvraft.storage import keys
from kvraft.storage.apply_buffer import FrozenView, prefix_stop
from kvraft.storage.mvcc import layout
from kvraft.storage.mvcc.errors import CompactedError, FutureRevisionError
from kvraft.storage.mvcc.keyrange import KeyRange
from kvraft.storage.mvcc.reads import compact_revision, current_revision, iter_events, iter_live
from kvraft.storage.mvcc_apply import CLUSTER_VERSION_MVCC, read_cluster_version

_ITEM = struct.Struct(">BII")
# The fields of a latest record that are hashed (layout.Record without prev).
_LATEST = struct.Struct(">qqqqq")
# V's sub-ranges that are hashed: [start, stop), the history and revision index skipped.
_MVCC_RANGES = ((layout.PREFIX, layout.EVENT_PREFIX),          # Va, Vc
                (layout.EVENT_END, layout.HISTORY_PREFIX),     # Vg
                (layout.HISTORY_END, prefix_stop(layout.PREFIX)))  # Vk, Vl, Vm, Vr, Vu, Vz
_SKIPPED_META = frozenset({layout.META_COMPACTED, layout.META_COMPACT_NEXT})
TAG_KV, TAG_MEMBER, TAG_MVCC = 1, 3, 4
# A history item as HashKV hashes it: type, create and mod revisions, version, lease,
# key and value lengths.
_HISTORY_ITEM = struct.Struct(">BqqqqII")
LIVE_AT_COMPACT = 2   # the type of a key live at the compact revision (PUT 0, DELETE 1)
# Every key: from b"\0" to the end of the key space (etcd's "all keys").
_ALL_KEYS = KeyRange.of(b"\0", b"\0")


@dataclass(frozen=True, slots=True)
class StateHash:
    hash: int        # CRC-32 of the items (module docstring)
    revision: int    # the MVCC revision of the state hashed (0 before MVCC)
    applied_index: int


def _items(view: FrozenView) -> Iterator[tuple[int, bytes, bytes]]:
    with closing(view.iterator(prefix=keys.KV_PREFIX)) as it:
        for key, value in it:
            yield TAG_KV, key, value
    with closing(view.iterator(prefix=keys.MEMBER_PREFIX)) as it:
        for key, value in it:
            yield TAG_MEMBER, key, value
    for start, stop in _MVCC_RANGES:
        with closing(view.iterator(start=start, stop=stop)) as it:
            for key, value in it:
                if key.startswith(layout.LATEST_PREFIX):
                    if not layout.record_live(value):
                        continue   # a tombstone: compaction removes it at its own pace
                    r = layout.decode_record(value)
                    value = _LATEST.pack(r.mod_main, r.mod_sub, r.create_revision,
                                         r.version, r.lease) + r.value
                elif key in _SKIPPED_META:
                    continue
                yield TAG_MVCC, key, value


def hash_view(view: FrozenView) -> StateHash:
    """The hash of the state `view` shows. Reads every record: call it off the event
    loop."""
    crc = 0
    for tag, key, value in _items(view):
        crc = zlib.crc32(_ITEM.pack(tag, len(key), len(value)), crc)
        crc = zlib.crc32(key, crc)
        crc = zlib.crc32(value, crc)
    mvcc = read_cluster_version(view) >= CLUSTER_VERSION_MVCC
    raw_applied = view.get(keys.APPLIED)
    return StateHash(crc, current_revision(view) if mvcc else 0,
                     keys.unpack_index_term(raw_applied)[0] if raw_applied else 0)


def hash_history(view: FrozenView, revision: int) -> tuple[int, int, int]:
    """(hash, compact revision, revision hashed) of the key-value history at `revision`
    (0: the current revision) as the module docstring says; (0, 0, 0) before MVCC.
    Raises the store's FutureRevisionError or CompactedError. Reads the history: call
    it off the event loop."""
    if read_cluster_version(view) < CLUSTER_VERSION_MVCC:
        return 0, 0, 0
    compact, current = compact_revision(view), current_revision(view)
    upto = revision if revision > 0 else current
    if upto > current:
        raise FutureRevisionError()
    if revision > 0 and upto <= compact:
        raise CompactedError(compact)
    crc = 0
    if compact > 0:
        with closing(iter_live(view, _ALL_KEYS, compact)) as live:
            for key, raw in live:
                r = layout.decode_record(raw)
                crc = _history_crc(crc, LIVE_AT_COMPACT, key, r.value, r.create_revision,
                                   r.mod_main, r.version, r.lease)
    with closing(iter_events(view, b"\0", b"\0", compact + 1,
                             stop_revision=upto + 1)) as events:
        for event in events:
            kv = event.kv
            crc = _history_crc(crc, int(event.type), kv.key, kv.value, kv.create_revision,
                               kv.mod_revision, kv.version, kv.lease)
    return crc, compact, upto


def _history_crc(crc: int, kind: int, key: bytes, value: bytes, create: int, mod: int,
                 version: int, lease: int) -> int:
    crc = zlib.crc32(_HISTORY_ITEM.pack(kind, create, mod, version, lease, len(key),
                                        len(value)), crc)
    crc = zlib.crc32(key, crc)
    return zlib.crc32(value, crc)
