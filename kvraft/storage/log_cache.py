"""A bounded in-memory copy of the tail of the Raft log.

The leader reads the newest entries over and over (one MsgAppend per follower per
Ready), so they are served from memory; older entries (a slow follower catching up)
come from LevelDB. The cache always holds a contiguous run of entries ending at the
log's last index, or nothing.
"""
from __future__ import annotations

from collections import deque

from kvraft.proto import eraftpb_pb2 as eraftpb


class LogTailCache:
    def __init__(self, entries_max: int = 4096, bytes_max: int = 16 << 20) -> None:
        assert entries_max >= 1 and bytes_max >= 1
        self.entries_max = entries_max
        self.bytes_max = bytes_max
        self._entries: deque[eraftpb.Entry] = deque()
        self._sizes: deque[int] = deque()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def first(self) -> int:
        """Index of the first cached entry (meaningless when empty)."""
        return self._entries[0].index if self._entries else 0

    @property
    def last(self) -> int:
        return self._entries[-1].index if self._entries else 0

    def clear(self) -> None:
        self._entries.clear()
        self._sizes.clear()
        self._bytes = 0

    def append(self, entries: list[eraftpb.Entry], sizes: list[int]) -> None:
        """Append entries that follow (or overwrite a suffix of) the log's tail."""
        if not entries:
            return
        first_new = entries[0].index
        if self._entries and not (self.first <= first_new <= self.last + 1):
            # A gap, or an overwrite older than the cache: restart from the new entries.
            self.clear()
        while self._entries and self._entries[-1].index >= first_new:
            self._entries.pop()
            self._bytes -= self._sizes.pop()
        self._entries.extend(entries)
        self._sizes.extend(sizes)
        self._bytes += sum(sizes)
        self._trim()

    def drop_before(self, index: int) -> None:
        """Forget entries below `index` (compacted)."""
        while self._entries and self._entries[0].index < index:
            self._entries.popleft()
            self._bytes -= self._sizes.popleft()

    def _trim(self) -> None:
        # Keep at least the newest entry, even if it alone exceeds bytes_max.
        while len(self._entries) > 1 and (
            len(self._entries) > self.entries_max or self._bytes > self.bytes_max
        ):
            self._entries.popleft()
            self._bytes -= self._sizes.popleft()

    def get(self, index: int) -> eraftpb.Entry | None:
        if not self._entries or not (self.first <= index <= self.last):
            return None
        return self._entries[index - self.first]

    def slice(self, low: int, high: int) -> list[eraftpb.Entry] | None:
        """Entries [low, high) if all are cached, else None."""
        if not self._entries or low < self.first or high > self.last + 1:
            return None
        start = low - self.first
        return [self._entries[i] for i in range(start, start + (high - low))]
