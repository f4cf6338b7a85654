"""etcd's checks of a request that depend on the request alone (v3rpc/key.go and
checkIntervals), so the server can refuse a bad request before proposing it, and an
apply refuses it the same way on every member.

`TXN_OPS_MAX` is etcd's default --max-txn-ops. The limit is a member's configuration
(`kvraft serve --max-txn-ops`), so only the server's check before proposing applies it
(`check_txn(req, ops_max=...)`); the apply passes no bound: a limit that differed
between members must not make their applies differ.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from kvraft.storage.mvcc.errors import (
    DuplicateKeyError,
    EmptyKeyError,
    InvalidSortOptionError,
    LeaseProvidedError,
    TooManyOpsError,
    ValueProvidedError,
)
from kvraft.storage.mvcc.keyrange import KeyRange
from kvraft.storage.mvcc.messages import (
    DeleteRangeRequest,
    PutRequest,
    RangeRequest,
    RequestOp,
    SortOrder,
    SortTarget,
    TxnRequest,
)

TXN_OPS_MAX = 128

_SORT_ORDERS = frozenset(int(o) for o in SortOrder)
_SORT_TARGETS = frozenset(int(t) for t in SortTarget)


def check_range(req: RangeRequest) -> None:
    if not req.key:
        raise EmptyKeyError()
    if req.sort_order not in _SORT_ORDERS or req.sort_target not in _SORT_TARGETS:
        raise InvalidSortOptionError()


def check_put(req: PutRequest) -> None:
    if not req.key:
        raise EmptyKeyError()
    if req.ignore_value and req.value:
        raise ValueProvidedError()
    if req.ignore_lease and req.lease != 0:
        raise LeaseProvidedError()


def check_delete(req: DeleteRangeRequest) -> None:
    if not req.key:
        raise EmptyKeyError()


def check_txn(req: TxnRequest, *, ops_max: int | None = None) -> None:
    """Every check etcd makes of a txn before applying it: too many ops (only with
    `ops_max`; a nested txn gets what its parent leaves, as in etcd), empty keys,
    each op's own checks, and the duplicate-key rule (`check_no_duplicate_keys`)."""
    _check_txn_ops(req, ops_max)
    check_no_duplicate_keys(req.success)
    check_no_duplicate_keys(req.failure)


def _check_txn_ops(req: TxnRequest, ops_max: int | None) -> None:
    ops = max(len(req.compare), len(req.success), len(req.failure))
    if ops_max is not None and ops > ops_max:
        raise TooManyOpsError()
    for c in req.compare:
        if not c.key:
            raise EmptyKeyError()
    for op in (*req.success, *req.failure):
        if isinstance(op, RangeRequest):
            check_range(op)
        elif isinstance(op, PutRequest):
            check_put(op)
        elif isinstance(op, DeleteRangeRequest):
            check_delete(op)
        else:
            _check_txn_ops(op, None if ops_max is None else ops_max - ops)


@dataclass(slots=True)
class _Writes:
    """The keys a list of ops (or one op) may put and the ranges it may delete."""

    puts: set[bytes] = field(default_factory=set)
    deletes: list[KeyRange] = field(default_factory=list)

    def deletes_key(self, key: bytes) -> bool:
        return any(key in r for r in self.deletes)


def check_no_duplicate_keys(ops: Sequence[RequestOp]) -> None:
    """etcd's rule for one branch of a txn: no two of its ops may put the same key, and
    no op may put a key that another deletes — counting the ops of nested txns, whose
    success and failure branches exclude each other (a key put in both is fine, as are
    a put in one and a delete in the other). DuplicateKeyError otherwise.

    Two ops that delete overlapping ranges are fine. Stricter than etcd 3.5 in two
    corners where its check misses an overlap its own semantics has: a delete with
    range_end "\\0" covers every key from its key on (etcd compares "\\0" as a plain
    key), and a nested txn's put is checked against a later sibling's delete too
    (etcd checks it only against earlier ones).
    """
    _branch_writes(ops)


def _branch_writes(ops: Sequence[RequestOp]) -> _Writes:
    per_op = [_op_writes(op) for op in ops]
    total = _Writes()
    for i, mine in enumerate(per_op):
        for key in mine.puts:
            if key in total.puts:
                raise DuplicateKeyError()
            if any(j != i and theirs.deletes_key(key) for j, theirs in enumerate(per_op)):
                raise DuplicateKeyError()
        total.puts |= mine.puts
        total.deletes.extend(mine.deletes)
    return total


def _op_writes(op: RequestOp) -> _Writes:
    if isinstance(op, PutRequest):
        return _Writes({op.key})
    if isinstance(op, DeleteRangeRequest):
        return _Writes(deletes=[KeyRange.of(op.key, op.range_end)])
    if isinstance(op, RangeRequest):
        return _Writes()
    then, otherwise = _branch_writes(op.success), _branch_writes(op.failure)
    return _Writes(then.puts | otherwise.puts, then.deletes + otherwise.deletes)
