"""Snapshot files and restoring them (storage/snapshot_file.py, storage/restore.py):
a backup restored into the data directories of a NEW cluster holds the same keys at the
same revisions, with the new members, a fresh Raft log and a new cluster id; a file
that fails a check, or a directory that is not empty, is refused with one line and
leaves nothing behind."""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import pytest

from kvraft.proto import etcdserverpb_pb2 as etcdpb
from kvraft.raft import eraftpb
from kvraft.server.config import cluster_id_for
from kvraft.storage import DataDir, KVStateMachine, LevelDBStorage, mvcc, put_command
from kvraft.storage.commands import MemberRecord, cluster_version_command, etcd_command
from kvraft.storage.restore import (
    RESTORE_TERM,
    RestoreError,
    restore_data_dir,
    restored_cluster_id,
)
from kvraft.storage.snapshot_file import (
    PAGE_BYTES,
    SHA256_BYTES,
    SnapshotFileError,
    read_snapshot_file,
)

OLD_MEMBERS = {1: "127.0.0.1:7001", 2: "127.0.0.1:7002", 3: "127.0.0.1:7003"}
NEW_MEMBERS = {4: "127.0.0.1:8004", 5: "127.0.0.1:8005", 6: "127.0.0.1:8006"}


def normal(index: int, data: bytes, term: int = 2) -> eraftpb.Entry:
    return eraftpb.Entry(index=index, term=term, data=data)


def write_snapshot_file(sm: KVStateMachine, path: Path) -> int:
    """What Maintenance.Snapshot streams and `snapshot save` writes: the image, zero
    padding to a page, the SHA-256 of both. Returns the image's length."""
    with sm.create_snapshot() as handle:
        image = b"".join(handle.chunks(4096))
    body = image + bytes(-len(image) % PAGE_BYTES)
    data = body + hashlib.sha256(body).digest()
    path.write_bytes(data)
    return len(image)


@pytest.fixture
def source(tmp_path: Path) -> tuple[Path, dict[bytes, tuple[bytes, int, int]], int]:
    """A snapshot file of an old cluster's store: etcd puts (one on a lease), a kvraft
    put, a key overwritten, one deleted, a compaction, a raised NOSPACE alarm, the old
    members' records. Returns the file, key -> (value, create rev, mod rev) and the
    length of the image in the file."""
    with DataDir.open(tmp_path / "old", 1) as old:
        sm = KVStateMachine(old)
        sm.initialize_members([MemberRecord(i, a, f"127.0.0.1:{9000 + i}", incarnation=77)
                               for i, a in OLD_MEMBERS.items()])
        commands = [
            cluster_version_command(2),
            etcd_command(1, "lease_grant", etcdpb.LeaseGrantRequest(ID=0x51, TTL=600)),
            etcd_command(2, "etcd_put", etcdpb.PutRequest(key=b"leased", value=b"L",
                                                          lease=0x51)),
            etcd_command(3, "etcd_put", etcdpb.PutRequest(key=b"etcd/a", value=b"1")),
            put_command(b"kvraft/b", b"2", request_id=4),
            etcd_command(5, "etcd_put", etcdpb.PutRequest(key=b"etcd/a", value=b"1b")),
            etcd_command(6, "etcd_put", etcdpb.PutRequest(key=b"gone", value=b"x")),
            etcd_command(7, "etcd_delete_range", etcdpb.DeleteRangeRequest(key=b"gone")),
            etcd_command(8, "etcd_compact", etcdpb.CompactionRequest(revision=3)),
            etcd_command(9, "alarm", etcdpb.AlarmRequest(
                action=etcdpb.AlarmRequest.ACTIVATE, memberID=2, alarm=etcdpb.NOSPACE)),
        ]
        sm.apply([normal(i, c) for i, c in enumerate(commands, start=1)])
        assert [a.member_id for a in sm.alarms()] == [2]
        got = sm.range(mvcc.RangeRequest(b"\0", b"\0"))
        expected = {kv.key: (kv.value, kv.create_revision, kv.mod_revision) for kv in got.kvs}
        assert sorted(expected) == [b"etcd/a", b"kvraft/b", b"leased"]
        path = tmp_path / "backup.db"
        image_bytes = write_snapshot_file(sm, path)
    return path, expected, image_bytes


