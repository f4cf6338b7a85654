"""etcd's wire messages to the store's dataclasses and back (kvraft.storage.mvcc.convert):
every field of every request arrives, every compare target's operand lands in its own
field, nested txns keep their shape, and the answers the store gives come back on the
wire as etcd's (the nested headers carrying only their revision). The round trips run
through a real MVCCStore on LevelDB: etcd bytes in, etcd bytes out."""
from __future__ import annotations

from typing import TypeVar

import pytest
from google.protobuf.message import Message

from kvraft.proto import etcdserverpb_pb2 as etcdpb
from kvraft.proto import mvccpb_pb2 as mvccpb
from kvraft.storage.mvcc import (
    Compare,
    CompareResult,
    CompareTarget,
    DeleteRangeRequest,
    DeleteRangeResponse,
    Event,
    EventType,
    KeyValue,
    MVCCStore,
    PutRequest,
    PutResponse,
    RangeRequest,
    RangeResponse,
    TxnRequest,
    TxnResponse,
    convert,
)

HEADER = etcdpb.ResponseHeader(cluster_id=7, member_id=2, revision=41, raft_term=3)


M = TypeVar("M", bound=Message)


def wire(msg: M) -> M:
    """The message as a peer receives it: serialized and parsed again."""
    out = type(msg)()
    out.ParseFromString(msg.SerializeToString())
    return out


# --- requests -----------------------------------------------------------------------------

def test_every_field_of_a_range_request_arrives() -> None:
    pb = etcdpb.RangeRequest(
        key=b"a", range_end=b"b", limit=5, revision=9, sort_order=etcdpb.RangeRequest.DESCEND,
        sort_target=etcdpb.RangeRequest.MOD, serializable=True, keys_only=True,
        count_only=True, min_mod_revision=1, max_mod_revision=2, min_create_revision=3,
        max_create_revision=4)
    assert convert.range_request(wire(pb)) == RangeRequest(
        key=b"a", range_end=b"b", limit=5, revision=9, sort_order=2, sort_target=3,
        keys_only=True, count_only=True, min_mod_revision=1, max_mod_revision=2,
        min_create_revision=3, max_create_revision=4)


def test_an_empty_range_request_is_the_dataclass_defaults() -> None:
    assert convert.range_request(etcdpb.RangeRequest(key=b"k")) == RangeRequest(b"k")


def test_every_field_of_a_put_and_a_delete_arrives() -> None:
    put = etcdpb.PutRequest(key=b"k", value=b"v", lease=77, prev_kv=True, ignore_value=True,
                            ignore_lease=True)
    assert convert.put_request(put) == PutRequest(b"k", b"v", 77, True, True, True)
    dr = etcdpb.DeleteRangeRequest(key=b"a", range_end=b"\x00", prev_kv=True)
    assert convert.delete_range_request(dr) == DeleteRangeRequest(b"a", b"\x00", True)


@pytest.mark.parametrize(("target", "union", "field", "operand"), [
    (etcdpb.Compare.VALUE, {"value": b"x"}, "value", b"x"),
    (etcdpb.Compare.VERSION, {"version": 3}, "version", 3),
    (etcdpb.Compare.CREATE, {"create_revision": 4}, "create_revision", 4),
    (etcdpb.Compare.MOD, {"mod_revision": 5}, "mod_revision", 5),
    (etcdpb.Compare.LEASE, {"lease": 6}, "lease", 6),
])
def test_each_compare_target_puts_its_operand_in_its_own_field(
        target: int, union: dict[str, object], field: str, operand: object) -> None:
    pb = etcdpb.Compare(key=b"k", target=target,
                        result=etcdpb.Compare.GREATER, range_end=b"z",
                        **union)
    got = convert.compare(wire(pb))
    assert (got.key, got.target, got.result, got.range_end) == (
        b"k", target, CompareResult.GREATER, b"z")
    zeros: dict[str, object] = {"value": b"", "version": 0, "create_revision": 0,
                                "mod_revision": 0, "lease": 0}
    zeros[field] = operand
    assert {name: getattr(got, name) for name in zeros} == zeros


def test_a_compare_with_no_operand_compares_with_zeros() -> None:
    got = convert.compare(etcdpb.Compare(key=b"k", target=etcdpb.Compare.MOD,
                                         result=etcdpb.Compare.LESS))
    assert got == Compare(b"k", CompareTarget.MOD, CompareResult.LESS)


