"""Installing a staged snapshot (snapshot.py stages it): the state machine AND the Raft
log are replaced by it, atomically across crashes (thesis §5.3: a follower that
receives a snapshot discards its log).

`install_staged`: a durable "installing" marker is written first; then the old data is
cleared and the staged image loaded in bounded batches; a final synced batch sets the
applied index, applies the snapshot to the Raft log and removes the marker. The log's
part of that batch is the log store's (`LevelDBStorage.write_snapshot_install`), which
holds its writer lock for it. If the process dies in between, the code that opens the
store (`open_store`, store.py) calls `recover_unfinished_install`, which finds the marker
and redoes the install from the staged file — before the state machine is opened, which
refuses a directory with the marker (it would read a half-installed state). So after any
crash the store is entirely old (no marker yet) or entirely new.

Why that holds across a power loss, not only a crash of the process: every batch of the
install is written with sync=True, so each is durable before the next is written, and
the final batch that removes the marker can only survive if all the clearing and
loading before it did. (Unsynced batches would not do: LevelDB may lose an unsynced
write in an older log file while a later synced one survives, see apply_buffer.py.)
The staged file is fsynced (file and directory) before the marker names it, and is
deleted only after the final batch. Cost: one fsync per INSTALL_BATCH_BYTES loaded or
CLEAR_BATCH_KEYS cleared, small beside writing that much.

Marker (the value of keys.INSTALLING): u32 length, SnapshotMetadata, the staged file's
name in `<data-dir>/snap/`.
"""
from __future__ import annotations

import contextlib
import struct
from pathlib import Path

import plyvel

from kvraft.proto import eraftpb_pb2 as eraftpb
from kvraft.storage import keys
from kvraft.storage.datadir import DataDir, DataDirError
from kvraft.storage.log_store import LevelDBStorage
from kvraft.storage.snapshot import (
    PARTIAL_SUFFIX,
    STAGED_SUFFIX,
    TAG_PREFIXES,
    SnapshotStreamError,
    StagedSnapshot,
    iter_staged_records,
)

INSTALL_BATCH_BYTES = 4 << 20  # bytes of puts per (synced) batch while installing
CLEAR_BATCH_KEYS = 10_000      # deletes per (synced) batch while clearing old data
_LEN = struct.Struct(">I")


def encode_marker(staged_name: str, meta: eraftpb.SnapshotMetadata) -> bytes:
    raw = meta.SerializeToString()
    return _LEN.pack(len(raw)) + raw + staged_name.encode()


def decode_marker(value: bytes) -> tuple[str, eraftpb.SnapshotMetadata]:
    (meta_len,) = _LEN.unpack_from(value, 0)
    meta = eraftpb.SnapshotMetadata.FromString(value[_LEN.size: _LEN.size + meta_len])
    return value[_LEN.size + meta_len:].decode(), meta


def install_pending(datadir: DataDir) -> bool:
    """Whether an install was interrupted and not yet redone (the marker is durable)."""
    return datadir.db.get(keys.INSTALLING) is not None


def _clear_prefix(db: plyvel.DB, prefix: bytes) -> None:
    """Delete every key under `prefix`, in synced batches (see the module docstring)."""
    batch = db.write_batch(sync=True)
    pending = 0
    with db.iterator(prefix=prefix, include_value=False) as it:
        for key in it:
            batch.delete(key)
            pending += 1
            if pending >= CLEAR_BATCH_KEYS:
                batch.write()
                batch, pending = db.write_batch(sync=True), 0
    if pending:
        batch.write()


def install_staged(datadir: DataDir, staged: StagedSnapshot,
                   log_store: LevelDBStorage) -> None:
    """Replace state machine and Raft log by `staged`, atomically across crashes."""
    assert staged.path.parent == datadir.snap_dir, "staged snapshot outside the data dir"
    datadir.db.put(keys.INSTALLING, encode_marker(staged.path.name, staged.metadata),
                   sync=True)
    _redo_install(datadir, staged.path, staged.metadata, log_store)


def _redo_install(datadir: DataDir, path: Path, meta: eraftpb.SnapshotMetadata,
                  log_store: LevelDBStorage) -> None:
    db = datadir.db
    # Every batch below is synced: the final one (which removes the marker) must not
    # be able to survive a power loss that some earlier clearing or loading did not.
    for prefix in TAG_PREFIXES.values():
        _clear_prefix(db, prefix)
    batch = db.write_batch(sync=True)
    pending_bytes = 0
    for tag, key, value in iter_staged_records(path, meta):
        full_key = TAG_PREFIXES[tag] + key
        batch.put(full_key, value)
        pending_bytes += len(full_key) + len(value)
        if pending_bytes >= INSTALL_BATCH_BYTES:
            batch.write()
            batch, pending_bytes = db.write_batch(sync=True), 0
    if pending_bytes:
        batch.write()
    # The commit point: the log's rewrite, the applied index and the marker's removal in
    # one synced batch (the log store writes it, under its writer lock).
    log_store.write_snapshot_install(meta, {
        keys.APPLIED: keys.pack_index_term(meta.index, meta.term),
        keys.INSTALLING: None,
    })
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def recover_unfinished_install(datadir: DataDir, log_store: LevelDBStorage) -> None:
    """At open, before the state machine is opened: finish an install a crash
    interrupted; drop stale staged and partial files. `log_store` is the Raft log of
    `datadir`, just opened (its log is the old one, whole, until the final batch)."""
    marker = datadir.db.get(keys.INSTALLING)
    keep: str | None = None
    if marker is not None:
        try:
            keep, meta = decode_marker(marker)
        except Exception as e:
            raise DataDirError(datadir.path, f"is damaged: snapshot install marker is "
                                             f"unreadable ({e})") from e
        path = datadir.snap_dir / keep
        if not path.exists():
            raise DataDirError(datadir.path, f"is damaged: an interrupted snapshot install "
                                             f"needs {path}, which is missing")
        try:
            _redo_install(datadir, path, meta, log_store)
        except SnapshotStreamError as e:
            raise DataDirError(datadir.path, f"is damaged: staged snapshot {path} is "
                                             f"unreadable ({e})") from e
        keep = None
    for stale in datadir.snap_dir.iterdir():
        if stale.name != keep and stale.suffix in (STAGED_SUFFIX, PARTIAL_SUFFIX):
            stale.unlink()
