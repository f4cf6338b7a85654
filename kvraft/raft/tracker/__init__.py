"""Per-peer replication state kept by the leader: progress, flow control, votes."""

from kvraft.raft.tracker.inflights import Inflights
from kvraft.raft.tracker.progress import INVALID_INDEX, Progress, ProgressState
from kvraft.raft.tracker.tracker import Configuration, MapChange, MapChangeType, ProgressTracker

__all__ = [
    "INVALID_INDEX",
    "Configuration",
    "Inflights",
    "MapChange",
    "MapChangeType",
    "Progress",
    "ProgressState",
    "ProgressTracker",
]
