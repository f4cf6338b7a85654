"""`LevelDBStorage`: the durable Raft log, implementing `kvraft.raft.Storage`.

Its answers are those of `kvraft.raft.MemStorage` (raft-rs semantics) for the same
sequence of writes — the property tests hold it to that — plus durability:

* `persist()` writes one Ready — an applied snapshot, the truncation of a conflicting
  suffix, new entries, the hard state — as ONE LevelDB WriteBatch with sync=True: one
  fsync per Ready however many entries it carries (group commit). When it returns, all
  of it is on disk and the caller may send the Ready's persisted messages (thesis §3.8:
  a server must not answer before its log and vote are durable). The same batch
  carries the state machine's buffered applies (apply_buffer.py), so making them
  durable costs no fsync of its own.
* Durability never relies on a synced write carrying EARLIER unsynced writes with it
  (LevelDB's log switches files without an fsync, so across a power loss it does not):
  every write here that a later state depends on is synced itself. The only unsynced
  writes are the deletions of entries already below the log's offset, which `_load`
  finishes if a power loss undid some of them.
* The log position just before the first held entry (the "offset": last compacted entry
  or applied snapshot) is kept with its term, so term(first_index() - 1) is answerable.
* `term()` is served from an in-memory array of the terms of every held entry (the log
  is bounded by compaction); recent `entries()` from a bounded tail cache.

Threading: one writer at a time (`persist`, `compact`, `set_conf_state`, `initialize`,
snapshot installs — serialised by an internal lock, so they may come from different
threads), readers from any thread. A reader sees a write only once it has returned; the
Raft core never reads indexes it has not yet been told are persisted, so a read never
needs to wait for an fsync in progress.
"""
from __future__ import annotations

import threading
from array import array
from collections import deque
from collections.abc import Callable
from typing import TypeVar

import plyvel
from google.protobuf.message import Message

from kvraft.proto import eraftpb_pb2 as eraftpb
from kvraft.raft.errors import CompactedError, SnapshotOutOfDateError, UnavailableError
from kvraft.raft.storage import RaftState, limit_size
from kvraft.storage import keys
from kvraft.storage.compaction import CompactionPolicy
from kvraft.storage.datadir import DataDir, DataDirError
from kvraft.storage.log_cache import LogTailCache

_M = TypeVar("_M", bound=Message)
SnapshotProvider = Callable[[int, int], eraftpb.Snapshot]
COMPACT_DELETE_BATCH_KEYS = 1024  # keys per (unsynced) batch when dropping compacted entries


