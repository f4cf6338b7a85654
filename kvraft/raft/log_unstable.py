"""The tail of the log that is not yet durable: `Unstable`.

A node appends entries (and a follower installs a snapshot) in memory first; the
application persists them from `Ready` and then tells the core they are durable. Until
then they live here, in front of `Storage`, so the core never needs to read an entry
back from Storage before the application has finished writing it (the write may run on
another thread). Entries are positioned by `offset`: the index of `entries[0]`, so every
lookup is O(1). `offset_in_progress` separates the entries already handed to the
application in a Ready (being written) from those not handed out yet.
"""
from __future__ import annotations

import logging

from kvraft.proto import eraftpb_pb2 as eraftpb

logger = logging.getLogger(__name__)


class Unstable:
    """Entries at indexes >= `offset`, and possibly a snapshot, not yet durable."""

    __slots__ = ("entries", "offset", "offset_in_progress", "snapshot",
                 "snapshot_in_progress")

    def __init__(self, offset: int) -> None:
        # A snapshot received from the leader and not yet durable (thesis §5.3).
        self.snapshot: eraftpb.Snapshot | None = None
        # The entries themselves; entries[i].index == offset + i.
        self.entries: list[eraftpb.Entry] = []
        self.offset: int = offset
        # Entries below this index were handed out in a Ready and are being written.
        self.offset_in_progress: int = offset
        self.snapshot_in_progress: bool = False

    def maybe_first_index(self) -> int | None:
        """The first index of the log if the unstable snapshot defines it."""
        if self.snapshot is not None:
            return self.snapshot.metadata.index + 1
        return None

    def maybe_last_index(self) -> int | None:
        """The last index of the log if this unstable part defines it."""
        if self.entries:
            return self.offset + len(self.entries) - 1
        if self.snapshot is not None:
            return self.snapshot.metadata.index
        return None

    def maybe_term(self, idx: int) -> int | None:
        """The term of `idx` if this unstable part knows it."""
        if idx < self.offset:
            snap = self.snapshot
            if snap is not None and snap.metadata.index == idx:
                return snap.metadata.term
            return None
        pos = idx - self.offset
        if pos < len(self.entries):
            return self.entries[pos].term
        return None

    def next_entries(self) -> list[eraftpb.Entry]:
        """Entries not yet handed to the application for writing."""
        start = self.offset_in_progress - self.offset
        return self.entries[start:] if start else list(self.entries)

    def has_next_entries(self) -> bool:
        return self.offset_in_progress < self.offset + len(self.entries)

    def next_snapshot(self) -> eraftpb.Snapshot | None:
        """The snapshot if it was not handed to the application yet."""
        if self.snapshot is None or self.snapshot_in_progress:
            return None
        return self.snapshot

    def accept_in_progress(self) -> None:
        """Everything held was handed to the application in a Ready."""
        if self.entries:
            self.offset_in_progress = self.offset + len(self.entries)
        if self.snapshot is not None:
            self.snapshot_in_progress = True

    def stable_entries(self, index: int, term: int) -> bool:
        """Entries up to `index` (whose term is `term`) are durable in Storage: drop
        them. Ignored (False) when the entry at `index` was replaced meanwhile."""
        if index < self.offset or self.maybe_term(index) != term:
            return False
        drop = index + 1 - self.offset
        if drop >= len(self.entries):
            self.entries = []
        else:
            del self.entries[:drop]
        self.offset = index + 1
        if self.offset_in_progress < self.offset:
            self.offset_in_progress = self.offset
        return True

    def stable_snap(self, index: int) -> None:
        """The unstable snapshot at `index` is durable in Storage."""
        if self.snapshot is not None and self.snapshot.metadata.index == index:
            self.snapshot = None
            self.snapshot_in_progress = False

    def restore(self, snap: eraftpb.Snapshot) -> None:
        """Replace everything by a snapshot received from the leader (thesis §5.3)."""
        self.entries = []
        self.offset = snap.metadata.index + 1
        self.offset_in_progress = self.offset
        self.snapshot = snap
        self.snapshot_in_progress = False

    def truncate_and_append(self, ents: list[eraftpb.Entry]) -> None:
        """Append `ents`, dropping any existing entries at or after `ents[0].index`."""
        after = ents[0].index
        end = self.offset + len(self.entries)
        if after == end:
            # The common case: a contiguous append.
            self.entries.extend(ents)
        elif after <= self.offset:
            # The new entries replace the whole unstable part (and start earlier: the
            # conflicting part of Storage is overwritten when these are persisted).
            logger.debug("replace the unstable entries from index %d", after)
            self.offset = after
            self.entries = list(ents)
        else:
            # Truncate to `after` and append.
            logger.debug("truncate the unstable entries before index %d", after)
            kept = self.entries[: after - self.offset]
            kept.extend(ents)
            self.entries = kept
        # Replaced entries must be handed out (written) again.
        if self.offset_in_progress > after:
            self.offset_in_progress = after

    def slice(self, lo: int, hi: int) -> list[eraftpb.Entry]:
        """Entries in [lo, hi), which must lie within this unstable part."""
        upper = self.offset + len(self.entries)
        assert self.offset <= lo <= hi <= upper, (
            f"unstable.slice[{lo}, {hi}) out of bound [{self.offset}, {upper}]"
        )
        return self.entries[lo - self.offset : hi - self.offset]
