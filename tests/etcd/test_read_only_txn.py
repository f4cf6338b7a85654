"""A txn whose branches only read is served without Raft (kvraft.server.etcd.kv, as etcd
serves a read-only txn): its compares and ranges are evaluated on the state machine at
one revision. It must answer exactly what the apply of the same txn answers — the
same branch, the same responses, the same revisions, the same refusals — on any state,
compacted history included. Checked against the real MVCC store on LevelDB."""
from __future__ import annotations

import tempfile
from pathlib import Path

import plyvel
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvraft.server.etcd.kv import _read_txn
from kvraft.storage.mvcc import (
    Compare,
    CompareResult,
    CompareTarget,
    MVCCError,
    MVCCStore,
    PutRequest,
    RangeRequest,
    RequestOp,
    TxnRequest,
)
from tests.storage.mvcc import strategies as mst

READ_ONLY_TXNS = st.builds(
    TxnRequest, compare=st.lists(mst.compares(), max_size=3),
    success=st.lists(mst.ranges(), max_size=3), failure=st.lists(mst.ranges(), max_size=3))
WRITES: st.SearchStrategy[RequestOp] = st.one_of(mst.puts(), mst.deletes(), mst.txns())


def apply(store: MVCCStore, op: RequestOp) -> None:
    try:
        if isinstance(op, PutRequest):
            store.put(op)
        elif isinstance(op, TxnRequest):
            store.txn(op)
        elif isinstance(op, RangeRequest):
            store.range(op)
        else:
            store.delete_range(op)
    except MVCCError:
        pass  # a refused write leaves the state as it was; the history goes on


def outcome(call: object) -> object:
    try:
        return call()  # type: ignore[operator]
    except MVCCError as e:
        return type(e)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(writes=st.lists(WRITES, max_size=12), compact_at=st.integers(0, 8),
       txn=READ_ONLY_TXNS)
def test_a_read_only_txn_answers_what_its_apply_answers(
        writes: list[RequestOp], compact_at: int, txn: TxnRequest) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = plyvel.DB(str(Path(tmp) / "db"), create_if_missing=True)
        try:
            store = MVCCStore(db, sync=False)
            for op in writes:
                apply(store, op)
            if 1 < compact_at <= store.revision:
                store.compact(compact_at)
            before = store.revision
            served = outcome(lambda: _read_txn(store, txn))
            applied = outcome(lambda: store.txn(txn))
            assert served == applied
            assert store.revision == before  # a read-only txn writes nothing
        finally:
            db.close()


def test_compares_on_a_missing_key_follow_etcds_rule(tmp_path: Path) -> None:
    db = plyvel.DB(str(tmp_path / "db"), create_if_missing=True)
    try:
        store = MVCCStore(db, sync=False)
        store.put(PutRequest(b"there", b"v"))
        zero_version = Compare(b"absent", CompareTarget.VERSION, CompareResult.EQUAL)
        any_value = Compare(b"absent", CompareTarget.VALUE, CompareResult.NOT_EQUAL, b"x")
        hit = TxnRequest([zero_version], [RangeRequest(b"there")])
        resp = _read_txn(store, hit)
        assert resp is not None and resp.succeeded
        assert [kv.value for kv in resp.responses[0].kvs] == [b"v"]  # type: ignore[union-attr]
        miss = _read_txn(store, TxnRequest([any_value], [RangeRequest(b"there")]))
        assert miss is not None and not miss.succeeded and list(miss.responses) == []
    finally:
        db.close()
