"""etcd's Txn: compares on value, version, create, mod and lease with =, !=, <, > over a
key or a range; success and failure branches of put, range, delete-range and nested
txns; one revision for all of it; all or nothing; and the rule that a txn may not put
one key twice or put a key it also deletes."""
from __future__ import annotations

import pytest

from kvraft.storage.mvcc import (
    TXN_OPS_MAX,
    CompactedError,
    Compare,
    CompareResult,
    CompareTarget,
    DeleteRangeRequest,
    DuplicateKeyError,
    EmptyKeyError,
    FutureRevisionError,
    KeyNotFoundError,
    MVCCStore,
    PutRequest,
    PutResponse,
    RangeLimits,
    RangeRequest,
    RangeResponse,
    RangeTooLargeError,
    StatusCode,
    TooManyOpsError,
    TxnRequest,
    TxnResponse,
    check_txn,
)
from tests.storage.mvcc.conftest import Opened
from tests.storage.mvcc.helpers import cmp, get, keys, put

EQ, NE, GT, LT = (CompareResult.EQUAL, CompareResult.NOT_EQUAL, CompareResult.GREATER,
                  CompareResult.LESS)
VALUE, VERSION, CREATE, MOD, LEASE = (CompareTarget.VALUE, CompareTarget.VERSION,
                                      CompareTarget.CREATE, CompareTarget.MOD,
                                      CompareTarget.LEASE)


@pytest.fixture
def ab(store: MVCCStore) -> MVCCStore:
    put(store, b"a", b"1", lease=5)   # 2
    put(store, b"b", b"2")            # 3
    put(store, b"b", b"3")            # 4: b version 2, create 3, mod 4
    return store


def succeeded(store: MVCCStore, *compares: Compare) -> bool:
    return store.txn(TxnRequest(list(compares))).succeeded


@pytest.mark.parametrize(("compare", "want"), [
    (cmp(b"a", VALUE, EQ, b"1"), True),
    (cmp(b"a", VALUE, LT, b"2"), True),
    (cmp(b"a", VALUE, GT, b"1"), False),
    (cmp(b"b", VERSION, EQ, 2), True),
    (cmp(b"b", VERSION, GT, 2), False),
    (cmp(b"b", CREATE, EQ, 3), True),
    (cmp(b"b", MOD, EQ, 4), True),
    (cmp(b"b", MOD, NE, 4), False),
    (cmp(b"a", LEASE, EQ, 5), True),
    (cmp(b"b", LEASE, EQ, 0), True),
    # a missing key is all zeros ...
    (cmp(b"zz", VERSION, EQ, 0), True),
    (cmp(b"zz", CREATE, EQ, 0), True),
    (cmp(b"zz", MOD, LT, 1), True),
    # ... except that a value compare on it fails, whatever the operator
    (cmp(b"zz", VALUE, EQ, b""), False),
    (cmp(b"zz", VALUE, NE, b"x"), False),
    # a range: every key in it must satisfy the compare
    (cmp(b"a", MOD, GT, 1, range_end=b"\x00"), True),
    (cmp(b"a", MOD, GT, 2, range_end=b"\x00"), False),
    (cmp(b"a", VERSION, LT, 3, range_end=b"c"), True),
    (cmp(b"c", VERSION, EQ, 0, range_end=b"\x00"), True),   # no key: all zeros
    (cmp(b"c", VALUE, EQ, b"", range_end=b"\x00"), False),
    # a result etcd does not define is true (etcd's compareKV)
    (Compare(b"a", VALUE, 9, value=b"nope"), True),
])
def test_compares(ab: MVCCStore, compare: Compare, want: bool) -> None:
    assert succeeded(ab, compare) is want
    assert ab.revision == 4  # compares alone write nothing


def test_all_compares_must_hold(ab: MVCCStore) -> None:
    assert succeeded(ab, cmp(b"a", VALUE, EQ, b"1"), cmp(b"b", VERSION, EQ, 2))
    assert not succeeded(ab, cmp(b"a", VALUE, EQ, b"1"), cmp(b"b", VERSION, EQ, 1))
    assert succeeded(ab)  # no compare: success


