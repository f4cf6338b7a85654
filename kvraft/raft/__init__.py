"""kvraft.raft: an I/O-free Raft consensus core (SPEC.md §1)."""
from kvraft.proto import eraftpb_pb2 as eraftpb
from kvraft.raft.config import NO_LIMIT, Config, ReadOnlyOption
from kvraft.raft.errors import (
    CompactedError,
    ConfChangeError,
    ConfigInvalid,
    LogTemporarilyUnavailableError,
    ProposalDropped,
    RaftError,
    SnapshotOutOfDateError,
    SnapshotTemporarilyUnavailableError,
    StepLocalMsg,
    StepPeerNotFound,
    StorageError,
    UnavailableError,
)
from kvraft.raft.storage import MemStorage, RaftState, Storage

__all__ = [
    "NO_LIMIT",
    "CompactedError",
    "ConfChangeError",
    "Config",
    "ConfigInvalid",
    "LogTemporarilyUnavailableError",
    "MemStorage",
    "ProposalDropped",
    "RaftError",
    "RaftState",
    "ReadOnlyOption",
    "SnapshotOutOfDateError",
    "SnapshotTemporarilyUnavailableError",
    "StepLocalMsg",
    "StepPeerNotFound",
    "Storage",
    "StorageError",
    "UnavailableError",
    "eraftpb",
]
