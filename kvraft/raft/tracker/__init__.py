"""Per-peer replication state kept by the leader: progress, flow control, votes."""

from kvraft.raft.tracker.inflights import Inflights
from kvraft.raft.tracker.progress import (
    INVALID_INDEX,
    NEVER_ACKED_SEQ,
    NEVER_ACKED_TICK,
    Progress,
    ProgressState,
)
from kvraft.raft.tracker.tracker import Configuration, MapChange, MapChangeType, ProgressTracker

__all__ = [
    "INVALID_INDEX",
    "NEVER_ACKED_SEQ",
    "NEVER_ACKED_TICK",
    "Configuration",
    "Inflights",
    "MapChange",
    "MapChangeType",
    "Progress",
    "ProgressState",
    "ProgressTracker",
]