def open_restored(path: Path, node_id: int) -> tuple[DataDir, KVStateMachine, LevelDBStorage]:
    datadir = DataDir.open(path, node_id, create=False)
    return datadir, KVStateMachine(datadir), LevelDBStorage(datadir)


def test_status_reads_revision_keys_and_checksums(source) -> None:
    path, expected, _ = source
    info = read_snapshot_file(path)
    # puts at 2..5, "gone" put at 6 and deleted at 7
    assert info.revision == max(mod for _, _, mod in expected.values()) + 2 == 7
    assert info.total_keys == 3 and info.lease_count == 1 and info.cluster_version == 2
    assert info.compact_revision == 3
    assert info.size_bytes == path.stat().st_size
    assert (info.size_bytes - SHA256_BYTES) % PAGE_BYTES == 0
    assert info.sha256 == path.read_bytes()[-SHA256_BYTES:]
    assert sorted(m.id for m in info.members) == sorted(OLD_MEMBERS)
    assert info.metadata.index == 10 and info.crc32 != 0


def test_restore_makes_every_member_of_a_new_cluster_with_the_same_data(
        source, tmp_path: Path) -> None:
    path, expected, _ = source
    results = [restore_data_dir(path, tmp_path / f"new{i}", i, NEW_MEMBERS)
               for i in NEW_MEMBERS]
    # One new cluster: every member derives the same id, which is not the old one's,
    # nor the id a bootstrap of the same members would have.
    assert len({r.cluster_id for r in results}) == 1
    cluster_id = results[0].cluster_id
    assert cluster_id not in (cluster_id_for(OLD_MEMBERS), cluster_id_for(NEW_MEMBERS), 0)
    for node_id in NEW_MEMBERS:
        datadir, sm, log = open_restored(tmp_path / f"new{node_id}", node_id)
        try:
            assert datadir.cluster_id == cluster_id and not datadir.is_new
            # The data, at the same revisions.
            got = sm.range(mvcc.RangeRequest(b"\0", b"\0"))
            assert {kv.key: (kv.value, kv.create_revision, kv.mod_revision)
                    for kv in got.kvs} == expected
            assert sm.revision == read_snapshot_file(path).revision
            assert sm.compact_revision == 3 and sm.cluster_version == 2
            assert [lease.id for lease in sm.leases()] == [0x51]
            assert sm.keys_with_lease(0x51) == [b"leased"]
            assert sm.alarms() == []    # they named members of the old cluster
            # The new members, all voters, no incarnation known yet.
            assert sm.members() == [MemberRecord(i, a) for i, a in sorted(NEW_MEMBERS.items())]
            assert list(log.initial_state().conf_state.voters) == sorted(NEW_MEMBERS)
            # A fresh log: right after a snapshot at index 3 (one per member), term 1.
            assert (sm.applied_index, sm.applied_term) == (3, RESTORE_TERM)
            assert (log.first_index(), log.last_index()) == (4, 3)
            hs = log.hard_state()
            assert (hs.term, hs.commit, hs.vote) == (RESTORE_TERM, 3, 0)
            # It goes on from there: the next write gets the next revision.
            [r] = sm.apply([normal(4, etcd_command(1, "etcd_put", etcdpb.PutRequest(
                key=b"after", value=b"restore")))])
            assert r.revision == read_snapshot_file(path).revision + 1
        finally:
            sm.close()
            datadir.close()


def test_the_cluster_id_depends_on_the_file_and_the_members() -> None:
    a = restored_cluster_id(NEW_MEMBERS, b"\1" * 32)
    assert a == restored_cluster_id(dict(reversed(NEW_MEMBERS.items())), b"\1" * 32)
    assert a != restored_cluster_id(NEW_MEMBERS, b"\2" * 32)
    assert a != restored_cluster_id({**NEW_MEMBERS, 6: "127.0.0.1:9"}, b"\1" * 32)


def _refused(path: Path, target: Path, node_id: int = 4, **kwargs) -> str:
    with pytest.raises(RestoreError) as err:
        restore_data_dir(path, target, node_id, NEW_MEMBERS, **kwargs)
    message = str(err.value)
    assert "\n" not in message
    # Nothing left: neither the directory nor its staging copy.
    assert not target.exists() or not any(target.iterdir())
    assert not [p for p in target.parent.iterdir() if ".restore-" in p.name]
    return message


