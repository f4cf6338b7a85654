"""The whole-state hash (storage/state_hash.py, etcd's Maintenance.Hash): equal on
members that applied the same entries, however they grouped them into apply calls
(the compaction removes history at a pace of its own on each), different as soon as
one record of the data differs."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import plyvel
import pytest

from kvraft.proto import eraftpb_pb2 as eraftpb
from kvraft.proto import etcdserverpb_pb2 as etcdpb
from kvraft.storage import DataDir, KVStateMachine, put_command
from kvraft.storage.commands import cluster_version_command, etcd_command
from kvraft.storage.datadir import DB_NAME
from kvraft.storage.mvcc import layout
from kvraft.storage.mvcc_apply import COMPACT_STEP_REVISIONS

# More history than one apply call's compaction step removes: the members' removals
# stand at different points after the same entries.
OVERWRITES = COMPACT_STEP_REVISIONS + 500


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


def test_one_changed_value_changes_the_hash(tmp_path: Path) -> None:
    commands = [cluster_version_command(2), put_command(b"k", b"value"),
                put_command(b"j", b"other")]
    hashes = []
    for name in ("a", "b"):
        datadir = DataDir.open(tmp_path / name, 1)
        sm = KVStateMachine(datadir)
        sm.apply(entries(commands, 1))
        hashes.append(sm.state_hash())
        datadir.close()
    assert hashes[0] == hashes[1]
    # What a disk or a hand can do: one byte of one record's value, in LevelDB itself.
    db = plyvel.DB(str(tmp_path / "b" / DB_NAME))
    try:
        raw = db.get(layout.latest_key(b"k"))
        assert raw is not None and raw.endswith(b"value")
        db.put(layout.latest_key(b"k"), raw[:-5] + b"valuf", sync=True)
    finally:
        db.close()
    datadir = DataDir.open(tmp_path / "b", 1)
    try:
        sm = KVStateMachine(datadir)
        assert sm.get(b"k") == b"valuf"
        changed = sm.state_hash()
    finally:
        datadir.close()
    assert changed.hash != hashes[0].hash
    assert (changed.revision, changed.applied_index) == (hashes[0].revision,
                                                         hashes[0].applied_index)
