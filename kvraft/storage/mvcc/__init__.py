"""kvraft.storage.mvcc: etcd v3's MVCC data model on the node's LevelDB (issue 12).

One cluster-wide revision; per key create/mod revision, version and lease; tombstones;
ranges at any revision not compacted; Put, DeleteRange and Txn as etcd applies them;
compaction in bounded steps; the history a watch replays; the keys of a lease. The key
index lives in LevelDB (layout.py), so memory is bounded by configuration, not by the
number of keys or revisions.

`MVCCBatch` is the write side of one apply over any `Reader` (view.py) — what the state
machine will run; `MVCCStore` the same over a plyvel DB of its own.
"""
from kvraft.storage.mvcc.batch import MVCCBatch, compare_kv
from kvraft.storage.mvcc.checks import (
    TXN_OPS_MAX,
    check_delete,
    check_no_duplicate_keys,
    check_put,
    check_range,
    check_txn,
)
from kvraft.storage.mvcc.errors import (
    ClusterVersionError,
    CompactedError,
    CorruptError,
    DuplicateKeyError,
    EmptyKeyError,
    FutureRevisionError,
    InvalidSortOptionError,
    KeyNotFoundError,
    LeaseExistsError,
    LeaseNotFoundError,
    LeaseProvidedError,
    LeaseTTLTooLargeError,
    MVCCError,
    NoSpaceError,
    RangeTooLargeError,
    StatusCode,
    TooManyOpsError,
    ValueProvidedError,
)
from kvraft.storage.mvcc.keyrange import KeyRange
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
    SortOrder,
    SortTarget,
    TxnRequest,
    TxnResponse,
)
from kvraft.storage.mvcc.reads import (
    RangeLimits,
    compact_revision,
    current_revision,
    iter_events,
    iter_keys_with_lease,
    keys_with_lease,
    range_at,
)
from kvraft.storage.mvcc.store import MVCCStore
from kvraft.storage.mvcc.view import PlyvelReader, Reader, WriteSet

__all__ = [
    "TXN_OPS_MAX",
    "ClusterVersionError",
    "CompactResponse",
    "CompactedError",
    "Compare",
    "CompareResult",
    "CompareTarget",
    "CorruptError",
    "DeleteRangeRequest",
    "DeleteRangeResponse",
    "DuplicateKeyError",
    "EmptyKeyError",
    "Event",
    "EventType",
    "FutureRevisionError",
    "InvalidSortOptionError",
    "KeyNotFoundError",
    "KeyRange",
    "KeyValue",
    "LeaseExistsError",
    "LeaseNotFoundError",
    "LeaseProvidedError",
    "LeaseTTLTooLargeError",
    "MVCCBatch",
    "MVCCError",
    "MVCCStore",
    "NoSpaceError",
    "PlyvelReader",
    "PutRequest",
    "PutResponse",
    "RangeLimits",
    "RangeRequest",
    "RangeResponse",
    "RangeTooLargeError",
    "Reader",
    "RequestOp",
    "ResponseOp",
    "SortOrder",
    "SortTarget",
    "StatusCode",
    "TooManyOpsError",
    "TxnRequest",
    "TxnResponse",
    "ValueProvidedError",
    "WriteSet",
    "check_delete",
    "check_no_duplicate_keys",
    "check_put",
    "check_range",
    "check_txn",
    "compact_revision",
    "compare_kv",
    "current_revision",
    "iter_events",
    "iter_keys_with_lease",
    "keys_with_lease",
    "range_at",
]