class LevelDBStorage:
    """The Raft log of one node, in its data directory's LevelDB."""

    def __init__(self, datadir: DataDir, *, cache_entries_max: int = 4096,
                 cache_bytes_max: int = 16 << 20) -> None:
        self._datadir = datadir
        self._db: plyvel.DB = datadir.db
        self._buffer = datadir.apply_buffer
        self._lock = threading.Lock()        # guards the in-memory view below
        self._write_lock = threading.RLock()  # one writer at a time
        self._cache = LogTailCache(cache_entries_max, cache_bytes_max)
        self._snapshot_provider: SnapshotProvider | None = None
        self._hard_state = eraftpb.HardState()
        self._snapshot_meta = eraftpb.SnapshotMetadata()
        self._offset_index = 0
        self._offset_term = 0
        # Term and encoded size of every held entry: _terms[i] is entry offset+1+i's.
        self._terms = array("Q")
        self._sizes = array("Q")
        self._log_bytes = 0
        with self._write_lock:
            self._load()

    # --- loading ------------------------------------------------------------------------
    def _damaged(self, reason: str) -> DataDirError:
        return DataDirError(self._datadir.path, f"is damaged: {reason}")

    def _parse(self, msg_type: type[_M], raw: bytes, what: str) -> _M:
        try:
            return msg_type.FromString(raw)
        except Exception as e:  # protobuf raises DecodeError or RuntimeWarning-ish errors
            raise self._damaged(f"{what} record is unreadable ({e})") from e

    def _load(self) -> None:
        """(Re)build the in-memory view from LevelDB and check the log is whole."""
        db = self._db
        hs = eraftpb.HardState()
        snap = eraftpb.SnapshotMetadata()
        raw = db.get(keys.HARD_STATE)
        if raw is not None:
            hs = self._parse(eraftpb.HardState, raw, "hard state")
        raw = db.get(keys.SNAPSHOT_META)
        if raw is not None:
            snap = self._parse(eraftpb.SnapshotMetadata, raw, "snapshot metadata")
        offset_index = offset_term = 0
        raw = db.get(keys.LOG_OFFSET)
        if raw is not None:
            try:
                offset_index, offset_term = keys.unpack_index_term(raw)
            except ValueError as e:
                raise self._damaged(f"log offset record is unreadable ({e})") from e
        self._drop_compacted_keys(0, offset_index + 1)  # leftovers of an interrupted compaction
        terms = array("Q")
        sizes = array("Q")
        # The newest entries, within the tail cache's bounds (entries and bytes): what
        # the load holds in memory is bounded by the cache's configuration, not by the
        # size of the log (issue 11, item 9: a 120 MiB log cost 360 MiB of RSS here).
        tail: deque[eraftpb.Entry] = deque()
        tail_sizes: deque[int] = deque()
        tail_bytes = 0
        expected = offset_index + 1
        for key, value in db.iterator(prefix=keys.LOG_PREFIX):
            index = keys.log_index(key)
            if index != expected:
                raise self._damaged(f"the Raft log has a gap: entry {expected} is missing "
                                    f"(next held entry is {index})")
            entry = self._parse(eraftpb.Entry, value, f"log entry {index}")
            if entry.index != index:
                raise self._damaged(f"log entry stored at {index} says index {entry.index}")
            terms.append(entry.term)
            sizes.append(len(value))
            tail.append(entry)
            tail_sizes.append(len(value))
            tail_bytes += len(value)
            while len(tail) > 1 and (len(tail) > self._cache.entries_max or
                                     tail_bytes > self._cache.bytes_max):
                tail.popleft()
                tail_bytes -= tail_sizes.popleft()
            expected += 1
        last = expected - 1
        if hs.commit > last:
            raise self._damaged(f"hard state commits index {hs.commit} but the log ends "
                                f"at {last}")
        with self._lock:
            self._hard_state = hs
            self._snapshot_meta = snap
            self._offset_index, self._offset_term = offset_index, offset_term
            self._terms, self._sizes = terms, sizes
            self._log_bytes = sum(sizes)
            self._cache.clear()
            self._cache.append(list(tail), list(tail_sizes))

    # --- the Storage protocol -----------------------------------------------------------
    def initial_state(self) -> RaftState:
        raw = self._buffer.get(keys.CONF_STATE)  # written by applies, maybe still buffered
        cs = eraftpb.ConfState() if raw is None else eraftpb.ConfState.FromString(raw)
        with self._lock:
            hs = eraftpb.HardState()
            hs.CopyFrom(self._hard_state)
        return RaftState(hs, cs)

    def first_index(self) -> int:
        return self._offset_index + 1

    def last_index(self) -> int:
        with self._lock:
            return self._offset_index + len(self._terms)

    def term(self, idx: int) -> int:
        with self._lock:
            if idx == self._offset_index:
                return self._offset_term
            if idx < self._offset_index:
                raise CompactedError()
            pos = idx - self._offset_index - 1
            if pos >= len(self._terms):
                raise UnavailableError()
            return self._terms[pos]

    def entries(self, low: int, high: int, max_size: int | None = None) -> list[eraftpb.Entry]:
        with self._lock:
            if low <= self._offset_index:
                raise CompactedError()
            last = self._offset_index + len(self._terms)
            if high > last + 1:
                raise AssertionError(f"entries [{low}, {high}) out of bound, last index {last}")
            if low >= high:
                return []
            cached = self._cache.slice(low, high)
            if cached is not None:
                return limit_size(cached, max_size)
            # A slow follower's catch-up: read from LevelDB, stopping at max_size. Done
            # under the lock so a concurrent compaction cannot delete keys mid-read.
            out: list[eraftpb.Entry] = []
            size = 0
            for value in self._db.iterator(start=keys.log_key(low), stop=keys.log_key(high),
                                           include_key=False):
                size += len(value)
                if max_size is not None and size > max_size and out:
                    break
                out.append(eraftpb.Entry.FromString(value))
            assert out and out[0].index == low, f"log read at {low} found {out[:1]}"
            return out

    def snapshot(self, request_index: int, to: int) -> eraftpb.Snapshot:
        """The state machine's newest snapshot, via the provider the node installs
        (`set_snapshot_provider`); without one, MemStorage's answer (a snapshot at the
        commit index, for tests)."""
        provider = self._snapshot_provider
        if provider is not None:
            return provider(request_index, to)
        with self._lock:
            snap = eraftpb.Snapshot()
            meta = snap.metadata
            meta.index = self._hard_state.commit
            if meta.index == self._offset_index:
                meta.term = self._offset_term
            elif meta.index > self._offset_index:
                meta.term = self._terms[meta.index - self._offset_index - 1]
            else:
                meta.term = self._snapshot_meta.term
        meta.conf_state.CopyFrom(self.initial_state().conf_state)
        if meta.index < request_index:
            meta.index = request_index
        return snap

    # --- extras the node uses -----------------------------------------------------------
    def hard_state(self) -> eraftpb.HardState:
        with self._lock:
            hs = eraftpb.HardState()
            hs.CopyFrom(self._hard_state)
            return hs

    def log_bytes(self) -> int:
        """Encoded size of the held entries (for the compaction policy)."""
        return self._log_bytes

    def set_snapshot_provider(self, fn: SnapshotProvider | None) -> None:
        """`fn(request_index, to)` answers `snapshot()`: typically
        `KVStateMachine.raft_snapshot`, whose data is a small descriptor."""
        self._snapshot_provider = fn

    # --- writes -------------------------------------------------------------------------
    def initialize(self, conf_state: eraftpb.ConfState) -> None:
        """Record the founding configuration of a fresh directory (MemStorage's
        initialize_with_conf_state): the log stays empty at index 0."""
        with self._write_lock:
            assert not self.initial_state().initialized(), "storage is already initialized"
            assert self.last_index() == 0, "storage already holds a log"
            meta = eraftpb.SnapshotMetadata()
            meta.conf_state.CopyFrom(conf_state)
            batch = self._db.write_batch(sync=True)
            batch.put(keys.CONF_STATE, conf_state.SerializeToString())
            batch.put(keys.SNAPSHOT_META, meta.SerializeToString())
            batch.write()
            with self._lock:
                self._snapshot_meta = meta

    def set_conf_state(self, cs: eraftpb.ConfState) -> None:
        """Persist the configuration (synced). Prefer passing `on_conf_change` to
        `KVStateMachine.apply`, which writes it atomically with the applied index."""
        with self._write_lock:
            batch = self._db.write_batch(sync=True)
            # Buffered applies first (they may hold an older conf state): this one wins.
            with self._buffer.merged_into(batch, wait=True):
                batch.put(keys.CONF_STATE, cs.SerializeToString())
                batch.write()

    def persist(self, entries: list[eraftpb.Entry], hard_state: eraftpb.HardState | None,
                snapshot: eraftpb.Snapshot | None = None) -> None:
        """Make one Ready durable with a single synced write (group commit).

        In order: apply `snapshot` (if its index > 0 and it is not the snapshot
        `KVStateMachine.install_snapshot` just installed; raises SnapshotOutOfDateError
        if it is not newer than the log's offset, as MemStorage does), truncate the
        suffix that conflicts with `entries` and append them, set `hard_state`.
        Nothing to write, no fsync.
        """
        has_snapshot = snapshot is not None and snapshot.metadata.index > 0
        if not entries and hard_state is None and not has_snapshot:
            return
        with self._write_lock:
            with self._lock:
                offset_index, offset_term = self._offset_index, self._offset_term
                last = offset_index + len(self._terms)
                hs = eraftpb.HardState()
                hs.CopyFrom(self._hard_state)
            batch = self._db.write_batch(sync=True)
            with self._buffer.merged_into(batch, wait=False):
                self._persist_into(batch, entries, hard_state, snapshot, has_snapshot,
                                   offset_index, offset_term, last, hs)
            # The caller sends this Ready's acknowledgements next: on a file system that
            # needs a directory fsync for a new file's name, the log file this write
            # (or an install before it) went to must be named durably first.
            self._datadir.make_db_names_durable()

    def _persist_into(self, batch: plyvel.WriteBatch, entries: list[eraftpb.Entry],
                      hard_state: eraftpb.HardState | None,
                      snapshot: eraftpb.Snapshot | None, has_snapshot: bool,
                      offset_index: int, offset_term: int, last: int,
                      hs: eraftpb.HardState) -> None:
        """persist()'s body: `batch` already holds the buffered applies (put first, so
        a snapshot's conf state below wins over theirs); write it, then update the
        in-memory view. Called with the writer lock held."""
        snap_meta = None
        if has_snapshot and self._is_installed(snapshot):
            has_snapshot = False  # KVStateMachine.install_snapshot already applied it
        if has_snapshot:
            assert snapshot is not None
            snap_meta = snapshot.metadata
            if offset_index + 1 > snap_meta.index:
                raise SnapshotOutOfDateError()
            hs = self._snapshot_log_ops(batch, snap_meta)
            offset_index, offset_term, last = snap_meta.index, snap_meta.term, snap_meta.index
        encoded: list[bytes] = []
        if entries:
            first_new = entries[0].index
            assert first_new > offset_index, (
                f"overwrite compacted raft logs, compacted {offset_index}, "
                f"append {first_new}")
            assert first_new <= last + 1, (
                f"raft logs should be continuous, last index {last}, "
                f"new appended {first_new}")
            new_last = first_new + len(entries) - 1
            for i, entry in enumerate(entries):
                assert entry.index == first_new + i, "appended entries must be contiguous"
                data = entry.SerializeToString()
                encoded.append(data)
                batch.put(keys.log_key(entry.index), data)
            for index in range(new_last + 1, last + 1):  # the rest of the conflicting suffix
                batch.delete(keys.log_key(index))
        if hard_state is not None:
            hs = eraftpb.HardState()
            hs.CopyFrom(hard_state)
            batch.put(keys.HARD_STATE, hs.SerializeToString())
        batch.write()
        with self._lock:
            self._hard_state = hs
            if snap_meta is not None:
                self._snapshot_meta = eraftpb.SnapshotMetadata()
                self._snapshot_meta.CopyFrom(snap_meta)
                self._offset_index, self._offset_term = offset_index, offset_term
                self._terms, self._sizes, self._log_bytes = array("Q"), array("Q"), 0
                self._cache.clear()
            if entries:
                keep = entries[0].index - self._offset_index - 1
                self._log_bytes -= sum(self._sizes[keep:])
                del self._terms[keep:]
                del self._sizes[keep:]
                sizes = [len(d) for d in encoded]
                self._terms.extend(e.term for e in entries)
                self._sizes.extend(sizes)
                self._log_bytes += sum(sizes)
                self._cache.append(list(entries), sizes)

    def _is_installed(self, snapshot: eraftpb.Snapshot | None) -> bool:
        """The snapshot is the one the log already starts from: a state-machine
        install applied it to the log together with the data."""
        assert snapshot is not None
        meta = snapshot.metadata
        with self._lock:
            return (meta.index, meta.term) == (self._offset_index, self._offset_term) == (
                self._snapshot_meta.index, self._snapshot_meta.term) and not self._terms

    def compact(self, compact_index: int) -> None:
        """Drop the entries before `compact_index`, which becomes first_index().

        The caller guarantees the state machine has applied `compact_index - 1` and
        that it is committed. The new offset is written in ONE synced batch together
        with every buffered apply (apply_buffer.py), waiting for a flush in progress:
        so the offset can only be durable with the effects of every entry it drops —
        the barrier that a power loss needs, at no cost beyond the offset's own fsync
        (tests/storage/test_power_loss_model.py checks it). Only
        that write is under the writer lock; the old keys are deleted afterwards in
        small unsynced batches, so appends are not held up: a delete can only be
        durable after the offset (written, synced, before it), and whatever a power
        loss undoes of them is garbage below the offset that `_load` removes.
        """
        with self._write_lock:
            with self._lock:
                first = self._offset_index + 1
                last = self._offset_index + len(self._terms)
                commit = self._hard_state.commit
            if compact_index <= first:
                return
            assert compact_index <= last + 1, (
                f"compact {compact_index} past last index {last} + 1")
            assert compact_index - 1 <= commit, (
                f"compact {compact_index} would drop uncommitted entries (commit {commit})")
            new_offset_term = self.term(compact_index - 1)
            batch = self._db.write_batch(sync=True)
            with self._buffer.merged_into(batch, wait=True):
                batch.put(keys.LOG_OFFSET,
                          keys.pack_index_term(compact_index - 1, new_offset_term))
                batch.write()
            with self._lock:
                drop = compact_index - first
                self._log_bytes -= sum(self._sizes[:drop])
                del self._terms[:drop]
                del self._sizes[:drop]
                self._offset_index, self._offset_term = compact_index - 1, new_offset_term
                self._cache.drop_before(compact_index)
        self._drop_compacted_keys(first, compact_index)

    def compaction_target(self, applied_index: int, policy: CompactionPolicy) -> int | None:
        """The first index `policy` would compact to, given the state machine's applied
        index, or None. Cheap (no I/O): the node asks it after every round."""
        with self._lock:
            first = self._offset_index + 1
            applied = min(applied_index, self._hard_state.commit,
                          self._offset_index + len(self._terms))
            if applied < first or not policy.due(applied - first + 1, self._log_bytes):
                return None
            sizes = self._sizes[: applied - self._offset_index]
            return policy.compact_index(first, applied, self._log_bytes, sizes)

    def maybe_compact(self, applied_index: int, policy: CompactionPolicy) -> int | None:
        """Compact as `policy` says, given the state machine's applied index; returns
        the new first index, or None when nothing was dropped."""
        target = self.compaction_target(applied_index, policy)
        if target is None:
            return None
        self.compact(target)
        return target

    def _drop_compacted_keys(self, low: int, high: int) -> None:
        """Delete log keys in [low, high) — entries already below the offset."""
        batch_keys: list[bytes] = []
        for key in self._db.iterator(start=keys.log_key(low), stop=keys.log_key(high),
                                     include_value=False):
            batch_keys.append(key)
            if len(batch_keys) >= COMPACT_DELETE_BATCH_KEYS:
                self._delete_keys(batch_keys)
                batch_keys = []
        if batch_keys:
            self._delete_keys(batch_keys)

    def _delete_keys(self, batch_keys: list[bytes]) -> None:
        with self._db.write_batch() as batch:
            for key in batch_keys:
                batch.delete(key)

    # --- snapshots ----------------------------------------------------------------------
    def _snapshot_log_ops(self, batch: plyvel.WriteBatch,
                          meta: eraftpb.SnapshotMetadata) -> eraftpb.HardState:
        """Add to `batch` what applying a snapshot does to the Raft log: drop every
        entry, move the offset to the snapshot, commit it, adopt its configuration
        (raft-rs apply_snapshot). Returns the resulting hard state. Reads LevelDB, not
        the in-memory view: also right before `_load` (recovery at open)."""
        for key in self._db.iterator(prefix=keys.LOG_PREFIX, include_value=False):
            batch.delete(key)
        hs = eraftpb.HardState()
        raw = self._db.get(keys.HARD_STATE)
        if raw is not None:
            hs.ParseFromString(raw)
        hs.term = max(hs.term, meta.term)
        hs.commit = meta.index
        batch.put(keys.HARD_STATE, hs.SerializeToString())
        batch.put(keys.LOG_OFFSET, keys.pack_index_term(meta.index, meta.term))
        batch.put(keys.SNAPSHOT_META, meta.SerializeToString())
        batch.put(keys.CONF_STATE, meta.conf_state.SerializeToString())
        return hs

    def write_snapshot_install(self, meta: eraftpb.SnapshotMetadata,
                               carried: dict[bytes, bytes | None]) -> None:
        """The commit point of a state-machine snapshot install (snapshot_install.py):
        in ONE synced batch, what applying the snapshot `meta` does to the Raft log
        together with `carried`, the installer's own writes (its applied index, the
        removal of its marker; None deletes) — so log and state machine change together
        or not at all, across a crash or a power loss. Then the in-memory view is
        rebuilt from LevelDB. Holds the writer lock throughout: no persist or
        compaction interleaves with the rewrite of the log."""
        with self._write_lock:
            batch = self._db.write_batch(sync=True)
            for key, value in carried.items():
                if value is None:
                    batch.delete(key)
                else:
                    batch.put(key, value)
            self._snapshot_log_ops(batch, meta)
            batch.write()
            self._load()
