"""kvraft.storage: the durable Raft log, the key-value state machine, snapshots and the
data directory, all in one LevelDB per node (docs/INTERFACES.md, "kvraft.storage")."""
from kvraft.storage.commands import (
    CommandDecodeError,
    MemberRecord,
    batch_command,
    cas_command,
    decode_command,
    decode_members,
    delete_command,
    encode_command,
    encode_members,
    member_update_command,
    put_command,
)
from kvraft.storage.compaction import CompactionPolicy
from kvraft.storage.datadir import DataDir, DataDirError
from kvraft.storage.log_store import LevelDBStorage
from kvraft.storage.snapshot import (
    SnapshotHandle,
    SnapshotReceiver,
    SnapshotStreamError,
    StagedSnapshot,
)
from kvraft.storage.snapshot_install import recover_unfinished_install
from kvraft.storage.state_machine import ApplyResult, KVStateMachine
from kvraft.storage.store import NodeStore, open_store

__all__ = [
    "ApplyResult",
    "CommandDecodeError",
    "CompactionPolicy",
    "DataDir",
    "DataDirError",
    "KVStateMachine",
    "LevelDBStorage",
    "MemberRecord",
    "NodeStore",
    "SnapshotHandle",
    "SnapshotReceiver",
    "SnapshotStreamError",
    "StagedSnapshot",
    "batch_command",
    "cas_command",
    "decode_command",
    "decode_members",
    "delete_command",
    "encode_command",
    "encode_members",
    "member_update_command",
    "open_store",
    "put_command",
    "recover_unfinished_install",
]
