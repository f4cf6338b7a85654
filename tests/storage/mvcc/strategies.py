"""Hypothesis strategies for MVCC requests over a small key space that exercises the
layout's corners: keys with NUL bytes (the history keys' escaping), 0xff, prefixes.

Valid requests are drawn by default; `bad_requests` draws the ones etcd refuses on
their own (empty key, invalid sort option, value or lease given with ignore_*), so
that they stay a small share of the steps.
"""
from __future__ import annotations

from hypothesis import strategies as st

from kvraft.storage.mvcc import (
    Compare,
    CompareResult,
    CompareTarget,
    DeleteRangeRequest,
    PutRequest,
    RangeRequest,
    RequestOp,
    SortOrder,
    SortTarget,
    TxnRequest,
)

KEY_LIST = [b"a", b"a\x00", b"a\x00b", b"ab", b"b", b"\x00", b"\xff", b"c"]
KEYS = st.sampled_from(KEY_LIST)
RANGE_ENDS = st.sampled_from([b"", b"\x00", *KEY_LIST, b"b\x00", b""])
VALUES = st.sampled_from([b"x", b"", b"y", b"xy", b"\x00"])
LEASES = st.sampled_from([0, 1, 2, 0])
RARELY = st.sampled_from([False, False, False, True])
REVISIONS = st.integers(min_value=0, max_value=12)


def puts() -> st.SearchStrategy[PutRequest]:
    def fix(req: PutRequest) -> PutRequest:
        # ignore_value / ignore_lease with a value / lease given is a bad request
        return PutRequest(req.key, b"" if req.ignore_value else req.value,
                          0 if req.ignore_lease else req.lease, req.prev_kv,
                          req.ignore_value, req.ignore_lease)
    return st.builds(PutRequest, key=KEYS, value=VALUES, lease=LEASES, prev_kv=st.booleans(),
                     ignore_value=RARELY, ignore_lease=RARELY).map(fix)


def deletes() -> st.SearchStrategy[DeleteRangeRequest]:
    return st.builds(DeleteRangeRequest, key=KEYS, range_end=RANGE_ENDS,
                     prev_kv=st.booleans())


# (key, range_end): a third of them over every key, so that ranges hold several.
BOUNDS = st.one_of(st.tuples(KEYS, RANGE_ENDS), st.tuples(KEYS, RANGE_ENDS),
                   st.just((b"\x00", b"\x00")))


def ranges(revisions: st.SearchStrategy[int] = REVISIONS) -> st.SearchStrategy[RangeRequest]:
    small = st.integers(min_value=1, max_value=12)
    return st.builds(
        _range, BOUNDS,
        limit=st.integers(min_value=-1, max_value=4), revision=revisions,
        sort_order=st.sampled_from(SortOrder), sort_target=st.sampled_from(SortTarget),
        keys_only=st.booleans(), count_only=RARELY,
        min_mod_revision=st.one_of(st.just(0), st.just(0), small),
        max_mod_revision=st.one_of(st.just(0), st.just(0), small),
        min_create_revision=st.one_of(st.just(0), st.just(0), small),
        max_create_revision=st.one_of(st.just(0), st.just(0), small))


def _range(bounds: tuple[bytes, bytes], **fields: object) -> RangeRequest:
    return RangeRequest(bounds[0], bounds[1], **fields)  # type: ignore[arg-type]


def compares() -> st.SearchStrategy[Compare]:
    revs = st.integers(min_value=0, max_value=12)
    return st.builds(Compare, key=KEYS, target=st.sampled_from(CompareTarget),
                     result=st.sampled_from(CompareResult), value=VALUES,
                     version=st.integers(min_value=0, max_value=3), create_revision=revs,
                     mod_revision=revs, lease=LEASES,
                     range_end=st.sampled_from([b"", b"", b"", b"\x00", b"b", b"c"]))


def txns(leaf_ops: st.SearchStrategy[RequestOp] | None = None
         ) -> st.SearchStrategy[TxnRequest]:
    leaf: st.SearchStrategy[RequestOp] = leaf_ops or st.one_of(puts(), deletes(), ranges())

    def nest(ops: st.SearchStrategy[RequestOp]) -> st.SearchStrategy[RequestOp]:
        return st.builds(TxnRequest, compare=st.lists(compares(), max_size=2),
                         success=st.lists(ops, max_size=3), failure=st.lists(ops, max_size=3))

    ops = st.recursive(leaf, nest, max_leaves=6)
    return st.builds(TxnRequest, compare=st.lists(compares(), max_size=3),
                     success=st.lists(ops, max_size=3), failure=st.lists(ops, max_size=3))


def bad_requests() -> st.SearchStrategy[RequestOp]:
    """Requests etcd refuses whatever the state (one refusal each; a txn carries one)."""
    bad_leaf: st.SearchStrategy[RequestOp] = st.one_of(
        st.builds(PutRequest, key=st.just(b""), value=VALUES),
        st.builds(PutRequest, key=KEYS, value=st.just(b"v"), ignore_value=st.just(True)),
        st.builds(PutRequest, key=KEYS, lease=st.just(1), ignore_lease=st.just(True)),
        st.builds(DeleteRangeRequest, key=st.just(b""), range_end=RANGE_ENDS),
        st.builds(RangeRequest, key=st.just(b""), range_end=RANGE_ENDS),
        st.builds(RangeRequest, key=KEYS, sort_order=st.just(3)),
        st.builds(RangeRequest, key=KEYS, sort_target=st.just(5)),
    )
    empty_compare = st.builds(TxnRequest, compare=st.just([Compare(b"")]))
    in_txn = st.builds(TxnRequest, compare=st.lists(compares(), max_size=1),
                       success=st.lists(bad_leaf, min_size=1, max_size=1))
    return st.one_of(bad_leaf, empty_compare, in_txn)
