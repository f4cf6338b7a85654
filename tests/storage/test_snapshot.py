"""Snapshots: a consistent image at the applied index, streamed in bounded chunks,
checked on arrival, installed atomically (data and Raft log together)."""
from __future__ import annotations

from pathlib import Path

import pytest

from kvraft.raft import eraftpb
from kvraft.raft.errors import SnapshotTemporarilyUnavailableError
from kvraft.storage import (
    CompactionPolicy,
    DataDir,
    KVStateMachine,
    LevelDBStorage,
    MemberRecord,
    SnapshotStreamError,
    keys,
    open_store,
    put_command,
)
from kvraft.storage.snapshot import StagedSnapshot
from kvraft.storage.snapshot_install import encode_marker


def fill(sm: KVStateMachine, store: LevelDBStorage, first: int, count: int,
         term: int = 1, value: bytes = b"v") -> None:
    entries = [eraftpb.Entry(index=i, term=term, data=put_command(b"k%06d" % i, value))
               for i in range(first, first + count)]
    store.persist(entries, eraftpb.HardState(term=term, commit=first + count - 1))
    sm.apply(entries)


def transfer(handle, receiver, chunk_bytes: int = 1000) -> StagedSnapshot:
    for chunk in handle.chunks(chunk_bytes):
        assert len(chunk) <= chunk_bytes
        receiver.write(chunk)
    return receiver.finish()


def test_round_trip_replaces_data_members_and_log(tmp_path: Path) -> None:
    with DataDir.open(tmp_path / "a", 1) as a, DataDir.open(tmp_path / "b", 2) as b:
        src_store, src = LevelDBStorage(a), KVStateMachine(a)
        src_store.initialize(eraftpb.ConfState(voters=[1, 2]))
        src.initialize_members([MemberRecord(1, "p1", "c1"), MemberRecord(2, "p2", "c2")])
        fill(src, src_store, 1, 300, term=3)
        dst_store, dst = LevelDBStorage(b), KVStateMachine(b)
        fill(dst, dst_store, 1, 50, term=1, value=b"old")  # a stale follower's state
        dst_store.persist([eraftpb.Entry(index=51, term=1)], None)  # and a log past it
        with src.create_snapshot() as handle:
            fill(src, src_store, 301, 10, term=3)  # applies continue meanwhile
            assert (handle.metadata.index, handle.metadata.term) == (300, 3)
            staged = transfer(handle, dst.receive_snapshot(handle.metadata))
        assert staged.record_count == 302
        dst.install_snapshot(staged, dst_store)
        snap = eraftpb.Snapshot()
        snap.metadata.CopyFrom(staged.metadata)
        dst_store.persist([], None, snap)  # the Ready's own persist: already in place
        assert (dst.applied_index, dst.applied_term) == (300, 3)
        assert dst.get(b"k000300") == b"v" and dst.get(b"k000301") is None
        assert dst.scan(b"", b"", 0)[0] == [(b"k%06d" % i, b"v") for i in range(1, 301)]
        assert dst.members() == src.members()
        assert (dst_store.first_index(), dst_store.last_index()) == (301, 300)
        assert dst_store.term(300) == 3
        state = dst_store.initial_state()
        assert state.hard_state.commit == 300 and list(state.conf_state.voters) == [1, 2]
        assert not list(b.snap_dir.iterdir())  # the staged file is gone once installed


