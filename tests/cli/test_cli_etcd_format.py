"""etcdctl's txn format as `kvraft txn` reads it, and etcdctl's output as the etcd
commands print it (kvraft/cli_etcd.py): pure functions, no cluster. The outputs
asserted here are the ones etcdctl 3.4 printed against a kvraft cluster
(tests/cli/test_cli_etcd.py compares the two side by side)."""
from __future__ import annotations

import pytest

from kvraft.cli_etcd import (
    TxnSyntaxError,
    format_event,
    format_txn,
    parse_compare,
    parse_op,
    parse_txn,
    unquote,
)
from kvraft.client import Compare, DeleteOp, KeyValue, PutOp, RangeOp, TxnResult
from kvraft.client_etcd import DeleteResult, Event, PutResult, RangeResult, txn_request
from kvraft.proto import etcdserverpb_pb2 as etcdpb


@pytest.mark.parametrize(("line", "expected"), [
    ('value("k") = "v"', Compare(b"k", "value", "=", b"v")),
    ('val("k")!="v w"', Compare(b"k", "value", "!=", b"v w")),
    ('mod("k") > "3"', Compare(b"k", "mod", ">", 3)),
    ('m("k") < "10"', Compare(b"k", "mod", "<", 10)),
    ('create("k") = "0"', Compare(b"k", "create", "=", 0)),
    ('c("k") = "0"', Compare(b"k", "create", "=", 0)),
    ('version("k") = "2"', Compare(b"k", "version", "=", 2)),
    ('ver("k") != "2"', Compare(b"k", "version", "!=", 2)),
    ('lease("k") = "694d7d1f1aa6f204"', Compare(b"k", "lease", "=", 0x694d7d1f1aa6f204)),
    ('value("a \\"q\\"") = "x\\ny\\x00"', Compare(b'a "q"', "value", "=", b"x\ny\x00")),
])
def test_a_compare_line_parses_as_etcdctl_reads_it(line: str, expected: Compare) -> None:
    assert parse_compare(line) == expected


@pytest.mark.parametrize("line", [
    'value("k") == "v"', 'value(k) = "v"', 'size("k") = "1"', 'mod("k") > "x"',
    'value("k") = v', 'value("k" = "v"', 'value("k") = "bad \\q escape"',
])
def test_a_malformed_compare_line_is_refused(line: str) -> None:
    with pytest.raises(TxnSyntaxError):
        parse_compare(line)


@pytest.mark.parametrize(("line", "expected"), [
    ("put k v", PutOp(b"k", b"v")),
    ('put "a key" "a value"', PutOp(b"a key", b"a value")),
    ("put --lease=1f k v", PutOp(b"k", b"v", lease=0x1F)),
    ("put --prev-kv k v", PutOp(b"k", b"v", prev_kv=True)),
    ("get k", RangeOp(b"k")),
    ("get k z", RangeOp(b"k", b"z")),
    ("get --prefix --rev=5 --limit=2 --keys-only k",
     RangeOp(b"k", prefix=True, revision=5, limit=2, keys_only=True)),
    ("get --count-only k", RangeOp(b"k", count_only=True)),
    ("del k", DeleteOp(b"k")),
    ("del --prefix --prev-kv k", DeleteOp(b"k", prefix=True, prev_kv=True)),
    ("del a b", DeleteOp(b"a", b"b")),
])
def test_a_request_line_parses_as_etcdctl_reads_it(line: str, expected: object) -> None:
    assert parse_op(line) == expected


@pytest.mark.parametrize("line", [
    "frob k", "put k", "put a b c", "get", "del a b c", "get --bogus k", "put --lease=zz k v",
    "get --rev=x k",
])
def test_a_malformed_request_line_is_refused(line: str) -> None:
    with pytest.raises(TxnSyntaxError):
        parse_op(line)


def test_a_txn_is_compares_then_success_then_failure_separated_by_blank_lines() -> None:
    prompts: list[str] = []
    text = ['mod("k") > "1"\n', 'value("k") = "v"\n', "\n", "put k w\n", "get k\n", "\n",
            "del k\n", "\n", "put ignored after the third blank line\n"]
    parsed = parse_txn(text, prompts.append)
    assert parsed.compare == [Compare(b"k", "mod", ">", 1), Compare(b"k", "value", "=", b"v")]
    assert parsed.success == [PutOp(b"k", b"w"), RangeOp(b"k")]
    assert parsed.failure == [DeleteOp(b"k")]
    assert prompts == ["compares:", "success requests (get, put, del):",
                       "failure requests (get, put, del):"]
    assert parse_txn(["\n", "\n"]).compare == []       # an empty txn, input ends early


def test_unquote_follows_gos_escapes() -> None:
    assert unquote('a\\tb\\\\c\\"d\\x41') == b'a\tb\\c"dA'
    with pytest.raises(TxnSyntaxError):
        unquote("\\x4")


def _kv(key: bytes, value: bytes, rev: int = 5) -> KeyValue:
    return KeyValue(key=key, value=value, create_revision=2, mod_revision=rev, version=1,
                    lease=0)


def test_events_print_as_etcdctl_watch_prints_them() -> None:
    assert format_event(Event("PUT", _kv(b"k", b"v"))) == b"PUT\nk\nv\n"
    assert format_event(Event("DELETE", _kv(b"k", b""), _kv(b"k", b"old"))) == \
        b"DELETE\nk\nold\nk\n\n"


def test_a_txn_result_prints_as_etcdctl_txn_prints_it() -> None:
    ops = [PutOp(b"k", b"v"), RangeOp(b"k"), DeleteOp(b"x"), RangeOp(b"k", count_only=True),
           RangeOp(b"k", keys_only=True)]
    read = RangeResult(kvs=(_kv(b"k", b"v"),), count=1, more=False, revision=5)
    result = TxnResult(succeeded=True, revision=5, responses=(
        PutResult(5), read, DeleteResult(5, 0), read, read))
    assert format_txn(result, ops) == b"SUCCESS\n\nOK\n\nk\nv\n\n0\n\n1\n\nk\n"
    failed = TxnResult(succeeded=False, revision=5, responses=())
    assert format_txn(failed, []) == b"FAILURE\n"


def test_compare_builders_make_etcds_messages() -> None:
    request = txn_request(
        [Compare.value("k") == "v", Compare.mod("k", prefix=True) < 7,
         Compare.create("k") == 0, Compare.lease("k") != 9, Compare.version("k") > 1],
        [PutOp("k", "w", lease=3)], [RangeOp("p/", prefix=True)])
    value, mod, create, lease, version = request.compare
    assert (value.target, value.result, value.value) == (etcdpb.Compare.VALUE,
                                                         etcdpb.Compare.EQUAL, b"v")
    assert (mod.target, mod.result, mod.mod_revision, mod.range_end) == (
        etcdpb.Compare.MOD, etcdpb.Compare.LESS, 7, b"l")
    assert (create.target, create.create_revision) == (etcdpb.Compare.CREATE, 0)
    assert (lease.result, lease.lease) == (etcdpb.Compare.NOT_EQUAL, 9)
    assert (version.result, version.version) == (etcdpb.Compare.GREATER, 1)
    assert request.success[0].request_put.lease == 3
    assert request.failure[0].request_range.range_end == b"p0"
    with pytest.raises(TypeError):
        Compare.mod("k") == "not a number"  # noqa: B015
    with pytest.raises(ValueError):
        RangeOp("k", "z", prefix=True).to_pb()
