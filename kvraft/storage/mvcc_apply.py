"""How the commands of one apply call change the replicated state, by cluster version.

The cluster version (mvcc/layout.py `Vc`, replicated: it changes only by applying a
ClusterVersion command, so every member changes it at the same entry) says which rules
every member applies with:

* 1 — the layout before MVCC: kvraft's put/delete/cas/batch write the unversioned `K`
  records; etcd's requests are refused (ClusterVersionError) — no member proposes them
  at this version, and a member of an older kvraft could not apply them.
* 2 — the MVCC store (storage/mvcc): kvraft's commands become etcd's Put, DeleteRange,
  Txn (a cas: compare the value, or version 0 for "absent") and one multi-op entry (a
  batch), each with a revision; etcd's requests and leases apply as etcd applies them.

Raising the version from 1 to 2 migrates the data at that entry, the same on every
member: every `K` key becomes an MVCC key written at ONE revision (2, the first after
an empty store's), sub-revisions in key order, version 1, no lease. The `K` records are
deleted only after no read can still be using them (state_machine.py: the readers'
view switch), so a read never sees the key-value data missing.

Alarms (etcd's AlarmType: NOSPACE, CORRUPT) are replicated records (`Va`), raised and
disarmed by `alarm` commands. While any member's NOSPACE alarm is raised, every member
refuses, at apply time, the writes that add data — a Put, a Txn with a put in either
branch, a lease grant, kvraft's put, cas and batches with a put — with etcd's NoSpaceError;
deletes, compaction and revokes still apply (they are how space is freed). While any
member's CORRUPT alarm is raised (etcd's corrupt applier), every member refuses every
write of the key-value data and the leases — puts, deletes, txns (a read-only txn never
reaches the log), compactions, lease grants and revokes, kvraft's put, delete, cas and
batch — with etcd's CorruptError: the cluster is read-only until an operator replaced
the member and disarmed the alarm. Lease checkpoints, alarms and auth still apply, as
in etcd (so the alarm can be disarmed).

A member asked to apply a version above CLUSTER_VERSION_MAX stops: applying the
following entries by older rules would make it disagree with the members that know
the version (ClusterVersionTooNewError).

Threading: one VersionedApply per apply call, on the applying thread.
"""
from __future__ import annotations

from collections.abc import MutableMapping
from contextlib import closing
from dataclasses import dataclass

from kvraft.proto import command_pb2 as cpb
from kvraft.proto import etcdserverpb_pb2 as etcdpb
from kvraft.storage import auth_store, keys
from kvraft.storage.commands import AUTH_OPS, decode_auth_context
from kvraft.storage.mvcc import convert, layout
from kvraft.storage.mvcc.batch import MVCCBatch
from kvraft.storage.mvcc.errors import (
    ClusterVersionError,
    CorruptError,
    LeaseExistsError,
    LeaseNotFoundError,
    LeaseTTLTooLargeError,
    MVCCError,
    NoSpaceError,
)
from kvraft.storage.mvcc.messages import (
    Compare,
    CompareResult,
    CompareTarget,
    DeleteRangeRequest,
    Event,
    PutRequest,
    RangeRequest,
    RangeResponse,
    TxnRequest,
    TxnResponse,
)
from kvraft.storage.mvcc.reads import DEFAULT_RANGE_LIMITS, RangeLimits, iter_keys_with_lease
from kvraft.storage.mvcc.view import Reader, WriteSet

CLUSTER_VERSION_LEGACY = 1
CLUSTER_VERSION_MVCC = 2
CLUSTER_VERSION_MAX = CLUSTER_VERSION_MVCC   # the highest version this kvraft applies
LEASE_TTL_MAX = 9_000_000_000                # seconds (etcd's MaxLeaseTTL)
COMPACT_STEP_REVISIONS = 1_000               # history removed per apply call, at most


class ClusterVersionTooNewError(RuntimeError):
    """The log raises the cluster version above what this kvraft applies."""


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    """A granted lease as the state machine holds it. `remaining_ttl`: what its last
    checkpoint recorded (seconds; 0: never checkpointed). Its deadline is no member's
    state: the leader's lessor keeps it in memory (server/etcd/lessor.py)."""

    id: int
    ttl: int
    remaining_ttl: int = 0


@dataclass(frozen=True, slots=True)
class LeaseGrantResult:
    id: int
    ttl: int
    revision: int


