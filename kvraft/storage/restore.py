"""Restoring a backup: the data directory of a member of a NEW cluster, made from a
snapshot file (snapshot_file.py), for `kvraft snapshot restore` (SPEC §7).

What the directory holds, so that `kvraft serve` on it starts that member of the new
cluster with the backup's data (etcd's `snapshot restore` does the same to its WAL):
* the image's data: the MVCC records (every key's latest and older revisions, the
  events, the leases, the revision and compact revision, the cluster version) and the
  records of the layout before MVCC, as they were. Not the image's alarms: they name
  members of the old cluster (a NOSPACE alarm is raised again if it still applies);
* the new cluster's members — the given --initial-cluster, all voters — as member
  records with their peer addresses and no incarnation (each member's own is recorded
  when it first publishes, storage_adapter.publish_self_command), and as the conf state;
* a fresh Raft log that starts right after a snapshot at index RESTORE_INDEX(members)
  and term RESTORE_TERM, which the state machine has applied: a member added later is
  sent the data as a snapshot, exactly as if it had been compacted into one;
* a new cluster id, derived from the members AND the file's checksum
  (`restored_cluster_id`): every member restored from the same file with the same
  --initial-cluster computes the same one, it is never the old cluster's (that one is
  derived from the founding members alone, storage_adapter/config.cluster_id_for), and
  members restored from different files refuse each other, as they must.

Atomic and durable: the directory is built aside (`.<name>.restore-<pid>-<random>` beside
it): every LevelDB write a synced batch, the commit point (log, hard state, applied
index) one synced batch, then every file and the directory fsynced, read back and
checked, and only then renamed to its name (and the parent fsynced). So DIR is either
absent/empty or a whole restored member, never a half-restored one that `kvraft serve`
could mistake for an empty directory and bootstrap (a staging directory a crash left
is removed by the next restore of DIR). A file that fails a check leaves
nothing (its checksums are verified before anything is written, and again while the
data is copied). Refusals (a non-empty DIR, a bad file, an id not in the members) are
RestoreError, one line.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from kvraft.proto import eraftpb_pb2 as eraftpb
from kvraft.storage import keys
from kvraft.storage.commands import MemberRecord
from kvraft.storage.datadir import (
    DB_NAME,
    LOCK_NAME,
    DataDir,
    DataDirError,
    fsync_dir,
    fsync_file,
)
from kvraft.storage.log_store import LevelDBStorage
from kvraft.storage.mvcc import layout as mvcc_layout
from kvraft.storage.snapshot import TAG_KV, TAG_MVCC, TAG_PREFIXES
from kvraft.storage.snapshot_file import (
    SnapshotFileError,
    SnapshotFileInfo,
    iter_snapshot_file,
    read_snapshot_file,
)

RESTORE_TERM = 1
RESTORE_BATCH_BYTES = 4 << 20   # bytes of puts per (synced) batch while copying
STAGING_INFIX = ".restore-"


class RestoreError(Exception):
    """The restore cannot be done. str(e) is one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(" ".join(str(reason).split()))


@dataclass(frozen=True)
class RestoreResult:
    data_dir: Path
    node_id: int
    cluster_id: int
    members: dict[int, str]
    index: int           # the fresh log's snapshot index (the applied index)
    info: SnapshotFileInfo


def restore_index(members: dict[int, str]) -> int:
    """The index of the restored snapshot: one per member, as if each had been added by
    its own conf change (etcd's restore does the same), so that index is above 0."""
    return len(members)


def restored_cluster_id(members: dict[int, str], file_checksum: bytes) -> int:
    """The new cluster's id (module docstring): non-zero, a uint64."""
    canonical = ",".join(f"{i}={members[i]}" for i in sorted(members))
    digest = hashlib.sha256(b"kvraft-restore\0" + canonical.encode() + b"\0" +
                            file_checksum).digest()
    return int.from_bytes(digest[:8], "big") or 1


def _file_checksum(info: SnapshotFileInfo) -> bytes:
    """The SHA-256 the file carries, or (checked without it) one of its image's crc32
    and metadata, which identifies the image as well."""
    if info.sha256:
        return info.sha256
    return hashlib.sha256(b"%d/%d/%d/%d" % (info.crc32, info.record_count,
                                            info.metadata.index, info.metadata.term)).digest()


def _check_target(target: Path) -> None:
    if target.exists() or target.is_symlink():
        if not target.is_dir():
            raise RestoreError(f"data directory {target} exists and is not a directory")
        if any(target.iterdir()):
            raise RestoreError(f"data directory {target} is not empty: restore makes a "
                               "new member's directory (remove it or choose another)")


def _staging_name(target: Path) -> str:
    """`.<name>.restore-<pid>-<random>`: the pid tells whether its maker still runs."""
    return f".{target.name}{STAGING_INFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _in_use(staging: Path) -> bool:
    """Whether a running restore is building `staging`: it holds the lock of the data
    directory in it, or (before it has one) its process, named in it, still runs."""
    try:
        fd = os.open(staging / LOCK_NAME, os.O_RDWR)
    except OSError:
        pid = staging.name.rsplit(STAGING_INFIX, 1)[-1].split("-", 1)[0]
        if not pid.isdigit():
            return True    # not one of ours: leave it alone
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)   # releases the lock if it was taken
    return False


def _remove_stale_staging(target: Path) -> None:
    """Remove what restores of `target` cut short (a crash, a power cut) left beside
    it: staging directories no running restore is building."""
    for stale in target.parent.glob(f".{target.name}{STAGING_INFIX}*"):
        if stale.is_dir() and not _in_use(stale):
            shutil.rmtree(stale, ignore_errors=True)


