"""The server's use of kvraft.storage: opening and bootstrapping a node's store, and
building the commands and conf changes it proposes.

Bootstrap (a founding member's fresh data directory): the founding configuration is
written as the first log entries — one committed AddNode conf change per founding
member, at term 1, each carrying that member's peer address — exactly as etcd
bootstraps a cluster. Every founding member writes identical entries, so their logs
agree (Log Matching), and a member added later that replays the log from index 1 learns
the founding configuration and addresses from the log itself instead of needing a
snapshot (with an empty initial log it would believe itself the only voter).
"""
from __future__ import annotations

import contextlib
import logging
import random
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from kvraft.proto import eraftpb_pb2 as eraftpb
from kvraft.storage import commands
from kvraft.storage.commands import MemberRecord
from kvraft.storage.compaction import CompactionPolicy
from kvraft.storage.datadir import DataDir, DataDirError
from kvraft.storage.log_store import LevelDBStorage
from kvraft.storage.mvcc_apply import CLUSTER_VERSION_MAX
from kvraft.storage.snapshot import SnapshotReceiver
from kvraft.storage.snapshot_install import recover_unfinished_install
from kvraft.storage.state_machine import KVStateMachine

from .config import NodeConfig, ServeError, cluster_id_for

log = logging.getLogger("kvraft.server")

BOOTSTRAP_TERM = 1


@dataclass
class Store:
    datadir: DataDir
    log: LevelDBStorage
    sm: KVStateMachine
    policy: CompactionPolicy

    def close(self) -> None:
        self.sm.close()
        self.datadir.close()


# Seeded once from the OS: ids stay unpredictable across nodes and restarts, but each
# one costs no system call (secrets.randbits reads /dev/urandom on every call).
_request_ids = random.Random(secrets.randbits(128))


def new_request_id() -> int:
    """Random 63-bit ids: unique across nodes and restarts without coordination."""
    return _request_ids.getrandbits(63) or 1


def bootstrap_entries(initial_cluster: dict[int, str], *, cluster_version: bool = True
                      ) -> list[eraftpb.Entry]:
    """The founding members' identical first entries: one AddNode per member, then
    the cluster version this kvraft starts a cluster at (storage/mvcc_apply.py), so a
    member that joins later and replays the log from its start applies it too. An
    older kvraft wrote the AddNodes alone (`cluster_version=False`)."""
    entries = []
    for index, member_id in enumerate(sorted(initial_cluster), start=1):
        cc = eraftpb.ConfChange(change_type=eraftpb.AddNode, node_id=member_id)
        entries.append(eraftpb.Entry(
            entry_type=eraftpb.EntryConfChange, term=BOOTSTRAP_TERM, index=index,
            data=cc.SerializeToString(),
            context=commands.encode_members([MemberRecord(member_id, initial_cluster[member_id])]),
        ))
    if cluster_version:
        entries.append(eraftpb.Entry(
            entry_type=eraftpb.EntryNormal, term=BOOTSTRAP_TERM, index=len(entries) + 1,
            data=commands.cluster_version_command(CLUSTER_VERSION_MAX)))
    return entries


def open_store(config: NodeConfig) -> Store:
    try:
        datadir = DataDir.open(config.data_dir, config.node_id,
                               write_buffer_bytes=config.leveldb_write_buffer_bytes)
    except DataDirError as e:
        raise ServeError(str(e)) from None
    try:
        log_store = LevelDBStorage(datadir)
        # A crash in the middle of a snapshot install: redo it before anything reads the
        # state machine (which refuses a directory with an unfinished install).
        recover_unfinished_install(datadir, log_store)
        sm = KVStateMachine(datadir, scan_page_entries_max=config.scan_page_max)
        if datadir.is_new and not config.join:
            _bootstrap(config, datadir, log_store)
        elif datadir.cluster_id == 0 and not config.join:
            _finish_old_bootstrap(config, datadir, log_store)
        _repair_commit(log_store, sm)
        policy = CompactionPolicy(
            snapshot_entries=config.snapshot_entries,
            trailing_entries=min(config.snapshot_keep_entries, config.snapshot_entries - 1),
        )
        return Store(datadir, log_store, sm, policy)
    except DataDirError as e:
        datadir.close()
        raise ServeError(str(e)) from None
    except BaseException:
        datadir.close()
        raise


def _bootstrap(config: NodeConfig, datadir: DataDir, log_store: LevelDBStorage) -> None:
    """Write a founding member's first state, crash-safely: the cluster id is durable
    (META, written atomically) BEFORE any Raft state. A crash before the Raft write
    leaves a directory that is still new (no Raft keys) with the right cluster id, so the
    restart bootstraps again (identical entries); a crash after it leaves a bootstrapped
    member. No crash can leave Raft state without a cluster id, which every peer would
    refuse for ever (issue 11, item 3). Both writes are fsynced (META: file and
    directory; the log: one synced batch), so this holds across a power loss too."""
    cluster_id = cluster_id_for(config.initial_cluster)
    if datadir.cluster_id not in (0, cluster_id):
        raise ServeError(f"data directory {datadir.path} belongs to another cluster")
    datadir.set_cluster_id(cluster_id)
    entries = bootstrap_entries(config.initial_cluster)
    hs = eraftpb.HardState(term=BOOTSTRAP_TERM, vote=0, commit=len(entries))
    log_store.persist(entries, hs)
    log.info("node %d: bootstrapped cluster %016x with members %s", config.node_id,
             cluster_id, sorted(config.initial_cluster))