@dataclass(frozen=True, slots=True)
class LeaseRevokeResult:
    revision: int
    deleted: int


NOSPACE = 1   # etcdserverpb.AlarmType
CORRUPT = 2
ALARM_GET, ALARM_ACTIVATE, ALARM_DEACTIVATE = 0, 1, 2   # AlarmRequest.AlarmAction
# The commands that add data, refused while a NOSPACE alarm is raised (a txn only if a
# branch puts: `_txn_puts`).
_ADDS_DATA = frozenset({"put", "cas", "etcd_put", "lease_grant"})
# The commands refused while a CORRUPT alarm is raised (etcd's applierV3Corrupt).
_REFUSED_WHEN_CORRUPT = frozenset({"put", "delete", "cas", "batch", "etcd_put",
                                   "etcd_delete_range", "etcd_txn", "etcd_compact",
                                   "lease_grant", "lease_revoke"})


@dataclass(frozen=True, slots=True)
class Alarm:
    member_id: int
    alarm: int   # NOSPACE, CORRUPT


@dataclass(frozen=True, slots=True)
class CommandOutcome:
    """What an applied command did, for its ApplyResult (state_machine.py)."""

    response: object | None = None       # the mvcc response dataclass, lease results
    error: MVCCError | None = None
    events: tuple[Event, ...] = ()


def read_cluster_version(view: Reader) -> int:
    raw = view.get(layout.CLUSTER_VERSION)
    return CLUSTER_VERSION_LEGACY if raw is None else layout.unpack_int(raw)


def lease_records(view: Reader) -> list[LeaseRecord]:
    out = []
    with closing(view.iterator(start=layout.GRANT_PREFIX, stop=layout.GRANT_END)) as it:
        while (item := next(it, None)) is not None:
            ttl, remaining = layout.unpack_grant(item[1])
            out.append(LeaseRecord(layout.grant_lease(item[0]), ttl, remaining))
    return out


def alarms(view: Reader) -> list[Alarm]:
    out = []
    with closing(view.iterator(start=layout.ALARM_PREFIX, stop=layout.ALARM_END)) as it:
        while (item := next(it, None)) is not None:
            out.append(Alarm(*layout.alarm_of(item[0])))
    return out


def lease_record(view: Reader, lease_id: int) -> LeaseRecord | None:
    raw = view.get(layout.grant_key(lease_id))
    if raw is None:
        return None
    ttl, remaining = layout.unpack_grant(raw)
    return LeaseRecord(lease_id, ttl, remaining)