def test_the_branch_taken_runs_in_order_at_one_revision(ab: MVCCStore) -> None:
    req = TxnRequest(
        [cmp(b"a", VALUE, EQ, b"1")],
        success=[PutRequest(b"c", b"new"), RangeRequest(b"a", b"\x00"),
                 DeleteRangeRequest(b"a", prev_kv=True), PutRequest(b"d", b"x")],
        failure=[PutRequest(b"never")])
    resp = ab.txn(req)
    assert resp.succeeded and resp.revision == 5 == ab.revision
    put_c, read, deleted, put_d = resp.responses
    assert put_c == PutResponse(5)
    assert isinstance(read, RangeResponse)
    assert [kv.key for kv in read.kvs] == [b"a", b"b", b"c"] and read.revision == 5
    assert deleted.deleted == 1 and [kv.key for kv in deleted.prev_kvs] == [b"a"]  # type: ignore[union-attr]
    assert put_d == PutResponse(5)
    assert keys(ab) == [b"b", b"c", b"d"]
    events = list(ab.events(b"\x00", b"\x00", 5))
    assert [(e.type.name, e.kv.key) for e in events] == [
        ("PUT", b"c"), ("DELETE", b"a"), ("PUT", b"d")]  # sub-revisions 0, 1, 2
    assert get(ab, b"never") is None


def test_a_failed_compare_runs_the_failure_branch(ab: MVCCStore) -> None:
    resp = ab.txn(TxnRequest([cmp(b"a", VALUE, EQ, b"x")], [PutRequest(b"s")],
                             [PutRequest(b"f")]))
    assert not resp.succeeded and keys(ab) == [b"a", b"b", b"f"]


def test_a_txn_that_changes_nothing_keeps_the_revision(ab: MVCCStore) -> None:
    resp = ab.txn(TxnRequest([], [RangeRequest(b"a"), DeleteRangeRequest(b"zz")]))
    assert resp.revision == 4 == ab.revision
    assert resp.responses[1].revision == 4  # type: ignore[union-attr]


def test_a_range_in_a_txn_sees_earlier_writes_and_past_revisions(ab: MVCCStore) -> None:
    resp = ab.txn(TxnRequest([], [RangeRequest(b"b"), PutRequest(b"b", b"4"),
                                  RangeRequest(b"b"), RangeRequest(b"b", revision=3)]))
    before, _, after, past = resp.responses
    assert isinstance(before, RangeResponse) and before.kvs[0].value == b"3"
    assert before.revision == 4
    assert isinstance(after, RangeResponse) and after.kvs[0].value == b"4"
    assert after.revision == 5
    assert isinstance(past, RangeResponse) and past.kvs[0].value == b"2"


def test_nested_compares_read_the_state_before_the_txn(ab: MVCCStore) -> None:
    """etcd evaluates every compare, nested ones too, before the txn writes anything."""
    inner = TxnRequest([cmp(b"b", VALUE, EQ, b"3")], [PutRequest(b"saw-old")],
                       [PutRequest(b"saw-new")])
    resp = ab.txn(TxnRequest([], [PutRequest(b"b", b"changed"), inner]))
    assert keys(ab) == [b"a", b"b", b"saw-old"]
    nested = resp.responses[1]
    assert isinstance(nested, TxnResponse) and nested.succeeded
    assert nested.responses == [PutResponse(5)]


def test_nested_txns_take_their_own_branches(ab: MVCCStore) -> None:
    inner_ok = TxnRequest([cmp(b"a", VERSION, EQ, 1)], [PutRequest(b"x1")], [PutRequest(b"y1")])
    inner_no = TxnRequest([cmp(b"a", VERSION, EQ, 9)], [PutRequest(b"x2")], [PutRequest(b"y2")])
    outer = TxnRequest([cmp(b"b", VERSION, EQ, 9)], [PutRequest(b"never")], [inner_ok, inner_no])
    resp = ab.txn(outer)
    assert not resp.succeeded
    assert keys(ab) == [b"a", b"b", b"x1", b"y2"]
    assert ab.revision == 5


@pytest.mark.parametrize("bad", [
    PutRequest(b"missing", ignore_value=True),
    RangeRequest(b"a", revision=5),   # future as of the txn's start, even after a write
    RangeRequest(b"a", revision=1),   # compacted (compact revision 2)
])
def test_a_refused_op_leaves_the_whole_txn_unwritten(ab: MVCCStore,
                                                     bad: PutRequest | RangeRequest) -> None:
    ab.compact(2)
    with pytest.raises((KeyNotFoundError, FutureRevisionError, CompactedError)):
        ab.txn(TxnRequest([], [PutRequest(b"first"), TxnRequest([], [bad])]))
    assert ab.revision == 4 and get(ab, b"first") is None
    assert list(ab.events(b"\x00", b"\x00", 3))[-1].kv.mod_revision == 4