def test_corrupted_truncated_or_foreign_streams_are_refused(tmp_path: Path) -> None:
    with DataDir.open(tmp_path / "a", 1) as a, DataDir.open(tmp_path / "b", 2) as b:
        src_store, src = LevelDBStorage(a), KVStateMachine(a)
        fill(src, src_store, 1, 100)
        dst = KVStateMachine(b)
        with src.create_snapshot() as handle:
            stream = b"".join(handle.chunks(4096))
            flipped = bytearray(stream)
            flipped[len(stream) // 2] ^= 0x01
            receiver = dst.receive_snapshot(handle.metadata)
            with pytest.raises(SnapshotStreamError, match="fails its check"):
                receiver.write(bytes(flipped))
            receiver = dst.receive_snapshot(handle.metadata)
            receiver.write(stream[:-5])
            with pytest.raises(SnapshotStreamError, match="before its trailer"):
                receiver.finish()
            other = eraftpb.SnapshotMetadata(index=7, term=1)
            with pytest.raises(SnapshotStreamError, match="expected 7/1"):
                dst.receive_snapshot(other).write(stream)
            receiver = dst.receive_snapshot(handle.metadata)
            receiver.write(stream)
            with pytest.raises(SnapshotStreamError, match="after the end"):
                receiver.write(b"x")
        assert not list(b.snap_dir.iterdir())  # refused streams leave nothing behind


def test_raft_snapshot_provider_keeps_images_for_the_sender(datadir: DataDir) -> None:
    store, sm = LevelDBStorage(datadir), KVStateMachine(datadir, snapshot_handles_max=2)
    datadir.set_cluster_id(5)
    store.set_snapshot_provider(sm.raft_snapshot)
    fill(sm, store, 1, 10)
    with pytest.raises(SnapshotTemporarilyUnavailableError):
        store.snapshot(11, 2)
    snaps = []
    for i in range(3):
        snaps.append(store.snapshot(0, 2))
        fill(sm, store, 11 + i, 1)
    assert [s.metadata.index for s in snaps] == [10, 11, 12]
    from kvraft.proto import command_pb2
    desc = command_pb2.SnapshotDescriptor.FromString(snaps[2].data)
    assert (desc.index, desc.from_node, desc.cluster_id) == (12, 1, 5)
    assert sm.snapshot_handle(10, 1) is None  # evicted: at most 2 kept
    handle = sm.snapshot_handle(12, 1)
    assert handle is not None and handle.metadata == snaps[2].metadata
    fill(sm, store, 14, 1)
    assert store.snapshot(0, 3).metadata == store.snapshot(0, 4).metadata  # shared image
    assert sm.snapshot_handle(11, 1) is None and sm.snapshot_handle(12, 1) is handle
    stream = handle.chunks(64)
    first_chunk = next(stream)
    fill(sm, store, 15, 1)
    store.snapshot(0, 2)  # evicts (12, 1) while its stream is being read
    assert sm.snapshot_handle(12, 1) is None and handle.closed
    rest = b"".join(stream)  # the running stream still completes
    receiver = sm.receive_snapshot(handle.metadata)
    receiver.write(first_chunk + rest)
    assert receiver.finish().record_count == 12
    with pytest.raises(SnapshotStreamError, match="closed"):
        next(handle.chunks(64))
    sm.close()


def test_compaction_policy_keeps_a_trailing_window(datadir: DataDir) -> None:
    store, sm = LevelDBStorage(datadir), KVStateMachine(datadir)
    policy = CompactionPolicy(snapshot_entries=100, snapshot_log_bytes=1 << 30,
                              trailing_entries=20)
    fill(sm, store, 1, 99)
    assert store.maybe_compact(sm.applied_index, policy) is None
    fill(sm, store, 100, 1)
    assert store.maybe_compact(sm.applied_index, policy) == 81
    assert store.first_index() == 81 and store.term(80) == 1
    assert len(store.entries(81, 101)) == 20
    by_bytes = CompactionPolicy(snapshot_entries=10**6, snapshot_log_bytes=100,
                                trailing_entries=5)
    assert store.maybe_compact(sm.applied_index, by_bytes) == 96


def test_interrupted_compaction_leaves_no_garbage_after_reopen(tmp_path: Path) -> None:
    """Compaction writes the new offset first; keys below it are garbage a crash may
    leave behind, removed on the next open."""
    with DataDir.open(tmp_path / "d", 1) as dd:
        store, sm = LevelDBStorage(dd), KVStateMachine(dd)
        fill(sm, store, 1, 30)
        dd.db.put(keys.LOG_OFFSET, keys.pack_index_term(10, 1), sync=True)  # "crash" here
    with DataDir.open(tmp_path / "d", 1) as dd:
        store = LevelDBStorage(dd)
        assert store.first_index() == 11 and store.last_index() == 30
        assert next(dd.db.iterator(prefix=keys.LOG_PREFIX, include_value=False)) == \
            keys.log_key(11)


def test_install_interrupted_after_its_marker_is_redone_on_open(tmp_path: Path) -> None:
    with DataDir.open(tmp_path / "a", 1) as a:
        src_store, src = LevelDBStorage(a), KVStateMachine(a)
        fill(src, src_store, 1, 200, value=b"new")
        with src.create_snapshot() as handle:
            stream = list(handle.chunks(512))
            meta = handle.metadata
    with DataDir.open(tmp_path / "b", 2) as b:
        dst_store, dst = LevelDBStorage(b), KVStateMachine(b)
        fill(dst, dst_store, 1, 20, value=b"old")
        receiver = dst.receive_snapshot(meta)
        for chunk in stream:
            receiver.write(chunk)
        staged = receiver.finish()
        # Simulate a crash right after the marker and part of the new data landed.
        b.db.put(keys.INSTALLING, encode_marker(staged.path.name, meta), sync=True)
        b.db.put(keys.kv_key(b"k000001"), b"half", sync=True)
    with open_store(tmp_path / "b", 2) as opened:
        b, sm, store = opened.datadir, opened.sm, opened.log
        assert sm.applied_index == 200
        assert sm.scan(b"", b"", 0)[0] == [(b"k%06d" % i, b"new") for i in range(1, 201)]
        assert store.first_index() == 201 and store.hard_state().commit == 200
        assert b.db.get(keys.INSTALLING) is None and not list(b.snap_dir.iterdir())


def test_missing_staged_file_of_an_interrupted_install_is_damage(tmp_path: Path) -> None:
    from kvraft.storage import DataDirError
    with DataDir.open(tmp_path / "b", 2) as b:
        b.db.put(keys.INSTALLING, encode_marker("gone.snap", eraftpb.SnapshotMetadata(
            index=5, term=1)), sync=True)
    with pytest.raises(DataDirError, match=r"interrupted snapshot install needs .*gone\.snap"):
        open_store(tmp_path / "b", 2)


def test_the_trailing_window_is_bounded_in_bytes_too(datadir: DataDir) -> None:
    """Large entries (bulk-load batches): the window keeps at most trailing_bytes of
    them, so the log a restart reads does not grow with the data."""
    store, sm = LevelDBStorage(datadir), KVStateMachine(datadir)
    fill(sm, store, 1, 50)
    size = store.log_bytes() // 50
    policy = CompactionPolicy(snapshot_entries=10**6, snapshot_log_bytes=10 * size,
                              trailing_entries=40, trailing_bytes=5 * size)
    assert store.maybe_compact(sm.applied_index, policy) == 46
    assert store.first_index() == 46
    assert store.compaction_target(sm.applied_index, policy) is None
def test_the_state_machine_refuses_a_directory_whose_install_is_unfinished(
        tmp_path: Path) -> None:
    """Recovery is the opener's (open_store), not DataDir.open's: a state machine opened
    on the directory alone would read half-installed data, so it refuses; the log
    opens (it is the old one, whole, until the install's final batch)."""
    from kvraft.storage import DataDirError
    with DataDir.open(tmp_path / "b", 2) as b:
        LevelDBStorage(b).initialize(eraftpb.ConfState(voters=[2]))
        b.db.put(keys.INSTALLING, encode_marker("x.snap", eraftpb.SnapshotMetadata(
            index=5, term=1)), sync=True)
    with DataDir.open(tmp_path / "b", 2) as b:
        assert b.db.get(keys.INSTALLING) is not None  # DataDir.open left it alone
        assert LevelDBStorage(b).initial_state().conf_state.voters == [2]
        with pytest.raises(DataDirError, match=r"interrupted snapshot install: open it "
                                               r"with kvraft.storage.open_store"):
            KVStateMachine(b)