class VersionedApply:
    """The MVCC side of one apply call over `base` (the state before the call) and
    `writes` (the call's pending writes, which it adds to). Invariant: `version` is
    the cluster version after the entries applied so far; `_batch`, once made, is
    the MVCC state after them (made anew after a migration)."""

    def __init__(self, base: Reader, writes: MutableMapping[bytes, bytes | None], *,
                 range_limits: RangeLimits = DEFAULT_RANGE_LIMITS) -> None:
        self._view = WriteSet(base, writes)   # reads see the call's earlier entries
        self._writes = writes
        self._range_limits = range_limits
        self.version = read_cluster_version(self._view)
        self.migrated = False                  # this call raised the version to 2
        # This call moved the compact revision: no history is removed in it (reads
        # that checked the old compact revision may still need it: state_machine.py
        # waits for them before a later call removes any).
        self.compacted = False
        self._batch: MVCCBatch | None = None
        # The raised alarms after the entries so far (read once per call, on the first
        # write that asks: every write checks for CORRUPT, a put for NOSPACE); None
        # until then.
        self._alarms: list[Alarm] | None = None
        self.auth = auth_store.AuthApply(self._view, writes)   # .changed: auth moved

    @property
    def mvcc(self) -> bool:
        return self.version >= CLUSTER_VERSION_MVCC

    def batch(self) -> MVCCBatch:
        if self._batch is None:
            self._batch = MVCCBatch(self._view, self._writes, range_limits=self._range_limits,
                                    lease_exists=self._lease_exists, collect_events=True)
        return self._batch

    def _lease_exists(self, lease_id: int) -> bool:
        return self._view.get(layout.grant_key(lease_id)) is not None

    # --- the cluster version --------------------------------------------------------------
    def raise_version(self, version: int) -> CommandOutcome:
        if version > CLUSTER_VERSION_MAX:
            raise ClusterVersionTooNewError(
                f"the cluster moved to version {version}; this kvraft applies versions "
                f"up to {CLUSTER_VERSION_MAX}: run a newer kvraft on this member")
        if version <= self.version:
            return CommandOutcome()   # already there (a leader proposed it twice)
        events: tuple[Event, ...] = ()
        if self.version < CLUSTER_VERSION_MVCC <= version:
            events = self._migrate()
        self._writes[layout.CLUSTER_VERSION] = layout.pack_int(version)
        self.version = version
        return CommandOutcome(events=events)

    def _migrate(self) -> tuple[Event, ...]:
        """Every K key into the MVCC store, at one revision (the K records themselves
        are the state machine's to delete, once no reader uses them)."""
        with closing(self._view.iterator(start=keys.KV_PREFIX, stop=keys.KV_END)) as it:
            puts = [PutRequest(k[1:], v) for k, v in iter(lambda: next(it, None), None)]
        self.migrated = True
        self._batch = None
        if not puts:
            return ()
        batch = self.batch()
        batch.write_ops(puts)
        return tuple(batch.take_events())

    # --- commands ---------------------------------------------------------------------------
    def apply(self, command: cpb.Command, op: str, context: bytes = b"") -> CommandOutcome:
        """Apply an etcd or lease command, or a kvraft command at version >= 2.
        `context`: the entry's (a client's auth context, command.proto AuthContext)."""
        if not self.mvcc:
            return CommandOutcome(error=ClusterVersionError())
        if context and self._auth_refuses(command, op, context):
            return CommandOutcome(error=auth_store.PermissionDeniedError())
        if op in _REFUSED_WHEN_CORRUPT and self._raised(CORRUPT):
            return CommandOutcome(error=CorruptError())
        if self._adds_data(command, op) and self._raised(NOSPACE):
            return CommandOutcome(error=NoSpaceError())
        batch = self.batch()
        try:
            response = self._run(command, op, batch)
        except MVCCError as e:
            return CommandOutcome(error=e)
        return CommandOutcome(response, None, tuple(batch.take_events()))

    def _run(self, command: cpb.Command, op: str, batch: MVCCBatch) -> object:
        if op == "put":
            return batch.put(PutRequest(command.put.key, command.put.value))
        if op == "delete":
            return batch.delete_range(DeleteRangeRequest(command.delete.key))
        if op == "cas":
            return batch.txn(_cas_txn(command.cas))
        if op == "batch":
            ops: list[PutRequest | DeleteRangeRequest] = []
            for batch_op in command.batch.ops:
                if batch_op.HasField("put"):
                    p = batch_op.put
                    ops.append(PutRequest(p.key, p.value))
                elif batch_op.HasField("delete"):
                    ops.append(DeleteRangeRequest(batch_op.delete.key))
            return batch.write_ops(ops)
        if op == "etcd_put":
            return batch.put(convert.put_request(command.etcd_put))
        if op == "etcd_delete_range":
            return batch.delete_range(convert.delete_range_request(command.etcd_delete_range))
        if op == "etcd_txn":
            return batch.txn(convert.txn_request(command.etcd_txn))
        if op == "etcd_compact":
            response = batch.compact(command.etcd_compact.revision)
            self.compacted = True
            return response
        if op == "lease_grant":
            return self._grant(command.lease_grant.ID, command.lease_grant.TTL, batch)
        if op == "lease_revoke":
            return self._revoke(command.lease_revoke.ID, batch)
        if op == "alarm":
            return self._alarm(command.alarm)
        if op in AUTH_OPS:
            return self.auth.apply(op, getattr(command, op))
        assert op == "lease_checkpoint", op
        for cp in command.lease_checkpoint.checkpoints:
            record = lease_record(self._view, cp.ID)
            if record is not None:
                self._writes[layout.grant_key(cp.ID)] = layout.pack_grant(
                    record.ttl, max(0, cp.remaining_TTL))
        return None

    def _auth_refuses(self, command: cpb.Command, op: str, context: bytes) -> bool:
        """The re-check at apply (auth_store.py): a request admitted under an older auth
        revision than the store's is checked again against the current rules. The
        same on every member: it reads only replicated state and the entry."""
        admitted = decode_auth_context(context)
        if admitted is None:
            return False
        state = self.auth.state
        if not state.enabled or admitted.auth_revision >= state.revision:
            return False
        needs = auth_store.command_needs(command, op, self._lease_keys)
        return needs is not None and not auth_store.allowed(state, admitted.user, needs)

    def _lease_keys(self, lease_id: int) -> list[bytes]:
        with closing(iter_keys_with_lease(self._view, lease_id)) as it:
            return list(it)

    def _grant(self, lease_id: int, ttl: int, batch: MVCCBatch) -> LeaseGrantResult:
        if ttl > LEASE_TTL_MAX:
            raise LeaseTTLTooLargeError()
        if lease_id <= 0:
            raise LeaseNotFoundError("etcdserver: lease ID must be positive")
        if self._lease_exists(lease_id):
            raise LeaseExistsError()
        self._writes[layout.grant_key(lease_id)] = layout.pack_grant(max(ttl, 0), 0)
        return LeaseGrantResult(lease_id, max(ttl, 0), batch.revision)

    def _revoke(self, lease_id: int, batch: MVCCBatch) -> LeaseRevokeResult:
        """The lease and its keys, in one entry (one revision for the deletions)."""
        if not self._lease_exists(lease_id):
            raise LeaseNotFoundError()
        deleted = batch.delete_keys_with_lease(lease_id)
        self._writes[layout.grant_key(lease_id)] = None
        return LeaseRevokeResult(deleted.revision, deleted.deleted)

    def _alarm(self, request: etcdpb.AlarmRequest) -> list[Alarm]:
        """Raise or disarm one member's alarm; the alarms raised afterwards."""
        action, member_id, alarm = request.action, request.memberID, request.alarm
        if alarm in (NOSPACE, CORRUPT):
            key = layout.alarm_key(member_id, alarm)
            if action == ALARM_ACTIVATE:
                self._writes[key] = b""
            elif action == ALARM_DEACTIVATE:
                self._writes[key] = None
        self._alarms = alarms(self._view)
        return self._alarms

    def _raised(self, alarm: int) -> bool:
        """Some member's `alarm` is raised, after the entries so far."""
        if self._alarms is None:
            self._alarms = alarms(self._view)
        return any(a.alarm == alarm for a in self._alarms)

    @staticmethod
    def _adds_data(command: cpb.Command, op: str) -> bool:
        if op in _ADDS_DATA:
            return True
        if op == "batch":
            return any(o.HasField("put") for o in command.batch.ops)
        if op == "etcd_txn":
            return _txn_puts(command.etcd_txn)
        return False

    def finish(self) -> None:
        """One bounded step of removing compacted history (logically invisible: reads
        below the compact revision fail already), so compaction never holds an apply
        for long."""
        if self.compacted:
            return
        if self.mvcc and self._batch is not None and self._batch.compaction_pending:
            self._batch.compact_step(COMPACT_STEP_REVISIONS)


