"""`KVStateMachine`: the key-value store that committed Raft entries are applied to.

Applying (thesis §3.5: entries are applied in log order, each exactly once):
* one call's effects AND the new applied index/term (and conf state, member records)
  are one set of writes, kept together from then on, so after any crash the machine
  resumes exactly after the last applied entry it recorded; entries at or below the
  applied index are skipped (the node may re-deliver them after a restart), so nothing
  is applied twice.
* the writes go to the data directory's ApplyBuffer (storage/apply_buffer.py), never
  to LevelDB unsynced: they reach LevelDB only inside a synced batch (the next Raft-log
  persist, a compaction, a close), all of them at once with the applied index. LevelDB
  does not keep the order of unsynced writes across a power loss (its write-ahead log
  switches files without an fsync), so an apply written unsynced could vanish while a
  later one survived; buffered, a power loss only loses a suffix of the applies, which
  the node applies again from the log. Log compaction makes the buffer durable in the
  batch that moves the log's start (LevelDBStorage.compact), so no entry is dropped
  before its effects are durable.

Reads (`get`, `scan`) see the buffer and LevelDB together, point in time (a scan reads
one LevelDB snapshot and a copy of the buffer taken with it). Snapshots
(`create_snapshot`, `raft_snapshot`) are such frozen views: taking one costs no write,
and applies continue meanwhile.

Reads never wait for a write (issue 11, item 6: the node reads on its event loop, so a
read that waited for a long snapshot install would stop heartbeats, acks and ticks).
An apply builds its writes aside and adds them to the buffer in one step. An install
first switches readers to a frozen view of the state before it, installs, then
switches them back: readers see the old state, whole, until the new one is complete,
and only the two switches wait — for the reads already running, not for the install.
`members()` is answered from memory (the records are few), never from LevelDB.

Threading: `apply` and `install_snapshot` from one thread at a time (normally the
node's apply loop); `get`, `scan`, `members`, `conf_state` and snapshot reads from any
thread.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field, replace

from google.protobuf.message import DecodeError

from kvraft.proto import command_pb2 as cpb
from kvraft.proto import eraftpb_pb2 as eraftpb
from kvraft.raft.errors import SnapshotTemporarilyUnavailableError
from kvraft.storage import keys, mvcc
from kvraft.storage.apply_buffer import ApplyBuffer, FrozenView, MergedIterator, prefix_stop
from kvraft.storage.auth_store import AuthState
from kvraft.storage.auth_store import load_state as load_auth_state
from kvraft.storage.commands import (
    ETCD_OPS,
    CommandDecodeError,
    MemberRecord,
    decode_command,
    decode_members,
)
from kvraft.storage.datadir import DataDir, DataDirError
from kvraft.storage.log_store import LevelDBStorage
from kvraft.storage.mvcc import layout as mvcc_layout
from kvraft.storage.mvcc_apply import (
    CLUSTER_VERSION_MVCC,
    Alarm,
    LeaseRecord,
    VersionedApply,
    alarms,
    cas_outcome,
    lease_record,
    lease_records,
    read_cluster_version,
)
from kvraft.storage.snapshot import SnapshotHandle, SnapshotReceiver, StagedSnapshot
from kvraft.storage.snapshot_install import install_pending, install_staged
from kvraft.storage.state_hash import StateHash, hash_history, hash_view

# ApplyResult.kind
PUT = "put"
DELETE = "delete"
CAS = "cas"
BATCH = "batch"
NOOP = "noop"              # an empty entry (a new leader's first entry, thesis §6.4)
MEMBER_UPDATE = "member_update"  # a member's publish of its addresses (ok: recorded)
CONF_CHANGE = "conf_change"
INVALID = "invalid"        # data that is not a command: applied as a no-op, reported
CLUSTER_VERSION = "cluster_version"
# etcd's commands report their Command field as the kind ("etcd_put", "lease_grant", ...).
_KIND_OF_OP = {"put": PUT, "delete": DELETE, "cas": CAS, "batch": BATCH}

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
    # At cluster version 2 (mvcc_apply.py): the MVCC store's answer (a PutResponse,
    # DeleteRangeResponse, TxnResponse, CompactResponse, LeaseGrantResult, ...) or its
    # refusal; the events the entry made, in revision order (the watch hub's feed);
    # the store's revision after the entry.
    response: object | None = None
    mvcc_error: mvcc.MVCCError | None = None
    events: tuple[mvcc.Event, ...] = ()
    revision: int = 0


class _PendingWrites:
    """The writes of the apply being built (LevelDB key -> value, None = delete), so
    later entries of the call read earlier ones; then buffered as one unit."""

    def __init__(self, buffer: ApplyBuffer) -> None:
        self._buffer = buffer
        self.writes: dict[bytes, bytes | None] = {}

    def get(self, key: bytes) -> bytes | None:
        full = keys.KV_PREFIX + key
        if full in self.writes:
            return self.writes[full]
        return self._buffer.get(full)

    def put(self, key: bytes, value: bytes) -> None:
        self.writes[keys.KV_PREFIX + key] = value

    def delete(self, key: bytes) -> None:
        self.writes[keys.KV_PREFIX + key] = None


class _LiveView:
    """The state machine as of now: LevelDB overlaid by the apply buffer."""

    def __init__(self, buffer: ApplyBuffer) -> None:
        self._buffer = buffer

    def get(self, key: bytes) -> bytes | None:
        return self._buffer.get(key)

    def iterator(self, *, start: bytes, stop: bytes) -> MergedIterator:
        return self._buffer.iterator(start=start, stop=stop)


_View = _LiveView | FrozenView


class _ViewSlot:
    def __init__(self, view: _View, cluster_version: int) -> None:
        self.view = view
        # Which layout the view's key-value data is in (mvcc_apply.py): fixed per slot,
        # so a read never mixes the layouts of two moments.
        self.cluster_version = cluster_version
        self.readers = 0  # reads using this view now (guarded by _ReadViews._cond)


class _ReadViews:
    """Which view reads use, and how many reads use it. `switch` makes new reads use
    another view at once and returns when no read uses the old one any more — it waits
    for reads that already run (a get, one scan page), never the other way round."""

    def __init__(self, view: _View, cluster_version: int) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._slot = _ViewSlot(view, cluster_version)

    @property
    def cluster_version(self) -> int:
        """The layout new reads use (the applying thread's view of it)."""
        return self._slot.cluster_version

    def enter(self) -> _ViewSlot:
        with self._cond:
            slot = self._slot
            slot.readers += 1
            return slot

    def leave(self, slot: _ViewSlot) -> None:
        with self._cond:
            slot.readers -= 1
            if slot.readers == 0 and slot is not self._slot:
                self._cond.notify_all()

    def switch(self, view: _View, cluster_version: int) -> None:
        with self._cond:
            old, self._slot = self._slot, _ViewSlot(view, cluster_version)
            while old.readers:
                self._cond.wait()


class KVStateMachine:
    def __init__(self, datadir: DataDir, *, scan_page_entries_max: int = 10_000,
                 scan_page_bytes_max: int = 4 << 20, snapshot_handles_max: int = 4,
                 range_limits: mvcc.RangeLimits | None = None) -> None:
        assert scan_page_entries_max >= 1 and scan_page_bytes_max >= 1
        assert snapshot_handles_max >= 1
        if install_pending(datadir):
            # Its data is half old, half new until the install is redone, which needs
            # the Raft log: the opener's job (open_store, store.py), done before this.
            raise DataDirError(datadir.path, "holds an interrupted snapshot install: "
                                             "open it with kvraft.storage.open_store")
        self._datadir = datadir
        self._db = datadir.db
        self._buffer = datadir.apply_buffer
        self.scan_page_entries_max = scan_page_entries_max
        self.scan_page_bytes_max = scan_page_bytes_max
        self._snapshot_handles_max = snapshot_handles_max
        self._handles: OrderedDict[tuple[int, int], SnapshotHandle] = OrderedDict()
        self._handles_lock = threading.Lock()
        # One writer at a time (apply, install, initialize_members); reads never take it.
        self._state_lock = threading.RLock()
        self.range_limits = range_limits or mvcc.RangeLimits()
        self._live = _LiveView(self._buffer)
        self._views = _ReadViews(self._live, read_cluster_version(self._live))
        self._drop_legacy_records()
        self._install_failed: BaseException | None = None
        self.applied_index = 0
        self.applied_term = 0
        self._load_applied()
        # Every member record, by id; replaced as a whole (never mutated), so readers
        # on any thread iterate it without a lock. Invariant: equals the records in the
        # state the live view shows (an install swaps it after switching views back).
        self._members: dict[int, MemberRecord] = self._read_members(self._live)
        self.members_version = 0  # +1 whenever a member record changes (for the node)
        # The auth records (auth_store.py), replaced as a whole after an apply or an
        # install that changed them. Invariant: equals the records the live view shows.
        self._auth: AuthState = load_auth_state(self._live)

    def _load_applied(self) -> None:
        self.applied_index, self.applied_term = self._read_applied()

    def _read_applied(self) -> tuple[int, int]:
        raw = self._buffer.get(keys.APPLIED)
        return keys.unpack_index_term(raw) if raw is not None else (0, 0)

    @staticmethod
    def _read_members(view: _View) -> dict[int, MemberRecord]:
        with view.iterator(start=keys.MEMBER_PREFIX,
                           stop=prefix_stop(keys.MEMBER_PREFIX)) as it:
            records = (MemberRecord.from_proto(cpb.MemberInfo.FromString(v)) for _, v in it)
            return {m.id: m for m in records}

    # --- applying -----------------------------------------------------------------------
    def apply(self, entries: list[eraftpb.Entry],
              on_conf_change: OnConfChange | None = None) -> list[ApplyResult]:
        """Apply committed entries in order; one result per entry actually applied.

        `on_conf_change(entry)` is called for each conf-change entry, in log order,
        after the earlier entries of the call; the node applies the change to Raft
        there (`RawNode.apply_conf_change`) and returns the new ConfState, which is
        then buffered with the applied index (made durable together). It runs while
        the writer lock is held: it must not wait for another apply or install. Reads
        do not take that lock, so waiting for a reader is safe.
        """
        results: list[ApplyResult] = []
        with self._state_lock:
            self._check_usable()
            pending = _PendingWrites(self._buffer)
            versioned = VersionedApply(self._live, pending.writes,
                                       range_limits=self.range_limits)
            members: dict[int, MemberRecord | None] = {}
            last_index, last_term = self.applied_index, self.applied_term
            for entry in entries:
                if entry.index <= self.applied_index:
                    continue  # applied before a restart; the log re-delivered it
                assert entry.index == last_index + 1, (
                    f"apply out of order: entry {entry.index} after {last_index}")
                if entry.entry_type == eraftpb.EntryNormal:
                    result = self._apply_normal(entry, pending, versioned, members)
                else:
                    result = self._apply_conf_change(entry, pending.writes, members,
                                                     on_conf_change)
                results.append(result)
                last_index, last_term = entry.index, entry.term
            if last_index == self.applied_index:
                return results
            versioned.finish()
            pending.writes[keys.APPLIED] = keys.pack_index_term(last_index, last_term)
            # Effects and applied index enter the buffer together and leave it together
            # in one synced batch: durable all or nothing (see apply_buffer.py).
            self._buffer.add(pending.writes)
            if members:
                updated = dict(self._members)
                for member_id, record in members.items():
                    if record is None:
                        updated.pop(member_id, None)
                    else:
                        updated[member_id] = record
                self._members = updated
                self.members_version += 1
            # The state is visible before the index says so: a reader that checks the
            # index first never sees less than it promises.
            if versioned.auth.changed:
                self._auth = load_auth_state(self._live)
            self.applied_index, self.applied_term = last_index, last_term
            if versioned.migrated:
                # New reads see the MVCC layout; then, once the reads that still use
                # the K records have ended, those go.
                self._views.switch(self._live, versioned.version)
                self._drop_legacy_records()
            elif versioned.compacted:
                # A read that checked the old compact revision may still be reading
                # history the new one frees (reads of several steps are not one point
                # in time): wait for the reads in flight before any of it is removed
                # (by the next applies). New reads check the new compact revision.
                self._views.switch(self._live, versioned.version)
            if self._buffer.over_bound():
                self._buffer.flush()
        return results

    def _apply_normal(self, entry: eraftpb.Entry, pending: _PendingWrites,
                      versioned: VersionedApply,
                      members: dict[int, MemberRecord | None]) -> ApplyResult:
        if not entry.data:
            return ApplyResult(entry.index, entry.term, 0, NOOP)
        try:
            command = decode_command(entry.data)
        except CommandDecodeError as e:
            return ApplyResult(entry.index, entry.term, 0, INVALID, ok=False, error=str(e))
        result = ApplyResult(entry.index, entry.term, command.request_id, PUT)
        op = command.WhichOneof("op")
        if op == "member_update" or op == "cluster_version" or op in ETCD_OPS or \
                versioned.mvcc:
            return self._apply_versioned(command, op, result, pending, versioned, members,
                                         entry.context)
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

    def _apply_versioned(self, command: cpb.Command, op: str, result: ApplyResult,
                         pending: _PendingWrites, versioned: VersionedApply,
                         members: dict[int, MemberRecord | None],
                         context: bytes = b"") -> ApplyResult:
        """A command that is the same at every cluster version (member_update), raises
        it, or applies to the MVCC store (mvcc_apply.py); `context`: the entry's (a
        client's auth context, re-checked there)."""
        if op == "member_update":
            result.kind = MEMBER_UPDATE
            result.error = self._apply_member_update(command.member_update, pending.writes,
                                                     members)
            result.ok = not result.error
            return result
        if op == "cluster_version":
            result.kind = CLUSTER_VERSION
            outcome = versioned.raise_version(command.cluster_version.version)
        else:
            result.kind = _KIND_OF_OP.get(op, op)
            outcome = versioned.apply(command, op, context)
        result.response, result.events = outcome.response, outcome.events
        if outcome.error is not None:
            result.ok, result.mvcc_error, result.error = False, outcome.error, str(outcome.error)
        elif op == "delete":
            assert isinstance(outcome.response, mvcc.DeleteRangeResponse)
            result.deleted = outcome.response.deleted > 0
        elif op == "cas":
            expected = command.cas.expected if command.cas.HasField("expected") else None
            result.ok, result.found, result.current = cas_outcome(expected,
                                                                  outcome.response)
        elif op == "batch":
            assert isinstance(outcome.response, list)
            result.deleted_list = [r.deleted > 0 for r in outcome.response
                                   if isinstance(r, mvcc.DeleteRangeResponse)]
        result.revision = versioned.batch().revision if versioned.mvcc else 0
        return result

    def _drop_legacy_records(self) -> None:
        """At cluster version >= 2 no K record is read any more: delete the ones a
        migration left (and a crash or a snapshot of that moment may have kept)."""
        if self._views.cluster_version < CLUSTER_VERSION_MVCC:
            return
        with self._live.iterator(start=keys.KV_PREFIX, stop=keys.KV_END) as it:
            doomed: dict[bytes, bytes | None] = {k: None for k, _ in it}
        if doomed:
            self._buffer.add(doomed)

    def _apply_member_update(self, update: cpb.MemberUpdate,
                             writes: dict[bytes, bytes | None],
                             members: dict[int, MemberRecord | None]) -> str:
        """Record a member's published addresses and incarnation; "" or why not.

        Its role is the conf changes' alone: `learner` is kept as recorded whatever the
        publisher believed it was (issue 11, item 5). The incarnation is recorded only
        while none is known: once known it changes only by removing the member (which
        forgets it) and adding it again (issue 11, item 7)."""
        known = members[update.id] if update.id in members else self._member(update.id)
        if known is None:
            return f"member {update.id} is not a member"  # removed (or never added)
        incarnation = known.incarnation
        if update.incarnation:
            if incarnation and incarnation != update.incarnation:
                return (f"member {update.id} published incarnation {update.incarnation:016x}"
                        f", the cluster knows {incarnation:016x}")
            incarnation = update.incarnation
        record = replace(known, peer_address=update.peer_address or known.peer_address,
                         client_address=update.client_address or known.client_address,
                         incarnation=incarnation)
        members[update.id] = record
        writes[keys.member_key(update.id)] = record.to_proto().SerializeToString()
        return ""

    def _apply_conf_change(self, entry: eraftpb.Entry, writes: dict[bytes, bytes | None],
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
                writes[keys.member_key(node_id)] = None
                continue
            known = members[node_id] if node_id in members else self._member(node_id)
            record = infos.get(node_id) or known or MemberRecord(node_id)
            # A promotion or re-add by the operator does not know the member's
            # incarnation: keep the one the member published (removal forgets it).
            incarnation = record.incarnation or (known.incarnation if known else 0)
            record = replace(record, learner=change_type == eraftpb.AddLearnerNode,
                             incarnation=incarnation)
            members[node_id] = record
            writes[keys.member_key(node_id)] = record.to_proto().SerializeToString()
        if on_conf_change is not None:
            cs = on_conf_change(entry)
            result.conf_state = cs
            writes[keys.CONF_STATE] = cs.SerializeToString()
        return result

    # --- reads --------------------------------------------------------------------------
    @property
    def auth(self) -> AuthState:
        """The users, roles, permissions and auth flag as of the applied index (from
        memory: never waits, never reads LevelDB)."""
        return self._auth

    @property
    def cluster_version(self) -> int:
        """1: the layout before MVCC (etcd's requests are refused); 2: MVCC."""
        return self._views.cluster_version

    @property
    def revision(self) -> int:
        """The store's current MVCC revision (etcd's: 1 for an empty store; 0 at
        cluster version 1, which has none)."""
        slot = self._views.enter()
        try:
            if slot.cluster_version < CLUSTER_VERSION_MVCC:
                return 0
            return mvcc.current_revision(slot.view)
        finally:
            self._views.leave(slot)

    @property
    def compact_revision(self) -> int:
        slot = self._views.enter()
        try:
            return mvcc.compact_revision(slot.view)
        finally:
            self._views.leave(slot)

    def get(self, key: bytes) -> bytes | None:
        slot = self._views.enter()
        try:
            if slot.cluster_version < CLUSTER_VERSION_MVCC:
                return slot.view.get(keys.kv_key(key))
            raw = slot.view.get(mvcc_layout.latest_key(key))
            if raw is None or not mvcc_layout.record_live(raw):
                return None
            return mvcc_layout.decode_record(raw).value
        finally:
            self._views.leave(slot)

    def range(self, req: mvcc.RangeRequest) -> mvcc.RangeResponse:
        """etcd's Range on the current state (raises the store's MVCCErrors)."""
        slot = self._views.enter()
        try:
            if slot.cluster_version < CLUSTER_VERSION_MVCC:
                raise mvcc.ClusterVersionError()
            return mvcc.range_at(slot.view, req, current=mvcc.current_revision(slot.view),
                                 compacted=mvcc.compact_revision(slot.view),
                                 limits=self.range_limits)
        finally:
            self._views.leave(slot)

    def events(self, key: bytes, range_end: bytes, start_revision: int, *,
               prev_kv: bool = False, limit: int = 1000) -> list[mvcc.Event]:
        """The changes to [key, range_end) at revisions >= start_revision, in order, up
        to the current revision: at most about `limit` (whole revisions, so a reader
        resumes at the revision after the last event's). CompactedError when
        start_revision is below the compact revision."""
        slot = self._views.enter()
        try:
            if slot.cluster_version < CLUSTER_VERSION_MVCC:
                return []
            out: list[mvcc.Event] = []
            with closing(mvcc.iter_events(slot.view, key, range_end, start_revision,
                                          prev_kv=prev_kv)) as events:
                for event in events:
                    if len(out) >= limit and event.kv.mod_revision != out[-1].kv.mod_revision:
                        break
                    out.append(event)
            return out
        finally:
            self._views.leave(slot)

    def leases(self) -> list[LeaseRecord]:
        """Every granted lease, by id."""
        slot = self._views.enter()
        try:
            return lease_records(slot.view)
        finally:
            self._views.leave(slot)

    def alarms(self) -> list[Alarm]:
        """The raised alarms (replicated: the same on every member at an index)."""
        slot = self._views.enter()
        try:
            return alarms(slot.view)
        finally:
            self._views.leave(slot)

    def lease(self, lease_id: int) -> LeaseRecord | None:
        slot = self._views.enter()
        try:
            return lease_record(slot.view, lease_id)
        finally:
            self._views.leave(slot)

    def keys_with_lease(self, lease_id: int, limit: int = 10_000) -> list[bytes]:
        slot = self._views.enter()
        try:
            return mvcc.keys_with_lease(slot.view, lease_id, limit=limit)
        finally:
            self._views.leave(slot)

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
        slot = self._views.enter()
        try:
            if slot.cluster_version >= CLUSTER_VERSION_MVCC:
                return self._scan_mvcc(slot.view, start, end, cap)
            with slot.view.iterator(start=keys.kv_key(start), stop=stop) as it:
                for key, value in it:
                    if len(out) >= cap or (out and size + len(key) + len(value) - 1 >
                                           self.scan_page_bytes_max):
                        more = True
                        break
                    out.append((key[1:], value))
                    size += len(key) - 1 + len(value)
        finally:
            self._views.leave(slot)
        return out, more

    def _scan_mvcc(self, view: _View, start: bytes, end: bytes, cap: int
                   ) -> tuple[list[tuple[bytes, bytes]], bool]:
        """`scan` over the latest records (tombstones skipped)."""
        strip = len(mvcc_layout.LATEST_PREFIX)
        stop = mvcc_layout.latest_key(end) if end else mvcc_layout.LATEST_END
        out: list[tuple[bytes, bytes]] = []
        size = 0
        with view.iterator(start=mvcc_layout.latest_key(start), stop=stop) as it:
            for lkey, raw in it:
                if not mvcc_layout.record_live(raw):
                    continue
                key, value = lkey[strip:], mvcc_layout.decode_record(raw).value
                if len(out) >= cap or (out and size + len(key) + len(value) >
                                       self.scan_page_bytes_max):
                    return out, True
                out.append((key, value))
                size += len(key) + len(value)
        return out, False

    def _member(self, member_id: int) -> MemberRecord | None:
        return self._members.get(member_id)

    def member(self, member_id: int) -> MemberRecord | None:
        """One member's record (from memory), None if it is not a member."""
        return self._members.get(member_id)

    def members(self) -> list[MemberRecord]:
        """Every known member, by id (from memory: never waits, never reads LevelDB)."""
        return sorted(self._members.values(), key=lambda m: m.id)

    def initialize_members(self, members: list[MemberRecord]) -> None:
        """Record the founding members of a fresh cluster (synced). Later changes
        arrive through conf-change entries."""
        with self._state_lock:
            batch = self._db.write_batch(sync=True)
            # With the buffered writes first, so these records win over any of theirs.
            with self._buffer.merged_into(batch, wait=True):
                for m in members:
                    batch.put(keys.member_key(m.id), m.to_proto().SerializeToString())
                batch.write()
            updated = dict(self._members)
            updated.update((m.id, m) for m in members)
            self._members = updated
            self.members_version += 1

    def conf_state(self) -> eraftpb.ConfState:
        slot = self._views.enter()
        try:
            raw = slot.view.get(keys.CONF_STATE)
        finally:
            self._views.leave(slot)
        return eraftpb.ConfState() if raw is None else eraftpb.ConfState.FromString(raw)

    def state_hash(self) -> StateHash:
        """The hash of the whole replicated state as of now (state_hash.py, etcd's
        Hash), from one point-in-time view. Reads every record: call it off the event
        loop. Not during a snapshot install (SnapshotTemporarilyUnavailableError)."""
        view = self._frozen_live_view()
        try:
            return hash_view(view)
        finally:
            view.close()

    def hash_kv(self, revision: int) -> tuple[int, int, int]:
        """(hash, compact revision, revision hashed) of the history at `revision` (0:
        the current one; state_hash.py, etcd's HashKV), from one point-in-time view.
        Raises FutureRevisionError or CompactedError; off the event loop; not during a
        snapshot install (SnapshotTemporarilyUnavailableError)."""
        view = self._frozen_live_view()
        try:
            return hash_history(view, revision)
        finally:
            view.close()

    def _frozen_live_view(self) -> FrozenView:
        slot = self._views.enter()
        try:
            if slot.view is not self._live:
                raise SnapshotTemporarilyUnavailableError()
            return self._buffer.freeze()
        finally:
            self._views.leave(slot)

    # --- snapshots ----------------------------------------------------------------------
    def create_snapshot(self) -> SnapshotHandle:
        """A consistent image at the current applied index; close() it when done.
        Not during a snapshot install (SnapshotTemporarilyUnavailableError)."""
        return SnapshotHandle(self._frozen_live_view())

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
        then already in place). Reads do not wait: until it is complete they are
        served from a frozen view of the state before it. If it raises, reads keep that
        view and apply/install refuse (reopening the store, `open_store`, finishes the
        install).
        """
        with self._state_lock:
            self._check_usable()
            before = self._buffer.freeze()
            version_before = self._views.cluster_version
            # Waits only for reads already on the live view.
            self._views.switch(before, version_before)
            try:
                # Buffered applies are older than the snapshot, which replaces them all.
                self._buffer.discard()
                install_staged(self._datadir, staged, log_store)
                applied = self._read_applied()
                members = self._read_members(self._live)
            except BaseException as e:
                self._install_failed = e
                raise
            assert applied == (staged.metadata.index, staged.metadata.term)
            # Waits for reads already on the old view.
            self._views.switch(self._live, read_cluster_version(self._live))
            self._drop_legacy_records()
            before.close()
            self._members = members
            self.members_version += 1
            self._auth = load_auth_state(self._live)
            self.applied_index, self.applied_term = applied

    def _check_usable(self) -> None:
        if self._install_failed is not None:
            raise RuntimeError(f"a snapshot install failed ({self._install_failed}); "
                               "reopen the store to finish it")

    def close(self) -> None:
        """Release the open snapshot images (the DataDir flushes the buffered applies
        and closes the database)."""
        with self._handles_lock:
            for handle in self._handles.values():
                handle.close()
            self._handles.clear()
