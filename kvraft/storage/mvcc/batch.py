"""`MVCCBatch`: the MVCC writes of one apply, over the state the apply starts from.

etcd's model (mvcc/kvstore_txn.go, etcdserver/apply.go): every write entry — a Put, a
DeleteRange, a Txn, a lease's revoke — is one write transaction; if it changes
anything, the store's revision (main) goes up by one, and its changes get
sub-revisions 0, 1, 2 ... in order. An entry that changes nothing (a delete of
nothing, a txn whose branch only reads) leaves the revision alone. Compact changes no
revision either.

Each entry is all or nothing: its writes go to the WriteSet's open entry and are
committed only when it succeeds; a refusal (MVCCError) leaves no trace, and the batch
stays usable for the next entry. The state machine makes one MVCCBatch per apply call,
over its read view with its pending-writes dict as `writes`, and buffers the dict as
usual (state_machine.py); MVCCStore makes one per request and writes it in one synced
batch.

Per key and write: one point read (the key's latest record) and three or four writes
(the new latest, the old one moved to history, the revision index, the lease index).

Threading: one batch at a time per store (the applying thread), as for any apply.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from contextlib import closing
from dataclasses import dataclass, field

from kvraft.storage.mvcc import compaction, layout
from kvraft.storage.mvcc.checks import check_delete, check_put, check_txn
from kvraft.storage.mvcc.errors import (
    CompactedError,
    FutureRevisionError,
    KeyNotFoundError,
    LeaseNotFoundError,
)
from kvraft.storage.mvcc.keyrange import KeyRange
from kvraft.storage.mvcc.layout import Record, decode_record
from kvraft.storage.mvcc.messages import (
    CompactResponse,
    Compare,
    CompareResult,
    CompareTarget,
    DeleteRangeRequest,
    DeleteRangeResponse,
    Event,
    EventType,
    KeyValue,
    PutRequest,
    PutResponse,
    RangeRequest,
    RangeResponse,
    RequestOp,
    ResponseOp,
    TxnRequest,
    TxnResponse,
)
from kvraft.storage.mvcc.reads import (
    DEFAULT_RANGE_LIMITS,
    RangeLimits,
    compact_revision,
    current_revision,
    iter_keys_with_lease,
    iter_live,
    range_at,
    to_kv,
)
from kvraft.storage.mvcc.view import Reader, WriteSet

LeaseExists = Callable[[int], bool]


@dataclass(slots=True)
class _Entry:
    """The write entry being applied. Invariant: `sub` = changes made so far; they are
    all at revision `main` = the batch's revision + 1."""

    main: int
    sub: int = 0
    events: list[Event] | None = None  # its changes, when the batch collects them

    def revision(self, before: int) -> int:
        """The revision the entry's reads see: `main` once it changed something."""
        return self.main if self.sub else before


@dataclass(slots=True)
class _Path:
    """Which branch each txn of a request takes: etcd evaluates every compare, nested
    ones too, against the state before the txn (compareToPath)."""

    succeeded: bool
    nested: list[_Path] = field(default_factory=list)  # the branch's txns, in order


