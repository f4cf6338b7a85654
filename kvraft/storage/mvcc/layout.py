"""The MVCC key layout in the node's LevelDB (issue 12), beside keys.py's.

keys.py's prefixes are L (Raft log; M only as the bound after it), R (Raft state), K
(the unversioned key-value data) and S (state-machine records). Everything here is
under the one letter V ("versioned"), so the whole MVCC state is one key range (for a
snapshot, an upgrade, a wipe) and no future keys.py prefix can collide with it:

    Vk <user key>                     the key's latest record: its live value, or the
                                      tombstone of its deletion (until compacted)
    Vh <escaped key> <~main> <~sub>   the key's older records, newest first
    Ve <main> <sub>                   which key changed at revision (main, sub), and
                                      how (PUT or DELETE): the order watches replay
    Vl <lease> <user key>             a live key attached to a lease (empty value)
    Vg <lease>                        a granted lease: its TTL and the remaining TTL
                                      of its last checkpoint (two int64; 0: none)
    Va <member> <alarm type: 1 byte>  a raised alarm (etcd's AlarmType; empty value)
    Vu <user name>                    an auth user (authpb.User; its password only
                                      as a salted hash: storage/auth_store.py)
    Vr <role name>                    an auth role and its permissions (authpb.Role)
    Vz                                auth: enabled flag and auth revision (two int64)
    Vc                                the cluster version (a uint32 as int64; absent:
                                      1, the layout before MVCC: storage/mvcc_apply.py)
    Vm rev                            the current revision (main)
    Vm compact                        the compact revision: reads below it fail
    Vm compacted                      the compact revision whose removal is complete
    Vm compact_next                   where the unfinished removal resumes (a Ve key)

<main>, <sub>, <lease> are 8 bytes big-endian (lease as a signed int64); <~n> is
2**64 - 1 - n, so that a forward iteration from <~rev> finds the newest record at or
below `rev` first (the store's readers iterate forward only: apply_buffer.py's merged
view has no reverse or seek).

Escaping: a history key must keep one key's records together and the keys in order,
whatever bytes a key holds. Each 0x00 of the key is written 0x00 0xFF and the key ends
with 0x00 0x01; this encoding preserves order and is prefix-free (no escaped key is a
prefix of another), so "a" (61 00 01 ...) sorts before "a\\0" (61 00 FF 00 01 ...).

Invariants (checked by tests/storage/mvcc): a key has Vh records only if it has a Vk
record; every record at a revision >= the compact revision has its Ve entry and every
Ve entry its record; Vl holds exactly the live latest records with a lease.

A record (Vk and Vh values) is a fixed head and the value:
    format (1 byte, 1), mod main, mod sub, create revision, version, lease,
    prev main, prev sub (7 x int64), value
`prev` is the (main, sub) of the key's previous record (0, 0: none): compaction follows
it to remove a superseded record with point reads only, and a watch's prev_kv reads it.
A tombstone has version 0 (and create revision, lease, value empty).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

PREFIX: Final = b"V"
LATEST_PREFIX: Final = b"Vk"
LATEST_END: Final = b"Vl"       # first key after every Vk key
HISTORY_PREFIX: Final = b"Vh"
HISTORY_END: Final = b"Vi"
EVENT_PREFIX: Final = b"Ve"
EVENT_END: Final = b"Vf"
LEASE_PREFIX: Final = b"Vl"
GRANT_PREFIX: Final = b"Vg"
GRANT_END: Final = b"Vh"
CLUSTER_VERSION: Final = b"Vc"
USER_PREFIX: Final = b"Vu"
USER_END: Final = b"Vv"
ROLE_PREFIX: Final = b"Vr"
ROLE_END: Final = b"Vs"
AUTH_META: Final = b"Vz"
ALARM_PREFIX: Final = b"Va"
ALARM_END: Final = b"Vb"
META_REVISION: Final = b"Vmrev"
META_COMPACT: Final = b"Vmcompact"
META_COMPACTED: Final = b"Vmcompacted"
META_COMPACT_NEXT: Final = b"Vmcompact_next"

FIRST_REVISION: Final = 1  # an empty store's revision (etcd's); the first write gets 2

EVENT_PUT: Final = 0
EVENT_DELETE: Final = 1

_U64_MAX: Final = (1 << 64) - 1
_INT: Final = struct.Struct(">q")
_LEASE: Final = struct.Struct(">q")
_REV: Final = struct.Struct(">QQ")
_HEAD: Final = struct.Struct(">Bqqqqqqq")
_FORMAT: Final = 1
_MOD_MAIN_AT: Final = 1
_VERSION_AT: Final = 1 + 8 * 3


def escape(key: bytes) -> bytes:
    """The order-preserving, prefix-free form of a user key (module docstring)."""
    return key.replace(b"\x00", b"\x00\xff") + b"\x00\x01"


def latest_key(key: bytes) -> bytes:
    return LATEST_PREFIX + key


def history_group(key: bytes) -> bytes:
    """The prefix of every history key of `key`."""
    return HISTORY_PREFIX + escape(key)


def history_key(key: bytes, main: int, sub: int) -> bytes:
    return history_group(key) + _REV.pack(_U64_MAX - main, _U64_MAX - sub)


def history_seek(key: bytes, rev: int) -> bytes:
    """The first history key of `key` whose record's main revision is <= rev."""
    return history_group(key) + _REV.pack(_U64_MAX - rev, 0)