def test_a_non_empty_directory_is_refused(source, tmp_path: Path) -> None:
    path, _, _ = source
    target = tmp_path / "busy"
    target.mkdir()
    (target / "something").write_text("keep me")
    with pytest.raises(RestoreError, match="is not empty"):
        restore_data_dir(path, target, 4, NEW_MEMBERS)
    assert (target / "something").read_text() == "keep me"
    # An empty directory is fine (an operator's mount point).
    empty = tmp_path / "empty"
    empty.mkdir()
    assert restore_data_dir(path, empty, 4, NEW_MEMBERS).data_dir == empty
    assert (empty / "META").is_file()


def test_a_member_not_in_the_initial_cluster_is_refused(source, tmp_path: Path) -> None:
    path, _, _ = source
    assert "member 7 is not in the initial cluster" in _refused(path, tmp_path / "d", 7)


@pytest.mark.parametrize("damage, reason", [
    # A flipped byte fails the image's crc32, or, when it lands in a record's length,
    # leaves an image with no end: either way the file is refused, naming why.
    ("flip_image", "is not an intact kvraft snapshot|is truncated"),
    ("flip_padding", "fails its SHA-256 checksum"),
    ("flip_sha", "fails its SHA-256 checksum"),
    # Cut into the padding (the checksum fails) or into the image itself (no end).
    ("truncate", "fails its SHA-256 checksum|is truncated"),
    ("no_sha", "has no SHA-256 checksum after its image"),
    ("garbage", "not a kvraft snapshot stream"),
    ("empty", "is too short"),
])
def test_a_damaged_file_is_refused_with_one_line(source, tmp_path: Path, damage: str,
                                                  reason: str) -> None:
    path, _, image_bytes = source
    data = bytearray(path.read_bytes())
    if damage == "flip_image":
        data[len(data) // 3] ^= 0x40     # inside a record: the image's crc32 fails
    elif damage == "flip_padding":
        data[image_bytes] ^= 0x01        # zero padding, after the image's trailer
    elif damage == "flip_sha":
        data[-1] ^= 0x01
    elif damage == "truncate":
        del data[-100:]
    elif damage == "no_sha":
        del data[image_bytes:]           # the image alone
    elif damage == "garbage":
        data = bytearray(b"\x13" * 2048)
    elif damage == "empty":
        data = bytearray()
    bad = tmp_path / "bad.db"
    bad.write_bytes(bytes(data))
    with pytest.raises(SnapshotFileError, match=reason):
        read_snapshot_file(bad)
    message = _refused(bad, tmp_path / "target")
    assert message.startswith(f"snapshot file {bad}: ")
    assert re.search(reason, message), message


def test_an_image_without_its_sha256_is_read_only_when_told_to_skip_the_check(
        source, tmp_path: Path) -> None:
    path, expected, image_bytes = source
    data = path.read_bytes()[:image_bytes]
    raw = tmp_path / "raw.snap"
    raw.write_bytes(data)
    with pytest.raises(SnapshotFileError):
        read_snapshot_file(raw)
    info = read_snapshot_file(raw, verify_hash=False)
    assert info.total_keys == len(expected) and info.sha256 == b""
    result = restore_data_dir(raw, tmp_path / "d", 4, NEW_MEMBERS, verify_hash=False)
    assert result.cluster_id == restore_data_dir(raw, tmp_path / "e", 5, NEW_MEMBERS,
                                                 verify_hash=False).cluster_id


def test_what_an_interrupted_restore_left_is_removed_by_the_next(source, tmp_path: Path
                                                                 ) -> None:
    """A restore cut short by a crash leaves its staging directory (never DIR itself);
    the next restore of DIR removes it, but not one a running restore holds."""
    path, _, _ = source
    dead_pid = 2**22 + 7          # above Linux's pid_max: no such process
    stale = tmp_path / f".d.restore-{os.getpid()}-deadbeef"
    DataDir.open(stale, 4).close()                  # its lock is not held
    unlocked = tmp_path / f".d.restore-{dead_pid}-00000000"
    unlocked.mkdir()                                # killed before it locked anything
    running = DataDir.open(tmp_path / f".d.restore-{dead_pid}-0badf00d", 4)  # held
    starting = tmp_path / f".d.restore-{os.getpid()}-5ca1ab1e"
    starting.mkdir()                                # its (living) process will lock it
    try:
        restore_data_dir(path, tmp_path / "d", 4, NEW_MEMBERS)
        assert not stale.exists() and not unlocked.exists()
        assert running.path.exists() and starting.exists()
    finally:
        running.close()
