"""The requests and answers of the MVCC store, field for field etcd's (rpc.proto's
RangeRequest ... TxnResponse, kv.proto's KeyValue and Event), as plain dataclasses.

The store does not read protobuf: the server converts etcdserverpb / mvccpb messages
to these and back (same field names; the enums have etcd's numbers, so a wire value
converts with int()). Enum-valued request fields are typed `int`: a value etcd does not
define arrives as is and is refused where etcd refuses it (InvalidSortOptionError for a
range's sort) or treated as etcd treats it (a compare's unknown result is true).

Response headers carry only `revision` here; cluster id, member id and term are the
server's.
"""
from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field


class SortOrder(enum.IntEnum):
    NONE = 0
    ASCEND = 1
    DESCEND = 2


class SortTarget(enum.IntEnum):
    KEY = 0
    VERSION = 1
    CREATE = 2
    MOD = 3
    VALUE = 4


class CompareResult(enum.IntEnum):
    EQUAL = 0
    GREATER = 1
    LESS = 2
    NOT_EQUAL = 3


class CompareTarget(enum.IntEnum):
    VERSION = 0
    CREATE = 1
    MOD = 2
    VALUE = 3
    LEASE = 4


class EventType(enum.IntEnum):
    PUT = 0
    DELETE = 1


@dataclass(frozen=True, slots=True)
class KeyValue:
    """mvccpb.KeyValue. A live key has version >= 1; a deletion event's kv has only
    `key` and `mod_revision` (the deletion's revision), as etcd's."""

    key: bytes
    create_revision: int = 0
    mod_revision: int = 0
    version: int = 0
    value: bytes = b""
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Event:
    """mvccpb.Event. `prev_kv`: the key before this change, when asked for and known
    (None when the key did not exist or that revision has been compacted)."""

    type: EventType
    kv: KeyValue
    prev_kv: KeyValue | None = None


@dataclass(frozen=True, slots=True)
class RangeRequest:
    """`range_end`: b"" = the key alone; b"\\0" = every key >= key; otherwise
    [key, range_end). `revision` <= 0: the current revision. `limit` <= 0: no limit."""

    key: bytes
    range_end: bytes = b""
    limit: int = 0
    revision: int = 0
    sort_order: int = SortOrder.NONE
    sort_target: int = SortTarget.KEY
    keys_only: bool = False
    count_only: bool = False
    min_mod_revision: int = 0
    max_mod_revision: int = 0
    min_create_revision: int = 0
    max_create_revision: int = 0


@dataclass(frozen=True, slots=True)
class RangeResponse:
    """`revision`: the store's current revision (etcd's header, also for a read at a
    past revision). `count`: keys in the range at the read revision, before limit and
    before the min/max filters (etcd's). `more`: keys that passed the filters were left
    out by the limit.

    `truncated` (kvraft's, not on the wire): a range inside a txn whose result passed
    the member's RangeLimits. The apply cannot refuse it (members configured apart
    would then disagree on whether the txn applied), so it applies the txn, stops
    collecting that range and says so; the server answers the client
    RESOURCE_EXHAUSTED, as etcd's gRPC layer does for a response over its size."""

    revision: int
    kvs: Sequence[KeyValue] = ()
    more: bool = False
    count: int = 0
    truncated: bool = False


@dataclass(frozen=True, slots=True)
class PutRequest:
    key: bytes
    value: bytes = b""
    lease: int = 0
    prev_kv: bool = False
    ignore_value: bool = False
    ignore_lease: bool = False


@dataclass(frozen=True, slots=True)
class PutResponse:
    revision: int
    prev_kv: KeyValue | None = None


@dataclass(frozen=True, slots=True)
class DeleteRangeRequest:
    """`range_end` as RangeRequest's."""

    key: bytes
    range_end: bytes = b""
    prev_kv: bool = False


@dataclass(frozen=True, slots=True)
class DeleteRangeResponse:
    revision: int
    deleted: int = 0
    prev_kvs: Sequence[KeyValue] = ()


@dataclass(frozen=True, slots=True)
class Compare:
    """etcdserverpb.Compare: `target`'s field (value, version, create_revision,
    mod_revision or lease) is compared with each key in [key, range_end) (range_end as
    RangeRequest's) using `result`. A missing key compares as all zeros, except that a
    VALUE compare on a missing key is false (etcd's)."""

    key: bytes
    target: int = CompareTarget.VALUE
    result: int = CompareResult.EQUAL
    value: bytes = b""
    version: int = 0
    create_revision: int = 0
    mod_revision: int = 0
    lease: int = 0
    range_end: bytes = b""


@dataclass(frozen=True, slots=True)
class TxnRequest:
    compare: Sequence[Compare] = ()
    success: Sequence[RequestOp] = ()
    failure: Sequence[RequestOp] = ()


@dataclass(frozen=True, slots=True)
class TxnResponse:
    """`responses`: one per op of the branch taken, in order."""

    revision: int
    succeeded: bool = False
    responses: Sequence[ResponseOp] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class CompactResponse:
    revision: int


RequestOp = RangeRequest | PutRequest | DeleteRangeRequest | TxnRequest
ResponseOp = RangeResponse | PutResponse | DeleteRangeResponse | TxnResponse