def _kept(tag: int, key: bytes) -> bool:
    """Whether an image record is copied (members are replaced; alarms dropped)."""
    if tag == TAG_KV:
        return True
    if tag == TAG_MVCC:
        return not (mvcc_layout.PREFIX + key).startswith(mvcc_layout.ALARM_PREFIX)
    return False


def restore_data_dir(snapshot_path: str | Path, data_dir: str | Path, node_id: int,
                     members: dict[int, str], *, verify_hash: bool = True) -> RestoreResult:
    """Make `data_dir`, member `node_id`'s directory of the new cluster `members`
    (id -> peer HOST:PORT), holding the snapshot file's data (module docstring)."""
    if node_id <= 0:
        raise RestoreError(f"member id must be a positive integer, got {node_id}")
    if node_id not in members:
        raise RestoreError(f"member {node_id} is not in the initial cluster "
                           f"({', '.join(map(str, sorted(members)))})")
    target = Path(data_dir).absolute()
    _check_target(target)
    try:
        # Every check of the file before anything is written.
        info = read_snapshot_file(snapshot_path, verify_hash=verify_hash)
    except SnapshotFileError as e:
        raise RestoreError(str(e)) from None
    cluster_id = restored_cluster_id(members, _file_checksum(info))
    index = restore_index(members)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RestoreError(f"cannot create {target.parent}: {e.strerror}") from None
    _remove_stale_staging(target)
    staging = target.parent / _staging_name(target)
    try:
        _build(staging, snapshot_path, node_id, members, cluster_id, index, info,
               verify_hash)
        _check_built(staging, node_id, cluster_id, members, index)
        _check_target(target)   # nobody made it meanwhile
        if target.exists():
            target.rmdir()      # empty (checked): the rename takes its place
        os.rename(staging, target)
        fsync_dir(target.parent)
    except SnapshotFileError as e:
        raise RestoreError(str(e)) from None
    except DataDirError as e:
        raise RestoreError(str(e)) from None
    except OSError as e:
        raise RestoreError(f"cannot make data directory {target}: {e.strerror or e}") from None
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return RestoreResult(target, node_id, cluster_id, dict(members), index, info)


def _build(staging: Path, snapshot_path: str | Path, node_id: int, members: dict[int, str],
           cluster_id: int, index: int, info: SnapshotFileInfo, verify_hash: bool) -> None:
    datadir = DataDir.open(staging, node_id)
    try:
        assert datadir.is_new and datadir.cluster_id == 0
        # The cluster id first (as a bootstrap does, storage_adapter._bootstrap): a
        # directory never holds Raft state without one.
        datadir.set_cluster_id(cluster_id)
        db = datadir.db
        # Synced batches (snapshot_install.py's reasoning; here they also keep memory
        # bounded). They are garbage until the commit batch below, and the directory
        # is not at its name until the end.
        batch = db.write_batch(sync=True)
        pending = 0
        copied = 0
        for tag, key, value in iter_snapshot_file(snapshot_path, verify_hash=verify_hash):
            if not _kept(tag, key):
                continue
            full = TAG_PREFIXES[tag] + key
            batch.put(full, value)
            pending += len(full) + len(value)
            copied += 1
            if pending >= RESTORE_BATCH_BYTES:
                batch.write()
                batch, pending = db.write_batch(sync=True), 0
        batch.write()
        conf_state = eraftpb.ConfState(voters=sorted(members))
        meta = eraftpb.SnapshotMetadata(index=index, term=RESTORE_TERM)
        meta.conf_state.CopyFrom(conf_state)
        carried: dict[bytes, bytes | None] = {
            keys.APPLIED: keys.pack_index_term(index, RESTORE_TERM),
        }
        for member_id in sorted(members):
            record = MemberRecord(member_id, members[member_id])
            carried[keys.member_key(member_id)] = record.to_proto().SerializeToString()
        # The commit point, one synced batch: the log starts after the snapshot `meta`
        # (hard state term RESTORE_TERM, commit `index`), conf state, applied index and
        # the member records (LevelDBStorage.write_snapshot_install).
        LevelDBStorage(datadir).write_snapshot_install(meta, carried)
        datadir.make_db_names_durable()
    finally:
        datadir.close()
    # LevelDB may have written files at close (a compaction): make every file and name
    # durable before the directory gets its name.
    db_path = staging / DB_NAME
    for child in db_path.iterdir():
        with contextlib.suppress(FileNotFoundError):
            fsync_file(child)
    fsync_dir(db_path)
    fsync_dir(staging)


def _check_built(staging: Path, node_id: int, cluster_id: int, members: dict[int, str],
                 index: int) -> None:
    """Read the directory back and check what `kvraft serve` will rely on."""
    with DataDir.open(staging, node_id, create=False) as datadir:
        log = LevelDBStorage(datadir)
        state = log.initial_state()
        applied = datadir.db.get(keys.APPLIED)
        held = {m for m in members if datadir.db.get(keys.member_key(m)) is not None}
        ok = (datadir.cluster_id == cluster_id and not datadir.is_new and
              list(state.conf_state.voters) == sorted(members) and
              state.hard_state.commit == index and log.first_index() == index + 1 and
              log.last_index() == index and applied is not None and
              keys.unpack_index_term(applied) == (index, RESTORE_TERM) and
              held == set(members))
    if not ok:
        raise RestoreError(f"the restored directory {staging} reads back wrong")