def _finish_old_bootstrap(config: NodeConfig, datadir: DataDir,
                          log_store: LevelDBStorage) -> None:
    """A founding member's directory with Raft state but no cluster id: what an older
    kvraft, which wrote the log first, left when it crashed between the two writes.
    If the log is exactly this --initial-cluster's bootstrap, record the cluster id
    now; anything else is left for the peers to judge (refused as another cluster)."""
    expected = bootstrap_entries(config.initial_cluster, cluster_version=False)
    if log_store.first_index() != 1 or log_store.last_index() < len(expected):
        return
    held = log_store.entries(1, len(expected) + 1)
    if [(e.index, e.term, e.entry_type, e.data, e.context) for e in held] != [
            (e.index, e.term, e.entry_type, e.data, e.context) for e in expected]:
        return
    cluster_id = cluster_id_for(config.initial_cluster)
    datadir.set_cluster_id(cluster_id)
    log.warning("node %d: finished an interrupted bootstrap of cluster %016x",
                config.node_id, cluster_id)


def _repair_commit(log_store: LevelDBStorage, sm: KVStateMachine) -> None:
    """The state machine only applies committed entries, but the commit index learned
    from a LightReady is not written with them; after a crash the durable hard state
    may say less. Raise it to the applied index, so Raft never sees applied > commit."""
    hs = log_store.hard_state()
    if sm.applied_index > hs.commit:
        assert sm.applied_index <= log_store.last_index(), (
            f"applied {sm.applied_index} beyond the log's last index {log_store.last_index()}")
        hs.commit = sm.applied_index
        log_store.persist([], hs)


# --- commands ---------------------------------------------------------------------------
def encode_put(request_id: int, key: bytes, value: bytes) -> bytes:
    return commands.put_command(key, value, request_id)


def encode_delete(request_id: int, key: bytes) -> bytes:
    return commands.delete_command(key, request_id)


def encode_cas(request_id: int, key: bytes, expected: bytes | None, value: bytes) -> bytes:
    return commands.cas_command(key, expected, value, request_id)


def encode_batch(request_id: int, ops: list[tuple[str, bytes, bytes]]) -> bytes:
    return commands.batch_command(
        [(key, value if kind == "put" else None) for kind, key, value in ops], request_id
    )


def encode_batch_wire(request_id: int, ops_wire: bytes) -> bytes:
    """A batch command from a validated BatchRequest's bytes (same wire format)."""
    return commands.batch_command_from_wire(ops_wire, request_id)


def publish_self_command(request_id: int, member_id: int, peer_address: str,
                         client_address: str, incarnation: int) -> bytes:
    """The entry data of a member's publish of its own addresses and data-directory
    incarnation: a normal command, not a conf change, so it can never change the
    member's role (issue 11, item 5); the cluster records the incarnation if it knows
    none (item 7)."""
    return commands.member_update_command(member_id, peer_address, client_address,
                                          request_id, incarnation)


def replaced_member_message(member_id: int, incarnation: int, known: int) -> str:
    """The one line, for the refusing peer's log and the refused member's exit, about a
    member that came back with another data directory than the cluster knows."""
    return (f"member {member_id} came back with a different data directory (incarnation "
            f"{incarnation:016x}, cluster knows {known:016x}): remove it with "
            f"`kvraft member remove {member_id}` and add it again")


def incarnation_lookup(store: Store) -> Callable[[int], int]:
    """member id -> the incarnation its record holds (0: unknown), for the transport."""
    def known(member_id: int) -> int:
        record = store.sm.member(member_id)
        return record.incarnation if record is not None else 0
    return known


def replaced_member(store: Store, member_id: int, incarnation: int) -> str | None:
    """The refusal message if `member_id`'s record knows another incarnation than the
    one it presents; None when they agree or either is unknown (0: a member that has
    not published yet, or an older kvraft that does not send one)."""
    record = store.sm.member(member_id)
    if record is None or not record.incarnation or not incarnation or \
            incarnation == record.incarnation:
        return None
    return replaced_member_message(member_id, incarnation, record.incarnation)


def member_conf_change(member_id: int, peer_address: str, client_address: str,
                       learner: bool, *, add: bool, cc_id: int) -> eraftpb.ConfChange:
    """A simple conf change whose context carries the member's addresses, so every
    node records them when it applies the entry."""
    if not add:
        change_type = eraftpb.RemoveNode
    elif learner:
        change_type = eraftpb.AddLearnerNode
    else:
        change_type = eraftpb.AddNode
    context = b""
    if add:
        context = commands.encode_members(
            [MemberRecord(member_id, peer_address, client_address, learner)]
        )
    return eraftpb.ConfChange(id=cc_id, change_type=change_type, node_id=member_id,
                              context=context)


def snapshot_receiver(store: Store, snapshot: eraftpb.Snapshot) -> SnapshotReceiver:
    return store.sm.receive_snapshot(snapshot.metadata)


def abort_receiver(receiver: SnapshotReceiver) -> None:
    receiver.abort()


def discard_staged(staged: object) -> None:
    path = getattr(staged, "path", None)
    if path is not None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
