"""A node's data directory: identity record, exclusive lock, and the LevelDB.

    <dir>/META   one line of JSON: format, format version, node id, cluster id, crc32;
                 incarnation, incarnation_crc32 (see below)
    <dir>/LOCK   flock'ed while a process uses the directory; holds that process's pid
    <dir>/db/    the node's LevelDB (see keys.py for its layout)
    <dir>/db.new/  a LevelDB being made, fsync'd whole before it is renamed to db/
    <dir>/snap/  snapshots being received or waiting to be installed

Every refusal is a DataDirError whose message is one line naming the directory and the
reason, so the CLI can print it as is. Nothing here ever resets or recreates a
directory that holds state: a damaged or foreign directory is reported, not repaired.

The incarnation is a random 64-bit number drawn when the directory is made: it names
THIS copy of the node's state. The cluster remembers each member's incarnation (in
its member record) and refuses a member that comes back with another one — a data
directory replaced by an empty or foreign one, which would otherwise bootstrap again
with no memory of its votes and acknowledged entries (issue 11, item 7). It is an
addition to format version 1, not a new version: its own crc covers it (the original
crc32 still covers the original fields, so an older kvraft reads the record), and a
directory without one gets one at open, written atomically.

Format versions: 1, the layout before MVCC; 2 (this kvraft), whose log may hold
entries an older kvraft cannot apply (etcd's requests, the cluster version) and whose
state may hold the MVCC store (storage/mvcc_apply.py). A version-1 directory is raised
to 2 when this kvraft opens it — its data stays in the version-1 layout until the
cluster version says otherwise — so an older kvraft refuses it from then on instead
of misapplying its log. There is no way back: a rolling upgrade goes forward only.

Durability of the files here: META is replaced atomically (write, fsync, rename, fsync
the directory), so after a power loss it is the old record or the new one. A new data
directory's own entry is fsynced in its parent before anything is written in it.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import threading
import time
import zlib
from pathlib import Path
from types import TracebackType

import plyvel

from kvraft.storage import keys
from kvraft.storage.apply_buffer import ApplyBuffer

FORMAT_NAME = "kvraft-data-dir"
FORMAT_VERSION = 2
READABLE_FORMAT_VERSIONS = (1, 2)   # 1 is raised to 2 at open
META_NAME = "META"
LOCK_NAME = "LOCK"
DB_NAME = "db"
STAGING_SUFFIX = ".new"   # db.new/: a database being made (DataDir._create_db)
SNAP_DIR_NAME = "snap"
META_BYTES_MAX = 4096
# Table files LevelDB keeps open. It maps each open table into memory, and every page a
# read touched (a restart's log scan, a snapshot streamed to a follower, a compaction)
# counts in the process's RSS until the table is closed: this bounds that part of a
# node's memory to about (DB_MAX_OPEN_FILES - 10) x 2 MiB tables, whatever the size of
# the data (issue 11, item 9). LevelDB's default, 1,000, bounds nothing in practice.
DB_MAX_OPEN_FILES = 100
# Longer than a tick of the coarse clock file systems take timestamps from (a jiffy,
# at most 10 ms): see DataDir.make_db_names_durable.
TIMESTAMP_TICK_NS = 50_000_000


class DataDirError(Exception):
    """The data directory cannot be used. str(e) is one line: the directory and why."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = " ".join(str(reason).split())  # one line, whatever the cause says
        super().__init__(f"data directory {self.path}: {self.reason}")


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    """Make a file's contents durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_atomically(path: Path, data: bytes) -> None:
    """Write, fsync, rename over `path`, fsync the directory: old or new, never torn."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _meta_crc(node_id: int, cluster_id: int, version: int) -> int:
    return zlib.crc32(f"{FORMAT_NAME}:{version}:{node_id}:{cluster_id}".encode())


def _incarnation_crc(node_id: int, cluster_id: int, version: int, incarnation: int) -> int:
    return zlib.crc32(
        f"{FORMAT_NAME}:{version}:{node_id}:{cluster_id}:{incarnation}".encode())


