"""When to compact the Raft log (thesis §5.1: log compaction by snapshotting).

The state machine is itself the snapshot (a LevelDB snapshot of its keys can be taken
at any applied index), so "taking a snapshot" costs nothing up front and compaction is
only the decision of how much applied log to keep. Keeping a trailing window of applied
entries lets a follower that is briefly behind catch up from the log instead of
receiving a full snapshot (thesis §5.1.1: followers that fall behind by more than the
window are sent the snapshot).

Durability: dropping entries is safe only once the effects of applying them are
durable, across a power loss too. `LevelDBStorage.compact` guarantees it by writing the
new log offset in the same synced batch as the state machine's buffered applies
(apply_buffer.py); this module only decides how far to go.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CompactionPolicy:
    # Compact once this many applied entries are held in the log ...
    snapshot_entries: int = 10_000
    # ... or once the held log is this large (encoded entries).
    snapshot_log_bytes: int = 64 << 20
    # Applied entries kept behind the applied index for slow followers.
    trailing_entries: int = 1_000

    def __post_init__(self) -> None:
        assert self.snapshot_entries >= 1, "snapshot_entries must be positive"
        assert self.snapshot_log_bytes >= 1, "snapshot_log_bytes must be positive"
        assert 0 <= self.trailing_entries < self.snapshot_entries, (
            "trailing_entries must be below snapshot_entries, or compaction never frees "
            "anything")

    def compact_index(self, first_index: int, applied_index: int, log_bytes: int) -> int | None:
        """The new first index to compact to, or None to leave the log alone.

        `applied_index` must be both applied by the state machine and committed: the
        entries dropped are then reproducible from a state-machine snapshot.
        """
        applied_held = applied_index - first_index + 1
        if applied_held <= self.trailing_entries:
            return None
        if applied_held < self.snapshot_entries and log_bytes < self.snapshot_log_bytes:
            return None
        target = applied_index - self.trailing_entries + 1
        assert first_index < target <= applied_index + 1
        return target