def _txn_puts(txn: etcdpb.TxnRequest) -> bool:
    """A put anywhere in either branch, nested txns included (etcd's capped applier
    refuses such a txn whichever branch it would take)."""
    for branch in (txn.success, txn.failure):
        for op in branch:
            which = op.WhichOneof("request")
            if which == "request_put" or (which == "request_txn" and
                                          _txn_puts(op.request_txn)):
                return True
    return False


def _cas_txn(cas: cpb.CompareAndSwap) -> TxnRequest:
    """kvraft's CompareAndSwap as etcd's Txn: the value equals `expected`, or the key
    does not exist (version 0) when `expected` is absent; then put, else read."""
    if cas.HasField("expected"):
        compare = Compare(cas.key, CompareTarget.VALUE, CompareResult.EQUAL, value=cas.expected)
    else:
        compare = Compare(cas.key, CompareTarget.VERSION, CompareResult.EQUAL, version=0)
    return TxnRequest((compare,), (PutRequest(cas.key, cas.value),), (RangeRequest(cas.key),))


def cas_outcome(expected: bytes | None, response: object) -> tuple[bool, bool, bytes | None]:
    """(swapped, found, current before) of a cas applied as `_cas_txn`."""
    assert isinstance(response, TxnResponse)
    if response.succeeded:
        return True, expected is not None, expected
    read = response.responses[0]
    assert isinstance(read, RangeResponse)
    if not read.kvs:
        return False, False, None
    return False, True, read.kvs[0].value