def history_group_of(hkey: bytes) -> bytes:
    return hkey[:-16]


def event_key(main: int, sub: int) -> bytes:
    return EVENT_PREFIX + _REV.pack(main, sub)


def event_revision(ekey: bytes) -> tuple[int, int]:
    assert len(ekey) == 18 and ekey[:2] == EVENT_PREFIX, f"not an event key: {ekey!r}"
    main, sub = _REV.unpack_from(ekey, 2)
    return main, sub


def event_value(kind: int, key: bytes) -> bytes:
    return bytes((kind,)) + key


def lease_prefix(lease: int) -> bytes:
    return LEASE_PREFIX + _LEASE.pack(lease)


def lease_key(lease: int, key: bytes) -> bytes:
    return lease_prefix(lease) + key


def grant_key(lease: int) -> bytes:
    return GRANT_PREFIX + _LEASE.pack(lease)


def grant_lease(gkey: bytes) -> int:
    lease: int = _LEASE.unpack_from(gkey, 2)[0]
    return lease


def pack_grant(ttl: int, remaining_ttl: int) -> bytes:
    return _INT.pack(ttl) + _INT.pack(remaining_ttl)


def unpack_grant(raw: bytes) -> tuple[int, int]:
    if len(raw) != 2 * _INT.size:
        raise ValueError(f"lease record of {len(raw)} bytes, expected 16")
    ttl, remaining = struct.unpack(">qq", raw)
    return ttl, remaining


def alarm_key(member_id: int, alarm: int) -> bytes:
    return ALARM_PREFIX + struct.pack(">QB", member_id, alarm)


def alarm_of(akey: bytes) -> tuple[int, int]:
    member_id, alarm = struct.unpack_from(">QB", akey, 2)
    return member_id, alarm


def pack_int(value: int) -> bytes:
    return _INT.pack(value)


def unpack_int(raw: bytes) -> int:
    if len(raw) != _INT.size:
        raise ValueError(f"MVCC meta record of {len(raw)} bytes, expected 8")
    value: int = _INT.unpack(raw)[0]
    return value


@dataclass(frozen=True, slots=True)
class Record:
    """One version of a key (see the module docstring). Invariant: version == 0 iff a
    tombstone; prev < (mod_main, mod_sub)."""

    mod_main: int
    mod_sub: int
    create_revision: int
    version: int
    lease: int
    prev_main: int
    prev_sub: int
    value: bytes

    @property
    def live(self) -> bool:
        return self.version != 0

    def encode(self) -> bytes:
        return _HEAD.pack(_FORMAT, self.mod_main, self.mod_sub, self.create_revision,
                          self.version, self.lease, self.prev_main,
                          self.prev_sub) + self.value


def decode_record(raw: bytes) -> Record:
    if len(raw) < _HEAD.size or raw[0] != _FORMAT:
        raise ValueError(f"not an MVCC record: {raw[:_HEAD.size]!r}")
    (_, mod_main, mod_sub, create, version, lease, prev_main,
     prev_sub) = _HEAD.unpack_from(raw)
    return Record(mod_main, mod_sub, create, version, lease, prev_main, prev_sub,
                  raw[_HEAD.size:])


def record_mod_main(raw: bytes) -> int:
    """A record's main mod revision without decoding the rest."""
    value: int = _INT.unpack_from(raw, _MOD_MAIN_AT)[0]
    return value


def record_live(raw: bytes) -> bool:
    """Whether a record is a live version (not a tombstone), without decoding it."""
    return raw[_VERSION_AT:_VERSION_AT + 8] != b"\x00" * 8


def tombstone(main: int, sub: int, prev: Record) -> Record:
    return Record(main, sub, 0, 0, 0, prev.mod_main, prev.mod_sub, b"")