def new_incarnation() -> int:
    """A random, non-zero 64-bit incarnation (0 means "unknown" in member records)."""
    return secrets.randbits(64) or 1


class DataDir:
    """An opened, locked data directory of one node. Use `DataDir.open`."""

    def __init__(self, path: Path, node_id: int, cluster_id: int, db: plyvel.DB,
                 lock_fd: int, is_new: bool, incarnation: int = 0) -> None:
        self.path = path
        self.node_id = node_id
        self.cluster_id = cluster_id
        self.incarnation = incarnation  # of this data directory (module docstring); > 0
        self.db = db
        self.is_new = is_new  # True when the directory held no Raft state when opened
        # The state machine's writes not yet in LevelDB (apply_buffer.py); shared by the
        # state machine (which fills it) and the Raft log (whose synced writes carry it).
        self.apply_buffer = ApplyBuffer(db)
        self._lock_fd: int | None = lock_fd
        # db/'s mtime when its entries were last fsync'd by `make_db_names_durable`,
        # kept only once the file system's clock has ticked past it (None: fsync again).
        # Invariant: while db/'s mtime equals it, every name in db/ is durable.
        self._db_names_synced_mtime_ns: int | None = None
        self._db_names_lock = threading.Lock()

    @property
    def snap_dir(self) -> Path:
        return self.path / SNAP_DIR_NAME

    # --- opening ------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, node_id: int, *, create: bool = True,
             write_buffer_bytes: int | None = None) -> DataDir:
        """Open (and with `create`, make) the data directory of node `node_id`.

        `write_buffer_bytes` sizes LevelDB's memtable (None: LevelDB's default).

        Refuses, with a DataDirError: a directory of another node or of an unknown
        format version, one locked by a running process, a damaged one (unreadable
        META, a database without META, LevelDB corruption).

        Only the directory: finishing a snapshot install a crash interrupted needs the
        Raft log too, and is the opener's (`open_store`, store.py).
        """
        if node_id <= 0:
            raise DataDirError(path, f"node id must be a positive integer, got {node_id}")
        path = Path(path).absolute()
        if path.exists() and not path.is_dir():
            raise DataDirError(path, "exists but is not a directory")
        if not path.exists():
            if not create:
                raise DataDirError(path, "does not exist")
            try:
                path.mkdir(parents=True)
                fsync_dir(path.parent)  # the new directory's entry survives a power loss
            except OSError as e:
                raise DataDirError(path, f"cannot be created: {e.strerror}") from e
        lock_fd = cls._lock(path)
        try:
            return cls._open_locked(path, node_id, create, lock_fd, write_buffer_bytes)
        except BaseException:
            os.close(lock_fd)  # releases the flock
            raise

    @staticmethod
    def _lock(path: Path) -> int:
        try:
            fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise DataDirError(path, f"cannot open the lock file: {e.strerror}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DataDirError(
                path, f"is locked by another running process (pid {holder})"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd

    @classmethod
    def _open_locked(cls, path: Path, node_id: int, create: bool, lock_fd: int,
                     write_buffer_bytes: int | None) -> DataDir:
        meta_path = path / META_NAME
        db_path = path / DB_NAME
        if meta_path.exists():
            meta_node, cluster_id, incarnation, version = cls._read_meta(path)
            if meta_node != node_id:
                raise DataDirError(
                    path, f"belongs to node {meta_node}, not node {node_id}"
                )
            if not (db_path / "CURRENT").exists():
                if cluster_id != 0:
                    raise DataDirError(path, "is damaged: META is present but the "
                                             f"database {DB_NAME}/ is missing")
                # A power cut while the directory was being made, after META and
                # before the database was in place: nothing was ever stored (a
                # cluster id is recorded before any Raft state), so finish making it.
                cls._create_db(path, db_path, write_buffer_bytes)
            if incarnation == 0:  # written by a kvraft before incarnations: add one
                incarnation = new_incarnation()
                cls._write_meta(path, node_id, cluster_id, incarnation)
            elif version != FORMAT_VERSION:
                cls._write_meta(path, node_id, cluster_id, incarnation)
        else:
            if db_path.exists():
                raise DataDirError(path, "is damaged: a database is present but META "
                                         "is missing")
            if not create:
                raise DataDirError(path, "holds no kvraft data (no META record)")
            cluster_id = 0
            incarnation = new_incarnation()
            cls._write_meta(path, node_id, cluster_id, incarnation)
            cls._create_db(path, db_path, write_buffer_bytes)
        db = cls._open_db(path, db_path, write_buffer_bytes)
        try:
            is_new = next(db.iterator(prefix=keys.RAFT_PREFIX, include_value=False),
                          None) is None
            datadir = cls(path, node_id, cluster_id, db, lock_fd, is_new, incarnation)
            (path / SNAP_DIR_NAME).mkdir(exist_ok=True)
        except BaseException:
            db.close()
            raise
        return datadir

    @classmethod
    def _create_db(cls, path: Path, db_path: Path, write_buffer_bytes: int | None) -> None:
        """Make an empty LevelDB at `db_path` that survives a power cut whole.

        LevelDB 1.22 (the one plyvel 1.5 bundles) writes a new database's first MANIFEST
        without an fsync, yet syncs CURRENT, which names it: after a power cut CURRENT
        can point to an empty MANIFEST, and the database never opens again ("no
        meta-nextfile entry in descriptor"; found by tests/powerloss's bootstrap sweep).
        So the database is made aside, every file and the directory are fsync'd, and
        only then is it renamed into place (and the rename made durable)."""
        staging = path / (DB_NAME + STAGING_SUFFIX)
        try:
            if staging.exists():
                shutil.rmtree(staging)    # an earlier attempt cut short: never used
            cls._open_db(path, staging, write_buffer_bytes).close()
            for child in staging.iterdir():
                fsync_file(child)
            fsync_dir(staging)
            os.rename(staging, db_path)
            fsync_dir(path)
        except OSError as e:
            raise DataDirError(path, f"cannot create the database: {e.strerror}") from e

    @staticmethod
    def _open_db(path: Path, db_path: Path, write_buffer_bytes: int | None) -> plyvel.DB:
        # paranoid_checks: corruption found while opening (a damaged MANIFEST, a WAL
        # record failing its checksum) is an error, not silently skipped. A record torn
        # by a crash at the very end of the WAL is not corruption to LevelDB (the
        # write never completed, so it was never acknowledged) and is dropped.
        # write_buffer_size None: LevelDB's default.
        try:
            return plyvel.DB(str(db_path), create_if_missing=True, paranoid_checks=True,
                             max_open_files=DB_MAX_OPEN_FILES,
                             write_buffer_size=write_buffer_bytes)
        except plyvel.CorruptionError as e:
            raise DataDirError(path, f"is damaged: LevelDB reports corruption: {e}") from e
        except plyvel.Error as e:
            raise DataDirError(path, f"cannot open the database: {e}") from e

    @staticmethod
    def _read_meta(path: Path) -> tuple[int, int, int, int]:
        """(node id, cluster id, incarnation, format version); incarnation 0 if the
        record has none."""
        try:
            raw = (path / META_NAME).read_bytes()[: META_BYTES_MAX + 1]
        except OSError as e:
            raise DataDirError(path, f"is damaged: META is unreadable: {e.strerror}") from e
        try:
            if len(raw) > META_BYTES_MAX:
                raise ValueError("too large")
            meta = json.loads(raw)
            if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
                raise ValueError("not a kvraft META record")
            version = meta["version"]
            node_id = meta["node_id"]
            cluster_id = meta["cluster_id"]
            crc = meta["crc32"]
            incarnation = meta.get("incarnation", 0)
            incarnation_crc = meta.get("incarnation_crc32")
            if not isinstance(incarnation, int) or not 0 <= incarnation < 1 << 64:
                raise ValueError(f"bad incarnation {incarnation!r}")
        except (ValueError, KeyError, TypeError) as e:
            raise DataDirError(path, f"is damaged: META is unreadable ({e})") from e
        if version not in READABLE_FORMAT_VERSIONS:
            raise DataDirError(
                path, f"has unknown format version {version} (this kvraft reads "
                      f"versions {', '.join(map(str, READABLE_FORMAT_VERSIONS))})"
            )
        if crc != _meta_crc(node_id, cluster_id, version):
            raise DataDirError(path, "is damaged: META fails its checksum")
        if ("incarnation" in meta or incarnation_crc is not None) and incarnation_crc != \
                _incarnation_crc(node_id, cluster_id, version, incarnation):
            raise DataDirError(path, "is damaged: META's incarnation fails its checksum")
        return node_id, cluster_id, incarnation, version

    @staticmethod
    def _write_meta(path: Path, node_id: int, cluster_id: int, incarnation: int) -> None:
        assert incarnation > 0
        meta = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "node_id": node_id,
            "cluster_id": cluster_id,
            "crc32": _meta_crc(node_id, cluster_id, FORMAT_VERSION),
            "incarnation": incarnation,
            "incarnation_crc32": _incarnation_crc(node_id, cluster_id, FORMAT_VERSION,
                                                  incarnation),
        }
        try:
            write_file_atomically(path / META_NAME, (json.dumps(meta) + "\n").encode())
        except OSError as e:
            raise DataDirError(path, f"cannot write META: {e.strerror}") from e

    # --- identity -----------------------------------------------------------------------
    def set_cluster_id(self, cluster_id: int) -> None:
        """Record the cluster this directory belongs to; refuse another cluster's."""
        assert cluster_id > 0, "cluster id must be positive"
        if self.cluster_id == cluster_id:
            return
        if self.cluster_id != 0:
            raise DataDirError(
                self.path, f"belongs to cluster {self.cluster_id:x}, not cluster "
                           f"{cluster_id:x}"
            )
        self._write_meta(self.path, self.node_id, cluster_id, self.incarnation)
        self.cluster_id = cluster_id

    # --- the names of LevelDB's files --------------------------------------------------
    def make_db_names_durable(self) -> None:
        """Make every file name in db/ durable if any changed since the last call: call
        it after a synced write, before anything relies on that write.

        LevelDB (1.22) makes a new log file at every memtable switch, and fsyncs db/
        only when it syncs a MANIFEST (a compaction, a little later). On ext4 and XFS a
        file's fsync also makes its name durable; on a file system that needs the
        directory's fsync for that (strict POSIX), a synced write landing in the new
        log is lost with the file's name if the power fails before that compaction —
        after the write was acknowledged (found by tests/powerloss in posix mode).

        Costs a stat of db/ when nothing changed, and one directory fsync after each
        change (log switches and compactions, not writes). A change within one tick
        of the file system's coarse clock leaves the mtime as it was, so an mtime is
        only trusted once the clock has moved TIMESTAMP_TICK_NS past it."""
        db_path = self.path / DB_NAME
        with self._db_names_lock:
            now_ns = time.time_ns()
            mtime_ns = os.stat(db_path).st_mtime_ns  # before the fsync: it covers this
            if mtime_ns == self._db_names_synced_mtime_ns:
                return
            fsync_dir(db_path)
            trusted = now_ns - mtime_ns >= TIMESTAMP_TICK_NS
            self._db_names_synced_mtime_ns = mtime_ns if trusted else None

    # --- closing ------------------------------------------------------------------------
    def close(self) -> None:
        """Make the buffered applies durable, close the database, release the lock.
        Idempotent. (A failed flush loses nothing committed: the log replays it.)"""
        if self._lock_fd is None:
            return
        with contextlib.suppress(Exception):
            self.apply_buffer.flush()
        with contextlib.suppress(Exception):
            self.db.close()
        os.close(self._lock_fd)
        self._lock_fd = None

    @property
    def closed(self) -> bool:
        return self._lock_fd is None

    def __enter__(self) -> DataDir:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
