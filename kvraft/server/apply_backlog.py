"""The apply backlog: committed entries Raft handed out that the state machine has not
applied yet, taken by the node's apply task in bounded batches (issue 11, item 8).

Raft hands committed entries out in every Ready, at the rate the cluster commits; the
state machine applies them on its own thread, at the rate its disk allows. What waits
in between is bounded in memory: beyond `held_bytes_max` entries are not kept but read
back from the Raft log when their turn comes — they are durable there (RawNode hands
out only entries persisted locally) and stay there (the log is compacted only below
the applied index). What it measures (`bytes`, `entries`) is what the node's pushback
on proposals looks at.

Indexes, always   applied <= dispatched <= held_last <= handed_out:
    applied       the last index whose apply completed (or a snapshot's index)
    (applied, dispatched]       the batch on the apply thread now, if any (one at most)
    (dispatched, held_last]     held in memory (`_held`), contiguous
    (held_last, handed_out]     spilled: to be read back from the Raft log
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from kvraft.proto import eraftpb_pb2 as eraftpb


@dataclass
class ApplyBatch:
    """One apply: `entries` in memory, or the index range to read back from the log
    (`read_from`..`read_to`, at most `read_bytes_max` bytes of it, at least one entry)."""

    entries: list[eraftpb.Entry] = field(default_factory=list)
    read_from: int = 0
    read_to: int = 0
    read_bytes_max: int = 0
    bytes: int = 0          # encoded size of `entries` (0 for a read: known once read)


class ApplyBacklog:
    def __init__(self, applied_index: int, *, held_bytes_max: int, batch_bytes_max: int,
                 batch_entries_max: int) -> None:
        assert held_bytes_max > 0 and batch_bytes_max > 0 and batch_entries_max > 0
        self.held_bytes_max = held_bytes_max
        self.batch_bytes_max = batch_bytes_max
        self.batch_entries_max = batch_entries_max
        self.applied = self.dispatched = self.handed_out = applied_index
        self._held: deque[tuple[eraftpb.Entry, int]] = deque()   # (entry, encoded size)
        self._held_bytes = 0
        self._in_flight: ApplyBatch | None = None
        self.bytes = 0       # encoded size of (applied, handed_out]

    @property
    def held_last(self) -> int:
        return self.dispatched + len(self._held)

    @property
    def entries(self) -> int:
        """Committed entries handed out and not yet applied."""
        return self.handed_out - self.applied

    @property
    def busy(self) -> bool:
        return self._in_flight is not None

    def add(self, entries: list[eraftpb.Entry]) -> None:
        """Raft handed out `entries` (the next committed ones, in order)."""
        if not entries:
            return
        assert entries[0].index == self.handed_out + 1, (
            f"committed entries handed out from {entries[0].index}, expected "
            f"{self.handed_out + 1}")
        for entry in entries:
            size = entry.ByteSize()
            self.bytes += size
            # Held only while nothing is spilled (contiguity) and within the bound.
            if self.held_last == self.handed_out and (
                    not self._held or self._held_bytes + size <= self.held_bytes_max):
                self._held.append((entry, size))
                self._held_bytes += size
            self.handed_out = entry.index

    def next_batch(self) -> ApplyBatch | None:
        """The next batch for the apply thread, or None (nothing to do, or a batch is
        still being applied)."""
        if self._in_flight is not None or self.dispatched == self.handed_out:
            return None
        if self._held:
            batch = ApplyBatch()
            while self._held and len(batch.entries) < self.batch_entries_max and (
                    not batch.entries or batch.bytes + self._held[0][1] <= self.batch_bytes_max):
                entry, size = self._held.popleft()
                self._held_bytes -= size
                batch.entries.append(entry)
                batch.bytes += size
            self.dispatched = batch.entries[-1].index
        else:
            batch = ApplyBatch(read_from=self.dispatched + 1, read_to=min(
                self.handed_out, self.dispatched + self.batch_entries_max),
                read_bytes_max=self.batch_bytes_max)
        self._in_flight = batch
        return batch

    def complete(self, batch: ApplyBatch, entries: list[eraftpb.Entry]) -> None:
        """The batch was applied; `entries` are those it covered (read back, for a
        read; none if a snapshot superseded them)."""
        assert batch is self._in_flight, "completing a batch that is not in flight"
        self._in_flight = None
        if batch.entries:
            self.bytes -= batch.bytes
            last = batch.entries[-1].index
        elif entries:
            last = entries[-1].index
            if last > self.dispatched:    # not reset by a snapshot meanwhile
                assert entries[0].index == self.dispatched + 1
                self.dispatched = last
                self.bytes -= sum(e.ByteSize() for e in entries)
        else:
            last = self.applied
        self.applied = max(self.applied, last)
        assert self.bytes >= 0, f"apply backlog of {self.bytes} bytes"

    def reset(self, snapshot_index: int) -> None:
        """A snapshot at `snapshot_index` replaces everything up to it: nothing held
        or spilled is applied (a batch in flight still completes, harmlessly: the state
        machine skips entries at or below its applied index)."""
        assert snapshot_index >= self.handed_out, (
            f"snapshot {snapshot_index} is behind handed-out entries {self.handed_out}")
        self._held.clear()
        self._held_bytes = 0
        in_flight = self._in_flight.bytes if self._in_flight is not None else 0
        self.bytes = in_flight
        self.applied = self.dispatched = self.handed_out = snapshot_index