def test_a_nested_txn_keeps_its_shape() -> None:
    inner = etcdpb.TxnRequest(
        compare=[etcdpb.Compare(key=b"i", target=etcdpb.Compare.VERSION, version=0)],
        success=[etcdpb.RequestOp(request_put=etcdpb.PutRequest(key=b"i", value=b"1"))],
        failure=[etcdpb.RequestOp(request_range=etcdpb.RangeRequest(key=b"i"))])
    outer = etcdpb.TxnRequest(
        compare=[etcdpb.Compare(key=b"o", target=etcdpb.Compare.VALUE,
                                result=etcdpb.Compare.NOT_EQUAL, value=b"no")],
        success=[
            etcdpb.RequestOp(request_range=etcdpb.RangeRequest(key=b"a", range_end=b"b",
                                                               limit=2)),
            etcdpb.RequestOp(request_txn=inner),
            etcdpb.RequestOp(request_delete_range=etcdpb.DeleteRangeRequest(
                key=b"d", prev_kv=True)),
        ],
        failure=[etcdpb.RequestOp(request_put=etcdpb.PutRequest(key=b"f", lease=9))])
    assert convert.txn_request(wire(outer)) == TxnRequest(
        compare=(Compare(b"o", CompareTarget.VALUE, CompareResult.NOT_EQUAL, value=b"no"),),
        success=(
            RangeRequest(b"a", b"b", limit=2),
            TxnRequest(
                compare=(Compare(b"i", CompareTarget.VERSION, CompareResult.EQUAL),),
                success=(PutRequest(b"i", b"1"),),
                failure=(RangeRequest(b"i"),)),
            DeleteRangeRequest(b"d", prev_kv=True),
        ),
        failure=(PutRequest(b"f", lease=9),))


def test_a_txn_op_with_no_request_is_refused() -> None:
    with pytest.raises(ValueError, match="no request"):
        convert.txn_request(etcdpb.TxnRequest(success=[etcdpb.RequestOp()]))


# --- answers ------------------------------------------------------------------------------

KV1 = KeyValue(b"a", 2, 5, 3, b"va", 11)
KV2 = KeyValue(b"b", 4, 4, 1, b"vb")


def pb_kv(kv: KeyValue) -> mvccpb.KeyValue:
    return mvccpb.KeyValue(key=kv.key, create_revision=kv.create_revision,
                           mod_revision=kv.mod_revision, version=kv.version,
                           value=kv.value, lease=kv.lease)


def test_a_key_value_carries_every_field() -> None:
    assert convert.kv_pb(KV1) == pb_kv(KV1)
    assert convert.kv_pb(KV1).lease == 11


def test_a_range_response_carries_the_header_keys_more_and_count() -> None:
    got = convert.range_response_pb(RangeResponse(41, [KV1, KV2], more=True, count=9), HEADER)
    assert wire(got) == etcdpb.RangeResponse(header=HEADER, kvs=[pb_kv(KV1), pb_kv(KV2)],
                                             more=True, count=9)


def test_a_put_response_has_a_prev_kv_only_when_the_store_gave_one() -> None:
    with_prev = convert.put_response_pb(PutResponse(41, KV1), HEADER)
    assert with_prev.HasField("prev_kv") and with_prev.prev_kv == pb_kv(KV1)
    without = convert.put_response_pb(PutResponse(41), HEADER)
    assert not without.HasField("prev_kv")
    assert without.header == HEADER


def test_a_delete_range_response_carries_deleted_and_prev_kvs() -> None:
    got = convert.delete_range_response_pb(DeleteRangeResponse(41, 2, [KV1, KV2]), HEADER)
    assert wire(got) == etcdpb.DeleteRangeResponse(header=HEADER, deleted=2,
                                                   prev_kvs=[pb_kv(KV1), pb_kv(KV2)])