DUPLICATE = [
    [PutRequest(b"a"), PutRequest(b"a")],
    [PutRequest(b"b"), DeleteRangeRequest(b"a", b"c")],
    [DeleteRangeRequest(b"a", b"c"), PutRequest(b"b")],
    [DeleteRangeRequest(b"a", b"\x00"), PutRequest(b"zzz")],   # "\0": every key >= a
    [PutRequest(b"a"), TxnRequest([], [PutRequest(b"a")])],
    [TxnRequest([], [PutRequest(b"a")]), TxnRequest([], [], [PutRequest(b"a")])],
    [TxnRequest([], [PutRequest(b"a")]), DeleteRangeRequest(b"a")],  # a later sibling
    [TxnRequest([], [DeleteRangeRequest(b"a")]), PutRequest(b"a")],
    [TxnRequest([], [PutRequest(b"a"), PutRequest(b"a")])],          # inside a branch
]
ALLOWED = [
    [DeleteRangeRequest(b"a", b"c"), DeleteRangeRequest(b"b", b"d")],
    [PutRequest(b"a"), PutRequest(b"b"), DeleteRangeRequest(b"c")],
    [TxnRequest([], [PutRequest(b"a")], [PutRequest(b"a")])],        # exclusive branches
    [TxnRequest([], [PutRequest(b"a")], [DeleteRangeRequest(b"a")])],
    [PutRequest(b"a"), RangeRequest(b"a")],
    [PutRequest(b"b"), DeleteRangeRequest(b"a", b"b")],              # end is exclusive
]


@pytest.mark.parametrize("ops", DUPLICATE)
def test_a_txn_may_not_put_a_key_twice_or_put_what_it_deletes(ab: MVCCStore,
                                                               ops: list[object]) -> None:
    for branch in ("success", "failure"):
        with pytest.raises(DuplicateKeyError) as e:
            ab.txn(TxnRequest([], **{branch: ops}))  # type: ignore[arg-type]
        assert str(e.value) == "etcdserver: duplicate key given in txn request"
        assert e.value.code is StatusCode.INVALID_ARGUMENT
    assert ab.revision == 4


@pytest.mark.parametrize("ops", ALLOWED)
def test_what_the_duplicate_key_rule_allows(ab: MVCCStore, ops: list[object]) -> None:
    ab.txn(TxnRequest([], ops))  # type: ignore[arg-type]


def test_an_empty_compare_key_is_refused(ab: MVCCStore) -> None:
    with pytest.raises(EmptyKeyError):
        ab.txn(TxnRequest([Compare(b"")]))
    with pytest.raises(EmptyKeyError):
        ab.txn(TxnRequest([], [TxnRequest([], [], [DeleteRangeRequest(b"")])]))


def test_too_many_ops_only_where_the_server_checks_before_proposing() -> None:
    ops = [PutRequest(b"k%d" % i) for i in range(TXN_OPS_MAX + 1)]
    with pytest.raises(TooManyOpsError) as e:
        check_txn(TxnRequest([], ops), ops_max=TXN_OPS_MAX)
    assert str(e.value) == "etcdserver: too many operations in txn request"
    check_txn(TxnRequest([], ops))  # the apply's check: no member-configured bound
    # a nested txn gets what its parent leaves: 2 - 1 = 1 op
    nested = TxnRequest([], [TxnRequest([], [PutRequest(b"x"), PutRequest(b"y")])])
    with pytest.raises(TooManyOpsError):
        check_txn(nested, ops_max=2)
    check_txn(nested, ops_max=3)


def test_a_range_over_the_bound_inside_a_txn_is_truncated_not_refused(opened: Opened) -> None:
    """RangeLimits is one member's configuration: if it could refuse a txn, members
    configured apart would disagree on whether the txn applied. The txn applies; the
    range says it was cut (the server then answers RESOURCE_EXHAUSTED)."""
    for i in range(10):
        put(opened.store, b"k%d" % i)
    small = MVCCStore(opened.db, range_limits=RangeLimits(entries_max=3), sync=False)
    resp = small.txn(TxnRequest([], [PutRequest(b"written"), RangeRequest(b"k", b"l")]))
    read = resp.responses[1]
    assert isinstance(read, RangeResponse) and read.truncated
    assert read.count == 10 and len(read.kvs) <= 4
    assert get(small, b"written") is not None and small.revision == 12
    with pytest.raises(RangeTooLargeError):   # outside an apply it is refused
        small.range(RangeRequest(b"k", b"l"))
