"""etcd's wire messages (etcdserverpb, mvccpb) to the MVCC store's dataclasses and back.

The store reads no protobuf (messages.py); the server converts each request on the way
in and each answer on the way out, so these run once per request and once per key
returned. Each converter reads every protobuf field once (an attribute read on a upb
message is a C call that builds a new Python object each time) and fills repeated
fields with `add(...)`, which builds the element in place instead of building it and
then copying it in (about 3x faster for a range of many keys).

Headers: the caller passes the top-level `ResponseHeader` (cluster id, member id,
revision, term: the server's). The responses nested in a txn get a header with only
their revision, as etcd's apply leaves them.

A Compare's operand is the member of its `target_union` oneof that is set; the others
stay at the dataclass's zeros. (etcd compares a VALUE target whose union holds no value
as equal; here it compares with b"" — a request no etcd client sends.)
"""
from __future__ import annotations

from collections.abc import Sequence

from google.protobuf.internal.containers import RepeatedCompositeFieldContainer

from kvraft.proto import etcdserverpb_pb2 as etcdpb
from kvraft.proto import mvccpb_pb2 as mvccpb
from kvraft.storage.mvcc.messages import (
    Compare,
    DeleteRangeRequest,
    DeleteRangeResponse,
    Event,
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

# --- requests: protobuf -> dataclass ------------------------------------------------------


def range_request(pb: etcdpb.RangeRequest) -> RangeRequest:
    """`serializable` is the server's business (whether to read through Raft), not the
    store's: it is not carried."""
    return RangeRequest(
        key=pb.key, range_end=pb.range_end, limit=pb.limit, revision=pb.revision,
        sort_order=pb.sort_order, sort_target=pb.sort_target, keys_only=pb.keys_only,
        count_only=pb.count_only, min_mod_revision=pb.min_mod_revision,
        max_mod_revision=pb.max_mod_revision, min_create_revision=pb.min_create_revision,
        max_create_revision=pb.max_create_revision)


def put_request(pb: etcdpb.PutRequest) -> PutRequest:
    return PutRequest(key=pb.key, value=pb.value, lease=pb.lease, prev_kv=pb.prev_kv,
                      ignore_value=pb.ignore_value, ignore_lease=pb.ignore_lease)


def delete_range_request(pb: etcdpb.DeleteRangeRequest) -> DeleteRangeRequest:
    return DeleteRangeRequest(key=pb.key, range_end=pb.range_end, prev_kv=pb.prev_kv)


def compare(pb: etcdpb.Compare) -> Compare:
    key, target, result, range_end = pb.key, pb.target, pb.result, pb.range_end
    which = pb.WhichOneof("target_union")
    if which == "value":
        return Compare(key, target, result, value=pb.value, range_end=range_end)
    if which == "version":
        return Compare(key, target, result, version=pb.version, range_end=range_end)
    if which == "mod_revision":
        return Compare(key, target, result, mod_revision=pb.mod_revision, range_end=range_end)
    if which == "create_revision":
        return Compare(key, target, result, create_revision=pb.create_revision,
                       range_end=range_end)
    if which == "lease":
        return Compare(key, target, result, lease=pb.lease, range_end=range_end)
    return Compare(key, target, result, range_end=range_end)


def request_op(pb: etcdpb.RequestOp) -> RequestOp:
    """One op of a txn branch. ValueError for an op with no request set (etcd's apply
    has no case for it either; the server refuses it before proposing)."""
    which = pb.WhichOneof("request")
    if which == "request_put":
        return put_request(pb.request_put)
    if which == "request_range":
        return range_request(pb.request_range)
    if which == "request_delete_range":
        return delete_range_request(pb.request_delete_range)
    if which == "request_txn":
        return txn_request(pb.request_txn)
    raise ValueError("a txn operation with no request set")


def txn_request(pb: etcdpb.TxnRequest) -> TxnRequest:
    """Nested txns convert recursively (their depth is bounded by the request's size,
    which the server bounds before converting)."""
    return TxnRequest(compare=tuple(compare(c) for c in pb.compare),
                      success=tuple(request_op(op) for op in pb.success),
                      failure=tuple(request_op(op) for op in pb.failure))


# --- answers: dataclass -> protobuf -------------------------------------------------------


def kv_pb(kv: KeyValue) -> mvccpb.KeyValue:
    return mvccpb.KeyValue(key=kv.key, create_revision=kv.create_revision,
                           mod_revision=kv.mod_revision, version=kv.version, value=kv.value,
                           lease=kv.lease)


def _add_kvs(out: RepeatedCompositeFieldContainer[mvccpb.KeyValue],
             kvs: Sequence[KeyValue]) -> None:
    add = out.add
    for kv in kvs:
        add(key=kv.key, create_revision=kv.create_revision, mod_revision=kv.mod_revision,
            version=kv.version, value=kv.value, lease=kv.lease)


def _set_kv(out: mvccpb.KeyValue, kv: KeyValue) -> None:
    out.key = kv.key
    out.create_revision = kv.create_revision
    out.mod_revision = kv.mod_revision
    out.version = kv.version
    out.value = kv.value
    out.lease = kv.lease


# mvccpb's enum by messages.EventType's number (the same numbers).
_EVENT_TYPES = (mvccpb.Event.PUT, mvccpb.Event.DELETE)


def event_pb(ev: Event) -> mvccpb.Event:
    out = mvccpb.Event(type=_EVENT_TYPES[ev.type], kv=kv_pb(ev.kv))
    if ev.prev_kv is not None:
        _set_kv(out.prev_kv, ev.prev_kv)
    return out


def range_response_pb(resp: RangeResponse, header: etcdpb.ResponseHeader
                      ) -> etcdpb.RangeResponse:
    out = etcdpb.RangeResponse(header=header, more=resp.more, count=resp.count)
    _add_kvs(out.kvs, resp.kvs)
    return out


def put_response_pb(resp: PutResponse, header: etcdpb.ResponseHeader) -> etcdpb.PutResponse:
    out = etcdpb.PutResponse(header=header)
    if resp.prev_kv is not None:
        _set_kv(out.prev_kv, resp.prev_kv)
    return out


def delete_range_response_pb(resp: DeleteRangeResponse, header: etcdpb.ResponseHeader
                             ) -> etcdpb.DeleteRangeResponse:
    out = etcdpb.DeleteRangeResponse(header=header, deleted=resp.deleted)
    _add_kvs(out.prev_kvs, resp.prev_kvs)
    return out


def txn_response_pb(resp: TxnResponse, header: etcdpb.ResponseHeader) -> etcdpb.TxnResponse:
    out = etcdpb.TxnResponse(header=header, succeeded=resp.succeeded)
    _fill_responses(out.responses, resp.responses)
    return out


def _fill_responses(out: RepeatedCompositeFieldContainer[etcdpb.ResponseOp],
                    responses: Sequence[ResponseOp]) -> None:
    add = out.add
    for r in responses:
        op = add()
        if isinstance(r, RangeResponse):
            dst = op.response_range
            dst.header.revision = r.revision
            dst.more, dst.count = r.more, r.count
            _add_kvs(dst.kvs, r.kvs)
        elif isinstance(r, PutResponse):
            put = op.response_put
            put.header.revision = r.revision
            if r.prev_kv is not None:
                _set_kv(put.prev_kv, r.prev_kv)
        elif isinstance(r, DeleteRangeResponse):
            dele = op.response_delete_range
            dele.header.revision = r.revision
            dele.deleted = r.deleted
            _add_kvs(dele.prev_kvs, r.prev_kvs)
        else:
            assert isinstance(r, TxnResponse), type(r)
            txn = op.response_txn
            txn.header.revision = r.revision
            txn.succeeded = r.succeeded
            _fill_responses(txn.responses, r.responses)