class MVCCBatch:
    def __init__(self, base: Reader, writes: MutableMapping[bytes, bytes | None] | None
                 = None, *, range_limits: RangeLimits = DEFAULT_RANGE_LIMITS,
                 lease_exists: LeaseExists | None = None, collect_events: bool = False
                 ) -> None:
        """`base`: the state before the batch (see view.py for what it may be);
        `writes`: the dict the batch's writes go to (a new one if None); `lease_exists`:
        when given, a put with a lease it does not know is refused (LeaseNotFoundError)
        — the lessor's job, which comes with leases. `collect_events`: keep the
        events of committed entries for `take_events` (the watch hub's feed)."""
        self._ws = WriteSet(base, writes)
        self._collect_events = collect_events
        self._events: list[Event] = []
        self._range_limits = range_limits
        self._lease_exists = lease_exists
        # Invariant: the store's revision and compact revision after the committed
        # entries of this batch (as `writes` records them).
        self.revision = current_revision(self._ws)
        self.compact_revision = compact_revision(self._ws)

    @property
    def writes(self) -> MutableMapping[bytes, bytes | None]:
        """Every committed entry's writes: LevelDB key -> value (None: delete)."""
        return self._ws.writes

    @contextlib.contextmanager
    def _entry(self) -> Iterator[_Entry]:
        entry = _Entry(self.revision + 1, events=[] if self._collect_events else None)
        try:
            yield entry
        except BaseException:
            self._ws.abort_entry()
            raise
        if entry.sub:
            self.revision = entry.main
            self._ws.put(layout.META_REVISION, layout.pack_int(entry.main))
        self._ws.commit_entry()
        if entry.events:
            self._events.extend(entry.events)

    def take_events(self) -> list[Event]:
        """The events of the entries committed since the last call, in revision order
        (only with collect_events)."""
        events, self._events = self._events, []
        return events

    # --- write entries --------------------------------------------------------------------
    def put(self, req: PutRequest) -> PutResponse:
        check_put(req)
        with self._entry() as entry:
            self._check_put_state(req, lease_first=True)
            return self._put(entry, req)

    def delete_range(self, req: DeleteRangeRequest) -> DeleteRangeResponse:
        check_delete(req)
        with self._entry() as entry:
            return self._delete_range(entry, req)

    def txn(self, req: TxnRequest) -> TxnResponse:
        """etcd's Txn: the compares (of nested txns too) read the state before it; then
        every put's and range's preconditions are checked along the branches taken
        (KeyNotFoundError, LeaseNotFoundError, CompactedError, FutureRevisionError),
        before anything is written; then the ops run in order, each seeing the ones
        before it, all at one revision."""
        check_txn(req)
        with self._entry() as entry:
            path = self._compare_path(req)
            self._check_path_puts(req, path)
            self._check_path_ranges(req, path)
            return self._run_txn(entry, req, path)

    def compact(self, revision: int) -> CompactResponse:
        """Make `revision` the compact revision: reads below it fail from now on; the
        history it frees is removed by `compact_step`. etcd's refusals: at or below the
        compact revision, CompactedError; above the current one, FutureRevisionError."""
        if revision <= self.compact_revision:
            raise CompactedError(self.compact_revision)
        if revision > self.revision:
            raise FutureRevisionError()
        with self._entry():
            self._ws.put(layout.META_COMPACT, layout.pack_int(revision))
        self.compact_revision = revision
        return CompactResponse(self.revision)

    def delete_keys_with_lease(self, lease_id: int) -> DeleteRangeResponse:
        """Delete every key attached to `lease_id`, in key order, as one entry (one
        revision): a lease's revoke or expiry. Its writes grow with the keys."""
        with self._entry() as entry:
            deleted = 0
            with closing(iter_keys_with_lease(self._ws, lease_id)) as keys:
                for key in keys:
                    raw = self._ws.get(layout.latest_key(key))
                    assert raw is not None and layout.record_live(raw)
                    rec = decode_record(raw)
                    assert rec.lease == lease_id, (key, rec.lease, lease_id)
                    self._delete_key(entry, key, rec, raw)
                    deleted += 1
            return DeleteRangeResponse(entry.revision(self.revision), deleted)

    def write_ops(self, ops: Sequence[PutRequest | DeleteRangeRequest]
                  ) -> list[PutResponse | DeleteRangeResponse]:
        """kvraft's own batch command: its puts and deletes in order, as ONE entry (one
        revision, a sub-revision per change), each seeing the ones before it. Unlike a
        Txn it may write a key more than once (the later write wins; the key's version
        counts each, as etcd's mvcc layer does). All or nothing, like any entry."""
        for op in ops:
            if isinstance(op, PutRequest):
                check_put(op)
            else:
                check_delete(op)
        with self._entry() as entry:
            out: list[PutResponse | DeleteRangeResponse] = []
            for op in ops:
                if isinstance(op, PutRequest):
                    self._check_put_state(op, lease_first=True)
                    out.append(self._put(entry, op))
                else:
                    out.append(self._delete_range(entry, op))
            return out

    # --- compaction -------------------------------------------------------------------------
    @property
    def compaction_pending(self) -> bool:
        return compaction.pending(self._ws)

    def compact_step(self, entries_max: int) -> bool:
        """Remove at most `entries_max` revisions' worth of history that the compact
        revision freed (its own bounded entry, no revision); True while more is left.
        Reads at or above the compact revision see no difference at any point."""
        with self._entry():
            return compaction.step(self._ws, entries_max)

    # --- reads of the batch's state -----------------------------------------------------------
    def range(self, req: RangeRequest) -> RangeResponse:
        """A Range over the state after the committed entries."""
        return range_at(self._ws, req, current=self.revision,
                        compacted=self.compact_revision, limits=self._range_limits)

    # --- puts and deletes -----------------------------------------------------------------
    def _latest(self, key: bytes) -> tuple[Record | None, bytes | None]:
        raw = self._ws.get(layout.latest_key(key))
        return (None, None) if raw is None else (decode_record(raw), raw)

    def _check_put_state(self, req: PutRequest, *, lease_first: bool = False) -> None:
        """A put's preconditions on the state, in etcd's order: a plain Put looks its
        lease up first, a txn's put (checkRequestPut) its previous key first."""
        lease_unknown = (req.lease != 0 and self._lease_exists is not None
                         and not self._lease_exists(req.lease))
        if lease_first and lease_unknown:
            raise LeaseNotFoundError()
        if req.ignore_value or req.ignore_lease:
            rec, _ = self._latest(req.key)
            if rec is None or not rec.live:
                raise KeyNotFoundError()
        if lease_unknown:
            raise LeaseNotFoundError()

    def _put(self, entry: _Entry, req: PutRequest) -> PutResponse:
        old, old_raw = self._latest(req.key)
        live = old if old is not None and old.live else None
        value, lease = req.value, req.lease
        if req.ignore_value or req.ignore_lease:
            if live is None:
                raise KeyNotFoundError()
            if req.ignore_value:
                value = live.value
            if req.ignore_lease:
                lease = live.lease
        self._put_key(entry, req.key, value, lease, old, old_raw)
        prev = to_kv(req.key, live) if req.prev_kv and live is not None else None
        return PutResponse(entry.main, prev)

    def _put_key(self, entry: _Entry, key: bytes, value: bytes, lease: int,
                 old: Record | None, old_raw: bytes | None) -> None:
        ws = self._ws
        prev_main = prev_sub = 0
        create, version = entry.main, 1
        if old is not None:
            assert old_raw is not None
            assert (old.mod_main, old.mod_sub) < (entry.main, entry.sub)
            ws.put(layout.history_key(key, old.mod_main, old.mod_sub), old_raw)
            prev_main, prev_sub = old.mod_main, old.mod_sub
            if old.live:  # the same generation: etcd's create revision and version
                create, version = old.create_revision, old.version + 1
                if old.lease:
                    ws.delete(layout.lease_key(old.lease, key))
        ws.put(layout.latest_key(key), Record(entry.main, entry.sub, create, version, lease,
                                              prev_main, prev_sub, value).encode())
        ws.put(layout.event_key(entry.main, entry.sub),
               layout.event_value(layout.EVENT_PUT, key))
        if lease:
            ws.put(layout.lease_key(lease, key), b"")
        if entry.events is not None:
            entry.events.append(Event(
                EventType.PUT,
                KeyValue(key, create, entry.main, version, value, lease),
                to_kv(key, old) if old is not None and old.live else None))
        entry.sub += 1

    def _delete_key(self, entry: _Entry, key: bytes, old: Record, old_raw: bytes) -> None:
        assert old.live and (old.mod_main, old.mod_sub) < (entry.main, entry.sub)
        ws = self._ws
        ws.put(layout.history_key(key, old.mod_main, old.mod_sub), old_raw)
        ws.put(layout.latest_key(key), layout.tombstone(entry.main, entry.sub, old).encode())
        ws.put(layout.event_key(entry.main, entry.sub),
               layout.event_value(layout.EVENT_DELETE, key))
        if old.lease:
            ws.delete(layout.lease_key(old.lease, key))
        if entry.events is not None:
            entry.events.append(Event(EventType.DELETE, KeyValue(key, mod_revision=entry.main),
                                      to_kv(key, old)))
        entry.sub += 1

    def _delete_range(self, entry: _Entry, req: DeleteRangeRequest) -> DeleteRangeResponse:
        keys = KeyRange.of(req.key, req.range_end)
        # Collected first: the deletions write into the range being read. The list
        # grows with the keys deleted, as the entry's writes do.
        with closing(iter_live(self._ws, keys, entry.main)) as live:
            doomed = list(live)
        prev_kvs: list[KeyValue] = []
        for key, raw in doomed:
            rec = decode_record(raw)
            if req.prev_kv:
                prev_kvs.append(to_kv(key, rec))
            self._delete_key(entry, key, rec, raw)
        return DeleteRangeResponse(entry.revision(self.revision), len(doomed), prev_kvs)

    # --- txn ----------------------------------------------------------------------------------
    def _compare_path(self, req: TxnRequest) -> _Path:
        path = _Path(all(self._compare(c) for c in req.compare))
        for op in req.success if path.succeeded else req.failure:
            if isinstance(op, TxnRequest):
                path.nested.append(self._compare_path(op))
        return path

    def _compare(self, c: Compare) -> bool:
        """etcd's applyCompare: true iff every key in the range satisfies it; a range
        with no key compares as one all-zero key, except that a VALUE compare fails."""
        found = False
        with closing(iter_live(self._ws, KeyRange.of(c.key, c.range_end),
                               self.revision)) as live:
            for key, raw in live:
                found = True
                if not compare_kv(c, to_kv(key, decode_record(raw))):
                    return False
        if not found:
            return c.target != CompareTarget.VALUE and compare_kv(c, KeyValue(c.key))
        return True

    def _branch(self, req: TxnRequest, path: _Path) -> Iterator[tuple[RequestOp, _Path | None]]:
        nested = iter(path.nested)
        for op in req.success if path.succeeded else req.failure:
            yield op, next(nested) if isinstance(op, TxnRequest) else None

    def _check_path_puts(self, req: TxnRequest, path: _Path) -> None:
        for op, sub in self._branch(req, path):
            if isinstance(op, PutRequest):
                self._check_put_state(op)
            elif isinstance(op, TxnRequest):
                assert sub is not None
                self._check_path_puts(op, sub)

    def _check_path_ranges(self, req: TxnRequest, path: _Path) -> None:
        for op, sub in self._branch(req, path):
            if isinstance(op, RangeRequest) and op.revision > 0:
                if op.revision > self.revision:
                    raise FutureRevisionError()
                if op.revision < self.compact_revision:
                    raise CompactedError(self.compact_revision)
            elif isinstance(op, TxnRequest):
                assert sub is not None
                self._check_path_ranges(op, sub)

    def _run_txn(self, entry: _Entry, req: TxnRequest, path: _Path) -> TxnResponse:
        responses: list[ResponseOp] = []
        for op, sub in self._branch(req, path):
            if isinstance(op, RangeRequest):
                # truncate, not refuse: RangeLimits is one member's configuration
                responses.append(range_at(self._ws, op, current=entry.revision(self.revision),
                                          compacted=self.compact_revision,
                                          limits=self._range_limits, truncate=True))
            elif isinstance(op, PutRequest):
                responses.append(self._put(entry, op))
            elif isinstance(op, DeleteRangeRequest):
                responses.append(self._delete_range(entry, op))
            else:
                assert isinstance(op, TxnRequest) and sub is not None
                responses.append(self._run_txn(entry, op, sub))
        return TxnResponse(entry.revision(self.revision), path.succeeded, responses)


def compare_kv(c: Compare, kv: KeyValue) -> bool:
    """etcd's compareKV: `kv`'s target field against the compare's operand."""
    target = c.target
    if target == CompareTarget.VALUE:
        order = (kv.value > c.value) - (kv.value < c.value)
    else:
        if target == CompareTarget.CREATE:
            ours, theirs = kv.create_revision, c.create_revision
        elif target == CompareTarget.MOD:
            ours, theirs = kv.mod_revision, c.mod_revision
        elif target == CompareTarget.VERSION:
            ours, theirs = kv.version, c.version
        elif target == CompareTarget.LEASE:
            ours, theirs = kv.lease, c.lease
        else:
            ours = theirs = 0  # a target etcd does not know compares equal (etcd's)
        order = (ours > theirs) - (ours < theirs)
    result = c.result
    if result == CompareResult.EQUAL:
        return order == 0
    if result == CompareResult.NOT_EQUAL:
        return order != 0
    if result == CompareResult.GREATER:
        return order > 0
    if result == CompareResult.LESS:
        return order < 0
    return True  # etcd: a result it does not know is true
