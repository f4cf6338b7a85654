"""The key layout of a node's single LevelDB.

One database per node, one key prefix per concern. Keeping the Raft log and the state
machine in the same LevelDB is deliberate: one WriteBatch can change both atomically
(a snapshot install; a Raft-log write that also carries the state machine's buffered
applies, so they cost no fsync of their own).

What the storage relies on from LevelDB, and what it does not (issue 11, item 4): a
write with sync=True is durable when it returns, and a WriteBatch is all or nothing.
It does NOT rely on a synced write making earlier unsynced writes durable: LevelDB's
write-ahead log is not one sequential file (at a memtable switch it closes the old log
file without an fsync), so after a power loss an older unsynced write can be lost while
a newer synced one survives. Every write that a later state depends on is therefore
synced itself: Raft-log writes, the state machine's applies (buffered, then written in
a synced batch: apply_buffer.py), compaction's new offset (with those applies), every
batch of a snapshot install. The only unsynced writes delete log entries already below
the offset; losing some of them leaves garbage that opening removes.

    L <index: 8 bytes big-endian>   Raft log entry (eraftpb.Entry); fixed width so that
                                    key order is index order
    R hs                            HardState
    R cs                            ConfState (as of the last applied conf change)
    R off                           (index, term) just before the first held entry: the
                                    last compacted entry or the snapshot's
    R snap                          SnapshotMetadata of the last applied snapshot
    K <user key>                    the key-value data
    S applied                       (index, term) of the last applied entry
    S m <id: 8 bytes big-endian>    MemberInfo of one member
    S install                       marker of an unfinished snapshot install (redo it)
"""
from __future__ import annotations

import struct

LOG_PREFIX = b"L"
LOG_END = b"M"  # first key after every L key
RAFT_PREFIX = b"R"
HARD_STATE = b"Rhs"
CONF_STATE = b"Rcs"
LOG_OFFSET = b"Roff"
SNAPSHOT_META = b"Rsnap"
KV_PREFIX = b"K"
KV_END = b"L"  # first key after every K key
APPLIED = b"Sapplied"
MEMBER_PREFIX = b"Sm"
INSTALLING = b"Sinstall"

_INDEX = struct.Struct(">Q")
_INDEX_TERM = struct.Struct(">QQ")


def log_key(index: int) -> bytes:
    return LOG_PREFIX + _INDEX.pack(index)


def log_index(key: bytes) -> int:
    assert len(key) == 9 and key[:1] == LOG_PREFIX, f"not a log key: {key!r}"
    index: int = _INDEX.unpack_from(key, 1)[0]
    return index


def kv_key(key: bytes) -> bytes:
    return KV_PREFIX + key


def member_key(member_id: int) -> bytes:
    return MEMBER_PREFIX + _INDEX.pack(member_id)


def pack_index_term(index: int, term: int) -> bytes:
    return _INDEX_TERM.pack(index, term)


def unpack_index_term(value: bytes) -> tuple[int, int]:
    if len(value) != _INDEX_TERM.size:
        raise ValueError(f"index/term record of {len(value)} bytes, expected 16")
    index, term = _INDEX_TERM.unpack(value)
    return index, term
