"""The tail of the log that is not yet durable: `Unstable`.

A node appends entries (and a follower installs a snapshot) in memory first; the
application persists them from `Ready` and then tells the core they are stable. Until
then they live here, in front of `Storage`. Entries are positioned by `offset`: the
index of `entries[0]`, so every lookup is O(1).
"""
from __future__ import annotations

import logging

from kvraft.proto import eraftpb_pb2 as eraftpb

logger = logging.getLogger(__name__)


class Unstable:
    """Entries at indexes >= `offset`, and possibly a snapshot, not yet persisted."""

    __slots__ = ("entries", "offset", "snapshot")

    def __init__(self, offset: int) -> None:
        # A snapshot received from the leader and not yet persisted (thesis §5.3).
        self.snapshot: eraftpb.Snapshot | None = None
        # The entries themselves; entries[i].index == offset + i.
        self.entries: list[eraftpb.Entry] = []
        self.offset: int = offset

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

    def stable_entries(self, index: int, term: int) -> None:
        """Entries up to `index` (whose term is `term`) are now held by Storage."""
        assert self.snapshot is None, "the snapshot must be persisted before entries"
        assert self.entries, f"stable_entries({index}, {term}) with no unstable entries"
        last = self.entries[-1]
        assert last.index == index and last.term == term, (
            f"stable_entries({index}, {term}) does not match the last unstable entry "
            f"({last.index}, {last.term})"
        )
        self.offset = index + 1
        self.entries = []

    def stable_snap(self, index: int) -> None:
        """The unstable snapshot at `index` is now held by Storage."""
        assert self.snapshot is not None and self.snapshot.metadata.index == index, (
            f"stable_snap({index}) does not match the unstable snapshot"
        )
        self.snapshot = None

    def restore(self, snap: eraftpb.Snapshot) -> None:
        """Replace everything by a snapshot received from the leader (thesis §5.3)."""
        self.entries = []
        self.offset = snap.metadata.index + 1
        self.snapshot = snap

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

    def slice(self, lo: int, hi: int) -> list[eraftpb.Entry]:
        """Entries in [lo, hi), which must lie within this unstable part."""
        upper = self.offset + len(self.entries)
        assert self.offset <= lo <= hi <= upper, (
            f"unstable.slice[{lo}, {hi}) out of bound [{self.offset}, {upper}]"
        )
        return self.entries[lo - self.offset : hi - self.offset]