def test_a_txn_response_nests_with_revision_only_headers() -> None:
    resp = TxnResponse(41, True, [
        RangeResponse(40, [KV2], more=False, count=1),
        PutResponse(41, KV1),
        DeleteRangeResponse(41, 1, [KV2]),
        TxnResponse(41, False, [PutResponse(41)]),
    ])
    got = wire(convert.txn_response_pb(resp, HEADER))
    rev = etcdpb.ResponseHeader
    assert got == etcdpb.TxnResponse(header=HEADER, succeeded=True, responses=[
        etcdpb.ResponseOp(response_range=etcdpb.RangeResponse(
            header=rev(revision=40), kvs=[pb_kv(KV2)], count=1)),
        etcdpb.ResponseOp(response_put=etcdpb.PutResponse(header=rev(revision=41),
                                                          prev_kv=pb_kv(KV1))),
        etcdpb.ResponseOp(response_delete_range=etcdpb.DeleteRangeResponse(
            header=rev(revision=41), deleted=1, prev_kvs=[pb_kv(KV2)])),
        etcdpb.ResponseOp(response_txn=etcdpb.TxnResponse(
            header=rev(revision=41), succeeded=False,
            responses=[etcdpb.ResponseOp(response_put=etcdpb.PutResponse(
                header=rev(revision=41)))])),
    ])
    assert not got.responses[3].response_txn.responses[0].response_put.HasField("prev_kv")


def test_a_txn_response_on_an_empty_store_still_has_nested_headers() -> None:
    got = wire(convert.txn_response_pb(TxnResponse(0, True, [RangeResponse(0)]), HEADER))
    assert got.responses[0].WhichOneof("response") == "response_range"
    assert got.responses[0].response_range.HasField("header")


def test_events_carry_their_type_and_prev_kv_when_known() -> None:
    put = convert.event_pb(Event(EventType.PUT, KV1, KV2))
    assert put == mvccpb.Event(type=mvccpb.Event.PUT, kv=pb_kv(KV1), prev_kv=pb_kv(KV2))
    tomb = KeyValue(b"a", mod_revision=6)
    dele = convert.event_pb(Event(EventType.DELETE, tomb))
    assert dele.type == mvccpb.Event.DELETE and dele.kv == pb_kv(tomb)
    assert not dele.HasField("prev_kv")


# --- round trips through a real store ---------------------------------------------------------

def test_etcd_requests_through_the_store_give_etcd_answers(store: MVCCStore) -> None:
    # etcd's store starts at revision 1: the first write is revision 2.
    put = convert.put_request(etcdpb.PutRequest(key=b"k", value=b"v1"))
    assert convert.put_response_pb(store.put(put), HEADER) == etcdpb.PutResponse(
        header=HEADER)
    again = convert.put_request(etcdpb.PutRequest(key=b"k", value=b"v2", prev_kv=True))
    assert convert.put_response_pb(store.put(again), HEADER).prev_kv == mvccpb.KeyValue(
        key=b"k", value=b"v1", create_revision=2, mod_revision=2, version=1)

    rng = convert.range_response_pb(
        store.range(convert.range_request(etcdpb.RangeRequest(key=b"k"))), HEADER)
    assert list(rng.kvs) == [mvccpb.KeyValue(key=b"k", value=b"v2", create_revision=2,
                                             mod_revision=3, version=2)]
    past = convert.range_response_pb(
        store.range(convert.range_request(etcdpb.RangeRequest(key=b"k", revision=2))), HEADER)
    assert [kv.value for kv in past.kvs] == [b"v1"]

    txn = etcdpb.TxnRequest(
        compare=[etcdpb.Compare(key=b"k", target=etcdpb.Compare.MOD,
                                result=etcdpb.Compare.EQUAL, mod_revision=3)],
        success=[etcdpb.RequestOp(request_put=etcdpb.PutRequest(key=b"k2", value=b"x")),
                 etcdpb.RequestOp(request_range=etcdpb.RangeRequest(key=b"k",
                                                                    range_end=b"l"))],
        failure=[etcdpb.RequestOp(request_delete_range=etcdpb.DeleteRangeRequest(key=b"k"))])
    got = convert.txn_response_pb(store.txn(convert.txn_request(wire(txn))),
                                  HEADER)
    assert got.succeeded
    assert got.responses[0].response_put.header.revision == 4
    assert [(kv.key, kv.mod_revision) for kv in got.responses[1].response_range.kvs] == [
        (b"k", 3), (b"k2", 4)]

    dr = convert.delete_range_request(etcdpb.DeleteRangeRequest(key=b"k", range_end=b"l",
                                                                prev_kv=True))
    deleted = convert.delete_range_response_pb(store.delete_range(dr), HEADER)
    assert deleted.deleted == 2 and [kv.key for kv in deleted.prev_kvs] == [b"k", b"k2"]
    assert store.revision == 5
