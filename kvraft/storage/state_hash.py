"""The hash of a member's whole replicated state (etcd's Maintenance.Hash).

etcd's Hash is a CRC of its bbolt file, page by page, so it differs between members
holding the same data (free pages, the order pages were allocated in) and is useful
only to compare one member with itself. kvraft hashes what applying the log decides,
and nothing else, so that two members that applied the same entries give the same
hash, and a member whose data changed under it (a disk, a bug, a hand) gives another.

What is hashed, in LevelDB key order within each part (keys.py and mvcc/layout.py):
* `K` — the key-value data before MVCC (cluster version 1), record by record;
* `R cs` — the conf state of the last applied conf change;
* `S m` — every member's record (its addresses, learner flag);
* `V` — the MVCC state: every key's latest record when it is live (its key, mod
  revision, create revision, version, lease and value — not the pointer to its
  previous record, which is bookkeeping of compaction), the lease attachments (`Vl`)
  and grants with their checkpoints (`Vg`), the alarms (`Va`), the auth users, roles
  and flag (`Vu`, `Vr`, `Vz`), the cluster version (`Vc`), the current and the compact
  revision (`Vm rev`, `Vm compact`).

Left out, because members that applied the same entries may hold them differently:
the Raft log and hard state (`L`, `R hs`, `R off`, `R snap`: each member's own), the
applied index (`S applied`: equal states at different indexes — an empty entry
changes nothing — should hash alike), the history older than the latest records and
the revision index (`Vh`, `Ve`) together with the compaction's progress (`Vm
compacted`, `Vm compact_next`) and the tombstones that the compaction removes: the
compaction removes history in bounded steps per apply call (mvcc_apply.py), and
members group entries into apply calls differently. The history is what HashKV
hashes (server/etcd/maintenance.py), at a revision and compact revision.

Each item enters the CRC-32 (zlib's) as: part tag (1 byte), key length, value length
(u32 each), key, value.
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
from kvraft.storage.mvcc.reads import current_revision
from kvraft.storage.mvcc_apply import CLUSTER_VERSION_MVCC, read_cluster_version

_ITEM = struct.Struct(">BII")
# The fields of a latest record that are hashed (layout.Record without prev).
_LATEST = struct.Struct(">qqqqq")
# V's sub-ranges that are hashed: [start, stop), the history and revision index skipped.
_MVCC_RANGES = ((layout.PREFIX, layout.EVENT_PREFIX),          # Va, Vc
                (layout.EVENT_END, layout.HISTORY_PREFIX),     # Vg
                (layout.HISTORY_END, prefix_stop(layout.PREFIX)))  # Vk, Vl, Vm, Vr, Vu, Vz
_SKIPPED_META = frozenset({layout.META_COMPACTED, layout.META_COMPACT_NEXT})
TAG_KV, TAG_CONF_STATE, TAG_MEMBER, TAG_MVCC = 1, 2, 3, 4


@dataclass(frozen=True, slots=True)
class StateHash:
    hash: int        # CRC-32 of the items (module docstring)
    revision: int    # the MVCC revision of the state hashed (0 before MVCC)
    applied_index: int


def _items(view: FrozenView) -> Iterator[tuple[int, bytes, bytes]]:
    with closing(view.iterator(prefix=keys.KV_PREFIX)) as it:
        for key, value in it:
            yield TAG_KV, key, value
    conf_state = view.get(keys.CONF_STATE)
    if conf_state is not None:
        yield TAG_CONF_STATE, keys.CONF_STATE, conf_state
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
