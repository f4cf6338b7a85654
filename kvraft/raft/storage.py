"""The `Storage` protocol the Raft core reads its durable log through, and `MemStorage`.

The core never writes to Storage: the application persists what `Ready` hands it
(entries, hard state, snapshot) and then tells the core with `advance*`. Storage only
answers reads about what is already durable.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from kvraft.proto import eraftpb_pb2 as eraftpb
from kvraft.raft.errors import (
    CompactedError,
    LogTemporarilyUnavailableError,
    SnapshotOutOfDateError,
    SnapshotTemporarilyUnavailableError,
    UnavailableError,
)


@dataclass
class RaftState:
    """What a restarting node recovers: its durable hard state and configuration."""

    hard_state: eraftpb.HardState = field(default_factory=eraftpb.HardState)
    conf_state: eraftpb.ConfState = field(default_factory=eraftpb.ConfState)

    def initialized(self) -> bool:
        """A node is initialized once it knows at least one member."""
        cs = self.conf_state
        return bool(cs.voters or cs.learners or cs.voters_outgoing or cs.learners_next)


@runtime_checkable
class Storage(Protocol):
    """Read access to the durable part of the Raft log (SPEC §1)."""

    def initial_state(self) -> RaftState:
        """The hard state and conf state to start from."""
        ...

    def entries(self, low: int, high: int, max_size: int | None = None) -> list[eraftpb.Entry]:
        """Entries in [low, high), at least one if any, at most max_size bytes otherwise.

        Raises CompactedError when low is before first_index(); high must not pass
        last_index() + 1. The returned Entry objects must not be mutated by the caller.
        """
        ...

    def term(self, idx: int) -> int:
        """Term of the entry at idx; idx may be first_index() - 1 (the snapshot's)."""
        ...

    def first_index(self) -> int:
        """Index of the first entry still held (snapshot index + 1 after compaction)."""
        ...

    def last_index(self) -> int:
        """Index of the last entry held (the snapshot's index if there is none)."""
        ...

    def snapshot(self, request_index: int, to: int) -> eraftpb.Snapshot:
        """A snapshot at index >= request_index for peer `to`, or raise
        SnapshotTemporarilyUnavailableError while one is being built."""
        ...


def limit_size(entries: list[eraftpb.Entry], max_size: int | None) -> list[eraftpb.Entry]:
    """Truncate `entries` to at most max_size bytes, keeping at least one entry.

    At least one so a single entry larger than the limit still makes progress.
    """
    if max_size is None or len(entries) <= 1:
        return entries
    size = 0
    for count, entry in enumerate(entries):
        size += entry.ByteSize()
        if size > max_size and count > 0:
            return entries[:count]
    return entries


class MemStorage:
    """An in-memory `Storage` for tests and benchmarks (raft-rs semantics).

    The log is kept after a "dummy" position: `_offset_index` / `_offset_term` describe
    the entry just before the first held entry (the snapshot's, or the last compacted
    one), so term(first_index() - 1) stays answerable after compaction and a leader can
    keep replicating without a snapshot from exactly that point. Not thread-safe: the
    node that owns it must serialise access.
    """

    def __init__(self) -> None:
        self._hard_state = eraftpb.HardState()
        self._conf_state = eraftpb.ConfState()
        self._snapshot_metadata = eraftpb.SnapshotMetadata()
        # The entry before _entries[0]: index and term.
        self._offset_index = 0
        self._offset_term = 0
        self._entries: list[eraftpb.Entry] = []
        # Test hooks: make the next snapshot()/entries() call report "try again later".
        self._snapshot_unavailable = False
        self._log_unavailable = False

    # --- construction ---------------------------------------------------------------
    @classmethod
    def new_with_conf_state(cls, conf_state: eraftpb.ConfState) -> MemStorage:
        """A fresh storage whose initial configuration is `conf_state` (founding members)."""
        store = cls()
        store.initialize_with_conf_state(conf_state)
        return store

    def initialize_with_conf_state(self, conf_state: eraftpb.ConfState) -> None:
        """Set the founding configuration of a storage that holds no state yet."""
        assert not self.initial_state().initialized(), "storage is already initialized"
        assert self._offset_index == 0 and not self._entries, "storage already holds a log"
        self._snapshot_metadata.index = 0
        self._snapshot_metadata.term = 0
        self._conf_state.CopyFrom(conf_state)
        self._snapshot_metadata.conf_state.CopyFrom(conf_state)

    # --- Storage protocol -----------------------------------------------------------
    def initial_state(self) -> RaftState:
        hs = eraftpb.HardState()
        hs.CopyFrom(self._hard_state)
        cs = eraftpb.ConfState()
        cs.CopyFrom(self._conf_state)
        return RaftState(hs, cs)

    def first_index(self) -> int:
        return self._offset_index + 1

    def last_index(self) -> int:
        return self._offset_index + len(self._entries)

    def term(self, idx: int) -> int:
        if idx == self._offset_index:
            return self._offset_term
        if idx < self._offset_index:
            raise CompactedError()
        offset = idx - self._offset_index - 1
        if offset >= len(self._entries):
            raise UnavailableError()
        return self._entries[offset].term

    def entries(self, low: int, high: int, max_size: int | None = None) -> list[eraftpb.Entry]:
        if low <= self._offset_index:
            raise CompactedError()
        if high > self.last_index() + 1:
            raise AssertionError(
                f"entries [{low}, {high}) out of bound, last index {self.last_index()}"
            )
        if self._log_unavailable:
            self._log_unavailable = False
            raise LogTemporarilyUnavailableError()
        start = low - self._offset_index - 1
        return limit_size(self._entries[start : high - self._offset_index - 1], max_size)

    def snapshot(self, request_index: int, to: int) -> eraftpb.Snapshot:
        if self._snapshot_unavailable:
            self._snapshot_unavailable = False
            raise SnapshotTemporarilyUnavailableError()
        snap = eraftpb.Snapshot()
        meta = snap.metadata
        # The state machine of a MemStorage is "the log itself": a snapshot at the
        # commit index covers everything a peer could need.
        meta.index = self._hard_state.commit
        meta.term = self.term(meta.index) if meta.index >= self._offset_index else (
            self._snapshot_metadata.term
        )
        meta.conf_state.CopyFrom(self._conf_state)
        if meta.index < request_index:
            meta.index = request_index
        return snap

    # --- writes (the application's persistence) ---------------------------------------
    def set_hardstate(self, hs: eraftpb.HardState) -> None:
        self._hard_state.CopyFrom(hs)

    def hard_state(self) -> eraftpb.HardState:
        return self._hard_state

    def set_conf_state(self, cs: eraftpb.ConfState) -> None:
        self._conf_state.CopyFrom(cs)

    def commit_to(self, index: int) -> None:
        """Record `index` as committed in the hard state; the entry must be held."""
        assert self.first_index() <= index <= self.last_index(), (
            f"commit_to {index} outside held log [{self.first_index()}, {self.last_index()}]"
        )
        self._hard_state.commit = index

    def append(self, entries: list[eraftpb.Entry]) -> None:
        """Append entries, replacing any conflicting suffix (the entries are kept, not
        copied: callers hand over ownership)."""
        if not entries:
            return
        first_new = entries[0].index
        assert first_new > self._offset_index, (
            f"overwrite compacted raft logs, compacted {self._offset_index}, append {first_new}"
        )
        assert first_new <= self.last_index() + 1, (
            f"raft logs should be continuous, last index {self.last_index()}, "
            f"new appended {first_new}"
        )
        del self._entries[first_new - self._offset_index - 1 :]
        self._entries.extend(entries)

    def apply_snapshot(self, snapshot: eraftpb.Snapshot) -> None:
        """Replace the log by `snapshot` (a follower restoring, thesis §5.3 / §3.10)."""
        meta = snapshot.metadata
        if self.first_index() > meta.index:
            raise SnapshotOutOfDateError()
        self._snapshot_metadata.CopyFrom(meta)
        self._hard_state.term = max(self._hard_state.term, meta.term)
        self._hard_state.commit = meta.index
        self._entries = []
        self._offset_index = meta.index
        self._offset_term = meta.term
        self._conf_state.CopyFrom(meta.conf_state)

    def compact(self, compact_index: int) -> None:
        """Discard entries before `compact_index`, which becomes the first index."""
        if compact_index <= self.first_index():
            return
        assert compact_index <= self.last_index() + 1, (
            f"compact {compact_index} past last index {self.last_index()} + 1"
        )
        drop = compact_index - self.first_index()
        self._offset_term = self._entries[drop - 1].term
        self._offset_index = compact_index - 1
        del self._entries[:drop]

    # --- test hooks -----------------------------------------------------------------
    def trigger_snap_unavailable(self) -> None:
        """Make the next snapshot() raise SnapshotTemporarilyUnavailableError."""
        self._snapshot_unavailable = True

    def trigger_log_unavailable(self, unavailable: bool = True) -> None:
        """Make the next entries() raise LogTemporarilyUnavailableError."""
        self._log_unavailable = unavailable
