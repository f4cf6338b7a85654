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
from kvraft.raft.raft import Raft, StateRole
from kvraft.raft.raw_node import LightReady, RawNode, Ready, SnapshotStatus
from kvraft.raft.read_only import ReadState
from kvraft.raft.status import SoftState, Status
from kvraft.raft.storage import MemStorage, RaftState, Storage
from kvraft.raft.tracker import ProgressState

__all__ = [
    "NO_LIMIT",
    "CompactedError",
    "ConfChangeError",
    "Config",
    "ConfigInvalid",
    "LightReady",
    "LogTemporarilyUnavailableError",
    "MemStorage",
    "ProgressState",
    "ProposalDropped",
    "Raft",
    "RaftError",
    "RaftState",
    "RawNode",
    "ReadOnlyOption",
    "ReadState",
    "Ready",
    "SnapshotOutOfDateError",
    "SnapshotStatus",
    "SnapshotTemporarilyUnavailableError",
    "SoftState",
    "StateRole",
    "Status",
    "StepLocalMsg",
    "StepPeerNotFound",
    "Storage",
    "StorageError",
    "UnavailableError",
    "eraftpb",
]
