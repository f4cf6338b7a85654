"""`KVStateMachine`: the key-value store that committed Raft entries are applied to.

Applying (thesis §3.5: entries are applied in log order, each exactly once):
* one call = one LevelDB WriteBatch holding every entry's effects AND the new applied
  index/term, so after any crash the machine resumes exactly after the last applied
  entry; entries at or below the applied index are skipped (the node may re-deliver
  them after a restart), so nothing is applied twice.
* the batch is written without fsync: LevelDB's write-ahead log is sequential, so the
  node's next synced Raft-log write makes it durable, and until then the synced log
  still holds every committed entry to replay. Log compaction only drops entries the
  machine has applied (see LevelDBStorage.compact), whose effects that synced write
  carries to disk first.

Reads (`get`, `scan`) are point-in-time: a LevelDB get or iterator sees one consistent
state. Snapshots (`create_snapshot`, `raft_snapshot`) are LevelDB snapshots: taking one
costs nothing and applies continue meanwhile.

Threading: `apply` and `install_snapshot` from any thread, one at a time (a writer
lock serialises them; the node applies on its apply thread and installs on its
persistence thread); `get`, `scan`, `members` and snapshot reads from any thread. An
install holds reads off until it is complete, so no reader sees a half-installed image;
an apply never holds them off (its one batch is atomic).
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import plyvel
from google.protobuf.message import DecodeError

from kvraft.proto import command_pb2 as cpb
from kvraft.proto import eraftpb_pb2 as eraftpb
from kvraft.raft.errors import SnapshotTemporarilyUnavailableError
from kvraft.storage import keys
from kvraft.storage.commands import (
    CommandDecodeError,
    MemberRecord,
    decode_command,
    decode_members,
)
from kvraft.storage.datadir import DataDir
from kvraft.storage.log_store import LevelDBStorage
from kvraft.storage.snapshot import (
    SnapshotHandle,
    SnapshotReceiver,
    StagedSnapshot,
    install_staged,
)

# ApplyResult.kind
PUT = "put"
DELETE = "delete"
CAS = "cas"
BATCH = "batch"
NOOP = "noop"              # an empty entry (a new leader's first entry, thesis §6.4)
CONF_CHANGE = "conf_change"
INVALID = "invalid"        # data that is not a command: applied as a no-op, reported

SNAPSHOT_DESCRIPTOR_VERSION = 1
OnConfChange = Callable[[eraftpb.Entry], eraftpb.ConfState]


@dataclass(slots=True)
class ApplyResult:
    """The outcome of one applied entry, for the waiter of `request_id`.

    put: ok. delete: `deleted` (the key existed). cas: `ok` (swapped); `found` and
    `current` describe the key as the comparison saw it (before any write). batch:
    `deleted_list`, one per delete in order. conf_change: `conf_state` if an
    on_conf_change callback supplied it; `request_id` is the ConfChange's `id` (V1).
    invalid: ok=False and `error`.
    """

    index: int
    term: int
    request_id: int
    kind: str
    ok: bool = True
    found: bool = False
    deleted: bool = False
    current: bytes | None = None
    deleted_list: list[bool] = field(default_factory=list)
    conf_state: eraftpb.ConfState | None = None
    error: str = ""


class _PendingWrites:
    """The effects of the batch being built, so later entries read earlier ones."""

    def __init__(self, db: plyvel.DB, batch: plyvel.WriteBatch) -> None:
        self._db = db
        self._batch = batch
        self._kv: dict[bytes, bytes | None] = {}

    def get(self, key: bytes) -> bytes | None:
        if key in self._kv:
            return self._kv[key]
        return self._db.get(keys.kv_key(key))

    def put(self, key: bytes, value: bytes) -> None:
        self._kv[key] = value
        self._batch.put(keys.kv_key(key), value)

    def delete(self, key: bytes) -> None:
        self._kv[key] = None
        self._batch.delete(keys.kv_key(key))


class KVStateMachine:
    def __init__(self, datadir: DataDir, *, scan_page_entries_max: int = 10_000,
                 scan_page_bytes_max: int = 4 << 20, snapshot_handles_max: int = 4) -> None:
        assert scan_page_entries_max >= 1 and scan_page_bytes_max >= 1
        assert snapshot_handles_max >= 1
        self._datadir = datadir
        self._db = datadir.db
        self.scan_page_entries_max = scan_page_entries_max
        self.scan_page_bytes_max = scan_page_bytes_max
        self._snapshot_handles_max = snapshot_handles_max
        self._handles: OrderedDict[tuple[int, int], SnapshotHandle] = OrderedDict()
        self._handles_lock = threading.Lock()
        # Writers (apply, install, initialize_members) one at a time.
        self._write_lock = threading.Lock()
        # Held by an install for its whole duration and briefly by reads, so no read
        # sees an install half done. An apply does not take it: its one WriteBatch is
        # atomic (a reader sees all of it or nothing), so a read on the node's event
        # loop never waits for an apply's write, which stalls while LevelDB's
        # compaction is behind (issue 11, item 8).
        self._state_lock = threading.RLock()
        self.applied_index = 0
        self.applied_term = 0
        self._load_applied()

    def _load_applied(self) -> None:
        raw = self._db.get(keys.APPLIED)
        self.applied_index, self.applied_term = (
            keys.unpack_index_term(raw) if raw is not None else (0, 0))

    # --- applying -----------------------------------------------------------------------
    def apply(self, entries: list[eraftpb.Entry],
              on_conf_change: OnConfChange | None = None) -> list[ApplyResult]:
        """Apply committed entries in order; one result per entry actually applied.

        `on_conf_change(entry)` is called for each conf-change entry, in log order,
        after the earlier entries of the call; the node applies the change to Raft
        there (`RawNode.apply_conf_change`) and returns the new ConfState, which is
        then written in the same batch as the applied index (crash-atomic). It runs
        while the writer lock is held: it must not wait for another thread that writes
        the state machine.
        """
        results: list[ApplyResult] = []
        with self._write_lock:
            batch = self._db.write_batch()
            pending = _PendingWrites(self._db, batch)
            members: dict[int, MemberRecord | None] = {}
            last_index, last_term = self.applied_index, self.applied_term
            for entry in entries:
                if entry.index <= self.applied_index:
                    continue  # applied before a restart; the log re-delivered it
                assert entry.index == last_index + 1, (
                    f"apply out of order: entry {entry.index} after {last_index}")
                if entry.entry_type == eraftpb.EntryNormal:
                    result = self._apply_normal(entry, pending)
                else:
                    result = self._apply_conf_change(entry, batch, members, on_conf_change)
                results.append(result)
                last_index, last_term = entry.index, entry.term
            if last_index == self.applied_index:
                return results
            batch.put(keys.APPLIED, keys.pack_index_term(last_index, last_term))
            batch.write()
            self.applied_index, self.applied_term = last_index, last_term
        return results

    @staticmethod
    def _apply_normal(entry: eraftpb.Entry, pending: _PendingWrites) -> ApplyResult:
        if not entry.data:
            return ApplyResult(entry.index, entry.term, 0, NOOP)
        try:
            command = decode_command(entry.data)
        except CommandDecodeError as e:
            return ApplyResult(entry.index, entry.term, 0, INVALID, ok=False, error=str(e))
        result = ApplyResult(entry.index, entry.term, command.request_id, PUT)
        op = command.WhichOneof("op")
        if op == "put":
            pending.put(command.put.key, command.put.value)
        elif op == "delete":
            result.kind = DELETE
            result.deleted = pending.get(command.delete.key) is not None
            if result.deleted:
                pending.delete(command.delete.key)
        elif op == "cas":
            result.kind = CAS
            cas = command.cas
            current = pending.get(cas.key)
            expected = cas.expected if cas.HasField("expected") else None
            result.found = current is not None
            result.current = current
            result.ok = current == expected
            if result.ok:
                pending.put(cas.key, cas.value)
        else:
            assert op == "batch", op
            result.kind = BATCH
            # The hot loop of bulk loading (thousands of ops per entry, on every node):
            # each protobuf field access builds a wrapper, so read each field once.
            put, get, delete = pending.put, pending.get, pending.delete
            for batch_op in command.batch.ops:
                if batch_op.HasField("put"):
                    p = batch_op.put
                    put(p.key, p.value)
                elif batch_op.HasField("delete"):
                    key = batch_op.delete.key
                    existed = get(key) is not None
                    result.deleted_list.append(existed)
                    if existed:
                        delete(key)
        return result

    def _apply_conf_change(self, entry: eraftpb.Entry, batch: plyvel.WriteBatch,
                           members: dict[int, MemberRecord | None],
                           on_conf_change: OnConfChange | None) -> ApplyResult:
        result = ApplyResult(entry.index, entry.term, 0, CONF_CHANGE)
        try:
            if entry.entry_type == eraftpb.EntryConfChange:
                cc = eraftpb.ConfChange.FromString(entry.data)
                changes = [(cc.change_type, cc.node_id)]
                result.request_id = cc.id
                context = entry.context or cc.context
            else:
                cc2 = eraftpb.ConfChangeV2.FromString(entry.data)
                changes = [(c.change_type, c.node_id) for c in cc2.changes]
                context = entry.context or cc2.context
        except DecodeError as e:
            return ApplyResult(entry.index, entry.term, 0, INVALID, ok=False,
                               error=f"malformed conf change: {e}")
        try:
            infos = {m.id: m for m in decode_members(context)}
        except CommandDecodeError:
            infos = {}  # addresses unknown; the membership change itself still applies
        for change_type, node_id in changes:
            if change_type == eraftpb.RemoveNode:
                members[node_id] = None
                batch.delete(keys.member_key(node_id))
                continue
            known = members[node_id] if node_id in members else self._member(node_id)
            record = infos.get(node_id) or known or MemberRecord(node_id)
            record = replace(record, learner=change_type == eraftpb.AddLearnerNode)
            members[node_id] = record
            batch.put(keys.member_key(node_id), record.to_proto().SerializeToString())
        if on_conf_change is not None:
            cs = on_conf_change(entry)
            result.conf_state = cs
            batch.put(keys.CONF_STATE, cs.SerializeToString())
        return result

    # --- reads --------------------------------------------------------------------------
    def get(self, key: bytes) -> bytes | None:
        with self._state_lock:
            return self._db.get(keys.kv_key(key))

    def scan(self, start: bytes, end: bytes, limit: int) -> tuple[list[tuple[bytes, bytes]], bool]:
        """Keys in [start, end) in order (empty `end`: to the end of the key space), at
        most `limit` (0: no limit) and at most one server page; `more` is True when
        keys in the range were left out."""
        cap = self.scan_page_entries_max if limit <= 0 else min(limit,
                                                                 self.scan_page_entries_max)
        stop = keys.kv_key(end) if end else keys.KV_END
        out: list[tuple[bytes, bytes]] = []
        size = 0
        more = False
        with self._state_lock, self._db.iterator(start=keys.kv_key(start), stop=stop) as it:
            for key, value in it:
                if len(out) >= cap or (out and size + len(key) + len(value) - 1 >
                                       self.scan_page_bytes_max):
                    more = True
                    break
                out.append((key[1:], value))
                size += len(key) - 1 + len(value)
        return out, more

    def _member(self, member_id: int) -> MemberRecord | None:
        raw = self._db.get(keys.member_key(member_id))
        return None if raw is None else MemberRecord.from_proto(cpb.MemberInfo.FromString(raw))

    def members(self) -> list[MemberRecord]:
        """Every known member, by id."""
        with self._state_lock, self._db.iterator(prefix=keys.MEMBER_PREFIX,
                                                 include_key=False) as it:
            return [MemberRecord.from_proto(cpb.MemberInfo.FromString(v)) for v in it]

    def initialize_members(self, members: list[MemberRecord]) -> None:
        """Record the founding members of a fresh cluster (synced). Later changes
        arrive through conf-change entries."""
        with self._write_lock, self._db.write_batch(sync=True) as batch:
            for m in members:
                batch.put(keys.member_key(m.id), m.to_proto().SerializeToString())

    def conf_state(self) -> eraftpb.ConfState:
        raw = self._db.get(keys.CONF_STATE)
        return eraftpb.ConfState() if raw is None else eraftpb.ConfState.FromString(raw)

    # --- snapshots ----------------------------------------------------------------------
    def create_snapshot(self) -> SnapshotHandle:
        """A consistent image at the current applied index; close() it when done."""
        with self._state_lock:
            return SnapshotHandle(self._db)

    def raft_snapshot(self, request_index: int, to: int) -> eraftpb.Snapshot:
        """`Storage.snapshot` for `LevelDBStorage.set_snapshot_provider`.

        Returns the metadata of a fresh image plus a small SnapshotDescriptor as data;
        the image stays open (the newest `snapshot_handles_max` are kept) for the
        transport to stream with `snapshot_handle(index, term)`.
        """
        if self.applied_index < request_index:
            raise SnapshotTemporarilyUnavailableError()
        with self._handles_lock:
            handle = self._handles.get((self.applied_index, self.applied_term))
            if handle is not None:  # nothing applied since: share the image
                self._handles.move_to_end((self.applied_index, self.applied_term))
            else:
                handle = self.create_snapshot()
                meta = handle.metadata
                old = self._handles.pop((meta.index, meta.term), None)
                if old is not None:
                    old.close()
                self._handles[(meta.index, meta.term)] = handle
                # An evicted image still being streamed lives until its streams end.
                while len(self._handles) > self._snapshot_handles_max:
                    _, evicted = self._handles.popitem(last=False)
                    evicted.close()
        meta = handle.metadata
        descriptor = cpb.SnapshotDescriptor(
            format_version=SNAPSHOT_DESCRIPTOR_VERSION, index=meta.index, term=meta.term,
            from_node=self._datadir.node_id, cluster_id=self._datadir.cluster_id)
        snap = eraftpb.Snapshot(data=descriptor.SerializeToString())
        snap.metadata.CopyFrom(meta)
        return snap

    def snapshot_handle(self, index: int, term: int) -> SnapshotHandle | None:
        """The open image `raft_snapshot` made at (index, term), if still kept."""
        with self._handles_lock:
            return self._handles.get((index, term))

    def receive_snapshot(self, metadata: eraftpb.SnapshotMetadata) -> SnapshotReceiver:
        """Start staging an incoming snapshot (write chunks, then finish())."""
        return SnapshotReceiver(self._datadir, metadata)

    def install_snapshot(self, staged: StagedSnapshot, log_store: LevelDBStorage) -> None:
        """Replace the data AND the Raft log by `staged`, atomically across crashes.

        Call it from the thread that persists Readys, for the Ready carrying the
        snapshot, before `log_store.persist(...)` of that Ready (whose snapshot part is
        then already in place). Reads wait until it is done.
        """
        with self._write_lock, self._state_lock:
            install_staged(self._datadir, staged, log_store)
            self._load_applied()
            assert (self.applied_index, self.applied_term) == (staged.metadata.index,
                                                                staged.metadata.term)

    def close(self) -> None:
        """Release the open snapshot images (the DataDir closes the database)."""
        with self._handles_lock:
            for handle in self._handles.values():
                handle.close()
            self._handles.clear()
