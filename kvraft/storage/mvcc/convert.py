"""etcdserverpb requests -> the MVCC store's dataclasses (the lead's minimal version;
the full module, both directions, comes with the KV service)."""
from __future__ import annotations

from kvraft.proto import etcdserverpb_pb2 as etcdpb
from kvraft.storage.mvcc.messages import (
    Compare,
    DeleteRangeRequest,
    PutRequest,
    RangeRequest,
    RequestOp,
    TxnRequest,
)


def range_request(m: etcdpb.RangeRequest) -> RangeRequest:
    return RangeRequest(m.key, m.range_end, m.limit, m.revision, int(m.sort_order),
                        int(m.sort_target), m.keys_only, m.count_only, m.min_mod_revision,
                        m.max_mod_revision, m.min_create_revision, m.max_create_revision)


def put_request(m: etcdpb.PutRequest) -> PutRequest:
    return PutRequest(m.key, m.value, m.lease, m.prev_kv, m.ignore_value, m.ignore_lease)


def delete_range_request(m: etcdpb.DeleteRangeRequest) -> DeleteRangeRequest:
    return DeleteRangeRequest(m.key, m.range_end, m.prev_kv)


def compare(m: etcdpb.Compare) -> Compare:
    return Compare(m.key, int(m.target), int(m.result), m.value, m.version,
                   m.create_revision, m.mod_revision, m.lease, m.range_end)


def request_op(m: etcdpb.RequestOp) -> RequestOp:
    which = m.WhichOneof("request")
    if which == "request_range":
        return range_request(m.request_range)
    if which == "request_put":
        return put_request(m.request_put)
    if which == "request_delete_range":
        return delete_range_request(m.request_delete_range)
    if which == "request_txn":
        return txn_request(m.request_txn)
    raise ValueError("a txn operation without a request")


def txn_request(m: etcdpb.TxnRequest) -> TxnRequest:
    return TxnRequest(tuple(compare(c) for c in m.compare),
                      tuple(request_op(op) for op in m.success),
                      tuple(request_op(op) for op in m.failure))
