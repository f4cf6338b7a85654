"""The Raft log as one node sees it: durable `Storage` plus the `Unstable` tail.

Tracks three positions (thesis §3.5, §3.6, §10.2.1):
* `committed`: the highest index known to be stored on a quorum;
* `persisted`: the highest index this node has made durable (entries after it exist
  only in memory, and must not be applied: a crash would lose them);
* `applied`: the highest index the application has applied.
Invariant: applied <= committed, and the log is never truncated at or below committed.
"""
from __future__ import annotations

import logging

from kvraft.proto import eraftpb_pb2 as eraftpb
from kvraft.raft.config import NO_LIMIT
from kvraft.raft.errors import CompactedError, StorageError, UnavailableError
from kvraft.raft.log_unstable import Unstable
from kvraft.raft.storage import Storage, limit_size

logger = logging.getLogger(__name__)


def _size_limit(max_size: int | None) -> int | None:
    """NO_LIMIT and None both mean "no limit"; skip the byte counting then."""
    if max_size is None or max_size >= NO_LIMIT:
        return None
    return max_size


class RaftLog:
    """The log of one Raft node."""

    __slots__ = ("applied", "committed", "persisted", "store", "unstable")

    def __init__(self, store: Storage) -> None:
        first_index = store.first_index()
        last_index = store.last_index()
        self.store: Storage = store
        self.unstable: Unstable = Unstable(last_index + 1)
        # Everything in Storage is durable; only entries before first_index are known
        # to be committed until the hard state says otherwise.
        self.persisted: int = last_index
        self.committed: int = first_index - 1
        self.applied: int = first_index - 1

    def __repr__(self) -> str:
        return (f"RaftLog(committed={self.committed}, persisted={self.persisted}, "
                f"applied={self.applied}, unstable.offset={self.unstable.offset}, "
                f"unstable.entries={len(self.unstable.entries)})")

    # --- positions ------------------------------------------------------------------
    def first_index(self) -> int:
        snap = self.unstable.snapshot
        if snap is not None:
            return snap.metadata.index + 1
        return self.store.first_index()

    def last_index(self) -> int:
        # The unstable part always starts right after the last durable entry (or the
        # unstable snapshot), so it alone determines the last index.
        unstable = self.unstable
        return unstable.offset + len(unstable.entries) - 1

    def term(self, idx: int) -> int:
        """Term of the entry at `idx`; 0 outside [first_index - 1, last_index].

        Raises CompactedError if Storage compacted `idx` away meanwhile.
        """
        unstable = self.unstable
        pos = idx - unstable.offset
        if pos >= 0:
            # The unstable tail (where a leader's recent entries live), or past the end.
            entries = unstable.entries
            return entries[pos].term if pos < len(entries) else 0
        snap = unstable.snapshot
        if snap is not None:
            return snap.metadata.term if idx == snap.metadata.index else 0
        if idx < self.store.first_index() - 1:
            return 0
        return self.store.term(idx)

    def term_or_zero(self, idx: int) -> int:
        """Like term(), but 0 when the entry is compacted or unavailable."""
        try:
            return self.term(idx)
        except (CompactedError, UnavailableError):
            return 0

    def last_term(self) -> int:
        return self.term_or_zero(self.last_index())

    def match_term(self, idx: int, term: int) -> bool:
        """Whether the entry at `idx` has `term` (thesis §3.5 consistency check)."""
        try:
            return self.term(idx) == term
        except StorageError:
            return False

    def commit_info(self) -> tuple[int, int]:
        return self.committed, self.term_or_zero(self.committed)

    def is_up_to_date(self, last_index: int, term: int) -> bool:
        """Thesis §3.6.1 election restriction: a log ending in (term, last_index) is at
        least as up to date as ours."""
        our_term = self.last_term()
        return term > our_term or (term == our_term and last_index >= self.last_index())

    # --- appending (thesis §3.5) -------------------------------------------------------
    def find_conflict(self, ents: list[eraftpb.Entry]) -> int:
        """Index of the first entry of `ents` that is missing or whose term differs
        from ours; 0 when all of them are already in the log."""
        if not ents:
            return 0
        last = ents[-1]
        # Log Matching (§3.5): if the last entry matches, every earlier one does too.
        if self.match_term(last.index, last.term):
            return 0
        for entry in ents:
            if not self.match_term(entry.index, entry.term):
                if entry.index <= self.last_index():
                    logger.info(
                        "found conflict at index %d [existing term: %d, conflicting term: %d]",
                        entry.index, self.term_or_zero(entry.index), entry.term)
                return entry.index
        return 0  # pragma: no cover - the last entry mismatched, so some entry does

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int | None]:
        """Fast backtracking (thesis §5.3's optimisation): the largest index <= `index`
        whose term is <= `term`, with that term; (index, None) if `index` is past our
        log or the search ran into the compacted part."""
        if index > self.last_index():
            return index, None
        conflict_index = index
        while True:
            try:
                our_term = self.term(conflict_index)
            except StorageError:
                return conflict_index, None
            if our_term > term:
                conflict_index -= 1
            else:
                return conflict_index, our_term

    def maybe_append(self, idx: int, term: int, committed: int,
                     ents: list[eraftpb.Entry]) -> tuple[int, int] | None:
        """Append `ents` (which follow the entry (idx, term)) if our log matches at
        `idx`; returns (conflict index, last new index), or None when it does not
        match (the follower then rejects, §3.5)."""
        if not self.match_term(idx, term):
            return None
        conflict_idx = self.find_conflict(ents)
        if conflict_idx != 0:
            # Log Matching: a committed entry never conflicts with a leader's log.
            assert conflict_idx > self.committed, (
                f"entry {conflict_idx} conflicts with committed entry "
                f"(committed {self.committed})"
            )
            start = conflict_idx - (idx + 1)
            self.append(ents[start:] if start else ents)
            # The conflicting durable entries are being replaced: they no longer count.
            if self.persisted > conflict_idx - 1:
                self.persisted = conflict_idx - 1
        last_new_index = idx + len(ents)
        self.commit_to(min(committed, last_new_index))
        return conflict_idx, last_new_index

    def append(self, ents: list[eraftpb.Entry]) -> int:
        """Append entries to the unstable tail, truncating any conflict; the new last index."""
        if not ents:
            return self.last_index()
        after = ents[0].index - 1
        assert after >= self.committed, (
            f"append after {after} would truncate below committed {self.committed}"
        )
        self.unstable.truncate_and_append(ents)
        return self.last_index()

    # --- commit and apply ------------------------------------------------------------
    def commit_to(self, to_commit: int) -> None:
        """Raise the commit index (never lowers it)."""
        if self.committed >= to_commit:
            return
        assert self.last_index() >= to_commit, (
            f"to_commit {to_commit} is out of range [last_index {self.last_index()}]"
        )
        self.committed = to_commit

    def maybe_commit(self, max_index: int, term: int) -> bool:
        """Thesis §3.6.2: commit up to `max_index` only if that entry is of the leader's
        current `term`; earlier-term entries then commit by Log Matching."""
        if max_index > self.committed and self.term_or_zero(max_index) == term:
            self.commit_to(max_index)
            return True
        return False

    def applied_to(self, idx: int) -> None:
        """The application has applied everything up to `idx`."""
        if idx == 0:
            return
        assert self.applied <= idx <= self.committed, (
            f"applied({idx}) is out of range [prev applied {self.applied}, "
            f"committed {self.committed}]"
        )
        self.applied = idx

    def maybe_persist(self, index: int, term: int) -> bool:
        """Entries up to (index, term) are durable: drop them from the unstable part.
        Ignored when the entry at `index` was replaced meanwhile (then what became
        durable is not what the log holds). The caller guarantees that no write still
        outstanding rewrites an index <= `index`."""
        if index <= self.persisted or self.term_or_zero(index) != term:
            return False
        assert index < self.unstable.offset_in_progress, (
            f"persisted {index} was never handed out (in progress "
            f"{self.unstable.offset_in_progress})"
        )
        self.persisted = index
        self.unstable.stable_entries(index, term)
        return True

    def maybe_persist_snap(self, index: int) -> bool:
        """The snapshot at `index` is durable."""
        self.unstable.stable_snap(index)
        if index <= self.persisted:
            return False
        assert index <= self.committed, (
            f"snapshot index {index} > committed {self.committed}"
        )
        self.persisted = index
        return True

    def _store_term_or_zero(self, idx: int) -> int:
        try:
            return self.store.term(idx)
        except StorageError:
            return 0

    # --- reading ---------------------------------------------------------------------
    def unstable_entries(self) -> list[eraftpb.Entry]:
        return self.unstable.entries

    def unstable_snapshot(self) -> eraftpb.Snapshot | None:
        return self.unstable.snapshot

    def next_unstable_entries(self) -> list[eraftpb.Entry]:
        """Entries to hand to the application for writing in the next Ready."""
        return self.unstable.next_entries()

    def next_unstable_snapshot(self) -> eraftpb.Snapshot | None:
        return self.unstable.next_snapshot()

    def has_next_entries_since(self, since_idx: int) -> bool:
        """Whether entries after `since_idx` are committed and durable here."""
        high = min(self.committed, self.persisted) + 1
        if high <= since_idx + 1:
            return False
        return high > max(since_idx + 1, self.first_index())

    def next_entries_since(self, since_idx: int,
                           max_size: int | None = None) -> list[eraftpb.Entry]:
        """Committed, locally durable entries after `since_idx`, for the application to
        apply (§10.2.1: entries not yet durable here are never applied)."""
        high = min(self.committed, self.persisted) + 1
        if high <= since_idx + 1:
            return []
        offset = max(since_idx + 1, self.first_index())
        if high > offset:
            return self.slice(offset, high, max_size)
        return []

    def has_next_entries(self) -> bool:
        return self.has_next_entries_since(self.applied)

    def next_entries(self, max_size: int | None = None) -> list[eraftpb.Entry]:
        return self.next_entries_since(self.applied, max_size)

    def entries(self, idx: int, max_size: int | None = None) -> list[eraftpb.Entry]:
        """Entries from `idx` to the end of the log, at most `max_size` bytes."""
        last = self.last_index()
        if idx > last:
            return []
        return self.slice(idx, last + 1, max_size)

    def all_entries(self) -> list[eraftpb.Entry]:
        """Every entry held (tests and debugging)."""
        return self.entries(self.first_index())

    def slice(self, low: int, high: int, max_size: int | None = None) -> list[eraftpb.Entry]:
        """Entries in [low, high), at least one when non-empty, at most max_size bytes.

        Raises CompactedError if `low` was compacted away.
        """
        self._must_check_out_of_bounds(low, high)
        if low == high:
            return []
        max_size = _size_limit(max_size)
        offset = self.unstable.offset
        if low >= offset:
            return limit_size(self.unstable.slice(low, high), max_size)
        stored = self.store.entries(low, min(high, offset), max_size)
        if len(stored) < min(high, offset) - low:
            # Storage stopped early (size limit): nothing from the unstable part fits.
            return stored
        if high > offset:
            ents = list(stored)
            ents.extend(self.unstable.slice(offset, high))
            return limit_size(ents, max_size)
        return stored

    def _must_check_out_of_bounds(self, low: int, high: int) -> None:
        assert low <= high, f"invalid slice {low} > {high}"
        first_index = self.first_index()
        if low < first_index:
            raise CompactedError()
        length = self.last_index() + 1 - first_index
        assert high <= first_index + length, (
            f"slice[{low},{high}) out of bound [{first_index},{self.last_index()}]"
        )

    # --- snapshots -------------------------------------------------------------------
    def snapshot(self, request_index: int, to: int) -> eraftpb.Snapshot:
        """A snapshot for peer `to`: the unstable one if recent enough, else Storage's."""
        snap = self.unstable.snapshot
        if snap is not None and snap.metadata.index >= request_index:
            return snap
        return self.store.snapshot(request_index, to)

    def restore(self, snapshot: eraftpb.Snapshot) -> None:
        """Replace the log by `snapshot` (a follower installing the leader's, §5.3)."""
        index = snapshot.metadata.index
        assert index >= self.committed, f"restore snapshot {index} < committed {self.committed}"
        logger.info("log starts to restore snapshot [index: %d, term: %d]",
                    index, snapshot.metadata.term)
        if self.persisted > index:
            self.persisted = index
        self.committed = index
        self.unstable.restore(snapshot)
