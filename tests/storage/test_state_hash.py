"""The whole-state hash (storage/state_hash.py, etcd's Maintenance.Hash): equal on
members that applied the same entries, however they grouped them into apply calls
(the compaction removes history at a pace of its own on each), different as soon as
one record of the data differs."""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import plyvel
import pytest

from kvraft.proto import eraftpb_pb2 as eraftpb
from kvraft.proto import etcdserverpb_pb2 as etcdpb
from kvraft.storage import DataDir, KVStateMachine, mvcc, mvcc_apply, put_command
from kvraft.storage.commands import cluster_version_command, etcd_command
from kvraft.storage.datadir import DB_NAME
from kvraft.storage.mvcc import layout
from kvraft.storage.state_hash import StateHash

# A small compaction step (mvcc_apply.py removes this many changes per apply call),
# and more history than one step removes: the members' removals stand at different
# points after the same entries.
COMPACT_STEP = 10
OVERWRITES = 6 * COMPACT_STEP


@pytest.fixture(autouse=True)
def small_compaction_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mvcc_apply, "COMPACT_STEP_REVISIONS", COMPACT_STEP)


def entries(commands: list[bytes], first_index: int) -> list[eraftpb.Entry]:
    return [eraftpb.Entry(index=first_index + i, term=1, data=data)
            for i, data in enumerate(commands)]


@pytest.fixture
def two(tmp_path: Path) -> Iterator[tuple[KVStateMachine, KVStateMachine]]:
    dirs = [DataDir.open(tmp_path / f"node{i}", i) for i in (1, 2)]
    try:
        yield KVStateMachine(dirs[0]), KVStateMachine(dirs[1])
    finally:
        for d in dirs:
            d.close()


def workload() -> list[bytes]:
    commands = [cluster_version_command(2)]
    commands += [put_command(b"hot", b"v%d" % i, request_id=i + 1) for i in range(OVERWRITES)]
    commands += [
        put_command(b"gone", b"x", request_id=90_001),
        etcd_command(90_002, "etcd_delete_range", etcdpb.DeleteRangeRequest(key=b"gone")),
        etcd_command(90_003, "lease_grant", etcdpb.LeaseGrantRequest(ID=5, TTL=60)),
        etcd_command(90_004, "etcd_put", etcdpb.PutRequest(key=b"leased", value=b"l",
                                                           lease=5)),
        etcd_command(90_005, "etcd_compact",
                     etcdpb.CompactionRequest(revision=OVERWRITES + 3)),
    ]
    # Entries after the compaction: each apply call removes one step of the history.
    commands += [put_command(b"after/%d" % i, b"a", request_id=91_000 + i) for i in range(3)]
    return commands


def test_members_that_applied_the_same_entries_hash_alike(two) -> None:
    a, b = two
    commands = workload()
    a.apply(entries(commands, 1))            # one apply call: no history removed yet
    for i, command in enumerate(commands):   # one call per entry: all of it removed
        b.apply(entries([command], i + 1))
    history = [sum(1 for _ in m._buffer.iterator(start=layout.HISTORY_PREFIX,
                                                 stop=layout.HISTORY_END)) for m in (a, b)]
    assert history[0] > history[1], history  # the removal stands at different points
    ha, hb = a.state_hash(), b.state_hash()
    assert ha == hb and ha.hash != 0
    assert ha.revision == a.revision == 1 + OVERWRITES + 6
    assert ha.applied_index == len(commands)

    # An empty entry moves the applied index, not the state: the same hash.
    a.apply([eraftpb.Entry(index=len(commands) + 1, term=1)])
    assert a.state_hash().hash == ha.hash and a.state_hash().applied_index == len(commands) + 1


def tamper(path: Path, key: bytes, value: bytes) -> None:
    """What a disk or a hand can do: the value of `key`'s latest record, in LevelDB
    itself (the data directory closed)."""
    db = plyvel.DB(str(path / DB_NAME))
    try:
        raw = db.get(layout.latest_key(key))
        assert raw is not None
        record = layout.decode_record(raw)
        db.put(layout.latest_key(key), dataclasses.replace(record, value=value).encode(),
               sync=True)
    finally:
        db.close()


def hashes_of(path: Path, commands: list[bytes] | None = None, revision: int = 0
              ) -> tuple[StateHash, tuple[int, int, int], bytes | None]:
    """(Hash, HashKV at `revision`, the value of b"hot") of the data directory at
    `path`, after applying `commands` (when given) in one call."""
    datadir = DataDir.open(path, 1)
    try:
        sm = KVStateMachine(datadir)
        if commands:
            sm.apply(entries(commands, 1))
        return sm.state_hash(), sm.hash_kv(revision), sm.get(b"hot")
    finally:
        datadir.close()


def test_one_changed_value_changes_the_hash(tmp_path: Path) -> None:
    commands = [cluster_version_command(2), put_command(b"hot", b"value"),
                put_command(b"j", b"other")]
    before = [hashes_of(tmp_path / name, commands) for name in ("a", "b")]
    assert before[0] == before[1]
    tamper(tmp_path / "b", b"hot", b"valuf")
    state, history, value = hashes_of(tmp_path / "b")
    assert value == b"valuf"
    assert state.hash != before[0][0].hash and history[0] != before[0][1][0]
    assert (state.revision, state.applied_index) == (before[0][0].revision,
                                                     before[0][0].applied_index)


def test_hashkv_covers_the_keys_unchanged_since_the_last_compaction(two, tmp_path) -> None:
    """HashKV at R hashes the keys live at the compact revision C as well as the changes
    after it (etcd's keeps those records too): a value written before C and never
    since is compared, and members whose compaction stands at different points agree."""
    a, b = two
    commands = workload()
    a.apply(entries(commands, 1))
    for i, command in enumerate(commands):
        b.apply(entries([command], i + 1))
    compact = OVERWRITES + 3
    assert a.compact_revision == b.compact_revision == compact
    assert a.hash_kv(0) == b.hash_kv(0) and a.hash_kv(0)[1:] == (compact, a.revision)
    assert a.hash_kv(compact + 1) == b.hash_kv(compact + 1) != a.hash_kv(0)
    with pytest.raises(mvcc.CompactedError):
        a.hash_kv(compact)
    with pytest.raises(mvcc.FutureRevisionError):
        a.hash_kv(a.revision + 1)

    # b"hot" was last written before the compaction: a change to it still shows.
    fresh = hashes_of(tmp_path / "c", commands)
    assert fresh[1] == a.hash_kv(0)
    tamper(tmp_path / "c", b"hot", b"changed")
    state, history, value = hashes_of(tmp_path / "c")
    assert value == b"changed"
    assert history[1:] == fresh[1][1:] and history[0] != fresh[1][0]
    assert state.hash != fresh[0].hash
