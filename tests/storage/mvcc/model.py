"""A small in-memory model of etcd v3's MVCC semantics, written from etcd's documented
behaviour and independently of kvraft.storage.mvcc (it shares only the request and
response dataclasses and the error classes): every revision's whole state is kept as a
dict, so a read at a revision is a dict lookup, and a txn's duplicate-key rule is
checked pair by pair over the tree of its ops.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

from kvraft.storage.mvcc import (
    CompactedError,
    CompactResponse,
    Compare,
    CompareResult,
    CompareTarget,
    DeleteRangeRequest,
    DeleteRangeResponse,
    DuplicateKeyError,
    EmptyKeyError,
    Event,
    EventType,
    FutureRevisionError,
    InvalidSortOptionError,
    KeyNotFoundError,
    KeyValue,
    LeaseProvidedError,
    PutRequest,
    PutResponse,
    RangeRequest,
    RangeResponse,
    RequestOp,
    ResponseOp,
    SortOrder,
    SortTarget,
    TxnRequest,
    TxnResponse,
    ValueProvidedError,
)

State = dict[bytes, KeyValue]


def in_range(key: bytes, start: bytes, end: bytes) -> bool:
    if end == b"":
        return key == start
    if end == b"\x00":
        return key >= start
    return start <= key < end


@dataclass
class _Change:
    main: int
    sub: int
    type: EventType
    key: bytes
    kv: KeyValue


class Model:
    def __init__(self) -> None:
        self.rev = 1
        self.compacted = 0
        self.states: dict[int, State] = {1: {}}
        self.changes: list[_Change] = []

    # --- reads ---------------------------------------------------------------------------
    def range(self, req: RangeRequest) -> RangeResponse:
        return self._range(req, self.rev, self.states[self.rev])

    def _range(self, req: RangeRequest, current: int, working: State) -> RangeResponse:
        check_range_req(req)
        if req.revision > current:
            raise FutureRevisionError()
        rev = current if req.revision <= 0 else req.revision
        if rev < self.compacted:
            raise CompactedError(self.compacted)
        state = working if rev == current else self.states[rev]
        kvs = [state[k] for k in sorted(state) if in_range(k, req.key, req.range_end)]
        count = len(kvs)
        if req.count_only:
            return RangeResponse(current, [], False, count)
        if req.max_mod_revision:
            kvs = [kv for kv in kvs if kv.mod_revision <= req.max_mod_revision]
        if req.min_mod_revision:
            kvs = [kv for kv in kvs if kv.mod_revision >= req.min_mod_revision]
        if req.max_create_revision:
            kvs = [kv for kv in kvs if kv.create_revision <= req.max_create_revision]
        if req.min_create_revision:
            kvs = [kv for kv in kvs if kv.create_revision >= req.min_create_revision]
        order = req.sort_order
        if order == SortOrder.NONE and req.sort_target != SortTarget.KEY:
            order = SortOrder.ASCEND
        if order != SortOrder.NONE:
            field = {SortTarget.KEY: "key", SortTarget.VERSION: "version",
                     SortTarget.CREATE: "create_revision", SortTarget.MOD: "mod_revision",
                     SortTarget.VALUE: "value"}[SortTarget(req.sort_target)]
            kvs.sort(key=lambda kv: (getattr(kv, field), kv.key),
                     reverse=order == SortOrder.DESCEND)
        more = False
        if req.limit > 0 and len(kvs) > req.limit:
            kvs, more = kvs[:req.limit], True
        if req.keys_only:
            kvs = [replace(kv, value=b"") for kv in kvs]
        return RangeResponse(current, kvs, more, count)

    def events(self, key: bytes, range_end: bytes, start: int, prev_kv: bool
               ) -> list[Event]:
        if start <= 0:
            start = self.rev + 1
        elif start < self.compacted:
            raise CompactedError(self.compacted)
        out = []
        for c in self.changes:
            if c.main < start or not in_range(c.key, key, range_end):
                continue
            prev = None
            if prev_kv and c.main - 1 >= self.compacted:
                prev = self.states[c.main - 1].get(c.key)
            out.append(Event(c.type, c.kv, prev))
        return out

    def keys_with_lease(self, lease: int) -> list[bytes]:
        state = self.states[self.rev]
        return sorted(k for k, kv in state.items() if kv.lease == lease)

    # --- writes --------------------------------------------------------------------------
    def _commit(self, working: State, changes: list[_Change]) -> None:
        if changes:
            self.rev += 1
            self.states[self.rev] = working
            self.changes.extend(changes)

    def put(self, req: PutRequest) -> PutResponse:
        check_put_req(req)
        pre = self.states[self.rev]
        if (req.ignore_value or req.ignore_lease) and req.key not in pre:
            raise KeyNotFoundError()
        w = _Writer(self.rev + 1, dict(pre))
        resp = w.put(req)
        self._commit(w.state, w.changes)
        return resp

    def delete_range(self, req: DeleteRangeRequest) -> DeleteRangeResponse:
        if not req.key:
            raise EmptyKeyError()
        w = _Writer(self.rev + 1, dict(self.states[self.rev]))
        resp = w.delete(req, self.rev)
        self._commit(w.state, w.changes)
        return resp

    def delete_keys_with_lease(self, lease: int) -> DeleteRangeResponse:
        w = _Writer(self.rev + 1, dict(self.states[self.rev]))
        keys = self.keys_with_lease(lease)
        for key in keys:
            w.delete(DeleteRangeRequest(key), self.rev)
        self._commit(w.state, w.changes)
        return DeleteRangeResponse(self.rev, len(keys))

    def compact(self, rev: int) -> CompactResponse:
        if rev <= self.compacted:
            raise CompactedError(self.compacted)
        if rev > self.rev:
            raise FutureRevisionError()
        self.compacted = rev
        return CompactResponse(self.rev)

    def txn(self, req: TxnRequest) -> TxnResponse:
        check_txn_req(req)
        check_duplicates(req)
        pre = self.states[self.rev]
        path = self._path(req, pre)
        self._check_puts(req, path, pre)
        self._check_ranges(req, path)
        w = _Writer(self.rev + 1, dict(pre))
        resp = self._run(req, path, w)
        self._commit(w.state, w.changes)
        return resp

    def _path(self, req: TxnRequest, pre: State) -> list[object]:
        ok = all(compare(c, pre) for c in req.compare)
        ops = req.success if ok else req.failure
        return [ok, [self._path(op, pre) for op in ops if isinstance(op, TxnRequest)]]

    @staticmethod
    def _branch(req: TxnRequest, path: list[object]
                ) -> Iterator[tuple[RequestOp, list[object] | None]]:
        ok, nested = path
        assert isinstance(nested, list)
        it = iter(nested)
        for op in req.success if ok else req.failure:
            yield op, (next(it) if isinstance(op, TxnRequest) else None)

    def _check_puts(self, req: TxnRequest, path: list[object], pre: State) -> None:
        for op, sub in self._branch(req, path):
            if isinstance(op, PutRequest) and (op.ignore_value or op.ignore_lease) \
                    and op.key not in pre:
                raise KeyNotFoundError()
            if isinstance(op, TxnRequest):
                assert sub is not None
                self._check_puts(op, sub, pre)

    def _check_ranges(self, req: TxnRequest, path: list[object]) -> None:
        for op, sub in self._branch(req, path):
            if isinstance(op, RangeRequest) and op.revision > 0:
                if op.revision > self.rev:
                    raise FutureRevisionError()
                if op.revision < self.compacted:
                    raise CompactedError(self.compacted)
            if isinstance(op, TxnRequest):
                assert sub is not None
                self._check_ranges(op, sub)

    def _run(self, req: TxnRequest, path: list[object], w: _Writer) -> TxnResponse:
        out: list[ResponseOp] = []
        for op, sub in self._branch(req, path):
            if isinstance(op, RangeRequest):
                out.append(self._range(op, w.revision(self.rev), w.state))
            elif isinstance(op, PutRequest):
                out.append(w.put(op))
            elif isinstance(op, DeleteRangeRequest):
                out.append(w.delete(op, self.rev))
            else:
                assert sub is not None
                out.append(self._run(op, sub, w))
        return TxnResponse(w.revision(self.rev), bool(path[0]), out)


class _Writer:
    """One write entry at revision `main` over a working copy of the state."""

    def __init__(self, main: int, state: State) -> None:
        self.main = main
        self.state = state
        self.changes: list[_Change] = []

    def revision(self, before: int) -> int:
        return self.main if self.changes else before

    def put(self, req: PutRequest) -> PutResponse:
        old = self.state.get(req.key)
        if (req.ignore_value or req.ignore_lease) and old is None:
            raise KeyNotFoundError()
        value = old.value if req.ignore_value and old else req.value
        lease = old.lease if req.ignore_lease and old else req.lease
        kv = KeyValue(req.key, old.create_revision if old else self.main, self.main,
                      old.version + 1 if old else 1, value, lease)
        self.state[req.key] = kv
        self.changes.append(_Change(self.main, len(self.changes), EventType.PUT, req.key, kv))
        return PutResponse(self.main, old if req.prev_kv else None)

    def delete(self, req: DeleteRangeRequest, before: int) -> DeleteRangeResponse:
        doomed = sorted(k for k in self.state if in_range(k, req.key, req.range_end))
        prevs = [self.state[k] for k in doomed]
        for key in doomed:
            del self.state[key]
            self.changes.append(_Change(self.main, len(self.changes), EventType.DELETE, key,
                                        KeyValue(key, mod_revision=self.main)))
        return DeleteRangeResponse(self.revision(before), len(doomed),
                                   prevs if req.prev_kv else [])


def compare(c: Compare, state: State) -> bool:
    kvs = [state[k] for k in sorted(state) if in_range(k, c.key, c.range_end)]
    if not kvs:
        if c.target == CompareTarget.VALUE:
            return False
        kvs = [KeyValue(c.key)]
    field, operand = {
        CompareTarget.VALUE: ("value", c.value), CompareTarget.VERSION: ("version", c.version),
        CompareTarget.CREATE: ("create_revision", c.create_revision),
        CompareTarget.MOD: ("mod_revision", c.mod_revision),
        CompareTarget.LEASE: ("lease", c.lease)}[CompareTarget(c.target)]
    test = {CompareResult.EQUAL: lambda a, b: a == b,
            CompareResult.NOT_EQUAL: lambda a, b: a != b,
            CompareResult.GREATER: lambda a, b: a > b,
            CompareResult.LESS: lambda a, b: a < b}[CompareResult(c.result)]
    return all(test(getattr(kv, field), operand) for kv in kvs)


# --- request checks ----------------------------------------------------------------------
def check_range_req(req: RangeRequest) -> None:
    if not req.key:
        raise EmptyKeyError()
    if req.sort_order not in (0, 1, 2) or req.sort_target not in (0, 1, 2, 3, 4):
        raise InvalidSortOptionError()


def check_put_req(req: PutRequest) -> None:
    if not req.key:
        raise EmptyKeyError()
    if req.ignore_value and req.value:
        raise ValueProvidedError()
    if req.ignore_lease and req.lease:
        raise LeaseProvidedError()


def check_txn_req(req: TxnRequest) -> None:
    if any(not c.key for c in req.compare):
        raise EmptyKeyError()
    for op in [*req.success, *req.failure]:
        if isinstance(op, RangeRequest):
            check_range_req(op)
        elif isinstance(op, PutRequest):
            check_put_req(op)
        elif isinstance(op, DeleteRangeRequest):
            if not op.key:
                raise EmptyKeyError()
        else:
            check_txn_req(op)


def _leaves(ops: Sequence[RequestOp], path: tuple[tuple[int, bool], ...]
            ) -> Iterator[tuple[RequestOp, tuple[tuple[int, bool], ...]]]:
    """Every put and delete of a branch with the txn branches leading to it: (id of
    the txn, branch taken) pairs."""
    for op in ops:
        if isinstance(op, PutRequest | DeleteRangeRequest):
            yield op, path
        elif isinstance(op, TxnRequest):
            yield from _leaves(op.success, (*path, (id(op), True)))
            yield from _leaves(op.failure, (*path, (id(op), False)))


def _exclusive(a: tuple[tuple[int, bool], ...], b: tuple[tuple[int, bool], ...]) -> bool:
    """Two leaves in opposite branches of one txn never both run."""
    return any(x[0] == y[0] and x[1] != y[1] for x, y in zip(a, b, strict=False))


def _conflict(a: RequestOp, b: RequestOp) -> bool:
    if isinstance(a, DeleteRangeRequest) and isinstance(b, DeleteRangeRequest):
        return False
    if isinstance(a, DeleteRangeRequest):
        a, b = b, a
    assert isinstance(a, PutRequest)
    if isinstance(b, PutRequest):
        return a.key == b.key
    assert isinstance(b, DeleteRangeRequest)
    return in_range(a.key, b.key, b.range_end)


def check_duplicates(req: TxnRequest) -> None:
    """A txn may not put one key twice, nor put a key it deletes, unless the two are in
    opposite branches of a txn."""
    for branch in (req.success, req.failure):
        leaves = list(_leaves(branch, ()))
        for i, (a, pa) in enumerate(leaves):
            for b, pb in leaves[i + 1:]:
                if not _exclusive(pa, pb) and _conflict(a, b):
                    raise DuplicateKeyError()
