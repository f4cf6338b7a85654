"""etcd's own command-line client, which nobody here wrote, against a 3-node kvraft
cluster through etcd's `KV` service (SPEC §6): Debian's etcdctl 3.4 puts, gets (with
revisions in -w json, prefixes, limits, past revisions, keys only, sorting), deletes,
runs txns read from stdin and compacts — and what it sees is what kvraft's own API sees
(one store, two views). Its output is asserted, not only its exit code.

The tests share one cluster and use keys of their own; the compaction test runs last
(it makes past revisions unreadable for every key)."""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from kvraft.proto import kvraft_pb2 as pb
from tests.cluster.harness import LocalCluster, retry_unavailable, wait_until

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(shutil.which("etcdctl") is None,
                       reason="etcdctl is not installed (Debian's etcd-client, .ci/run)"),
]

ETCDCTL_TIMEOUT_S = 30.0
PROXY_VARIABLES = ("http_proxy", "https_proxy", "grpc_proxy", "all_proxy")
WRITABLE_TIMEOUT_S = 30.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster.start(3) as c:
        c.wait_leader()
        yield c


class Etcdctl:
    """etcdctl with the cluster's client addresses as --endpoints."""

    def __init__(self, endpoints: Sequence[str]) -> None:
        self.endpoints = ",".join(endpoints)
        # The caller's ETCDCTL_* settings must not leak in (a user's endpoints, certs),
        # nor a proxy that gRPC would dial loopback through.
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_")
                    and k.lower() not in PROXY_VARIABLES}
        self.env["ETCDCTL_API"] = "3"

    def run(self, *args: str, stdin: str | None = None, check: bool = True
            ) -> subprocess.CompletedProcess[str]:
        argv = ["etcdctl", f"--endpoints={self.endpoints}", "--dial-timeout=5s",
                "--command-timeout=10s", *args]
        proc = subprocess.run(argv, input=stdin, capture_output=True, text=True,
                              env=self.env, timeout=ETCDCTL_TIMEOUT_S)
        if check and proc.returncode != 0:
            raise AssertionError(f"{argv} exited {proc.returncode}: {proc.stderr}")
        return proc

    def out(self, *args: str, stdin: str | None = None) -> str:
        return self.run(*args, stdin=stdin).stdout

    def json(self, *args: str, stdin: str | None = None) -> Any:
        return json.loads(self.out("-w", "json", *args, stdin=stdin))


def etcdctl_at(cluster: LocalCluster, *node_ids: int) -> Etcdctl:
    return Etcdctl([cluster.nodes[i].client_address for i in node_ids or cluster.nodes])


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


def kvs_of(resp: dict[str, Any]) -> list[tuple[bytes, bytes]]:
    return [(unb64(kv["key"]), unb64(kv.get("value", ""))) for kv in resp.get("kvs", [])]


@pytest.fixture(scope="module")
def ctl(cluster: LocalCluster) -> Etcdctl:
    """etcdctl on every member, once the cluster takes etcd writes (its cluster version
    is reached after the first election)."""
    e = etcdctl_at(cluster)

    last_error = [""]

    def writable() -> bool:
        proc = e.run("put", "/probe/writable", "1", check=False)
        last_error[0] = proc.stderr
        return proc.returncode == 0

    wait_until(writable, WRITABLE_TIMEOUT_S, "the cluster to take etcd writes",
               on_timeout=lambda: f"etcdctl said: {last_error[0]}")
    return e


# --- put and get ------------------------------------------------------------------------------

def test_put_and_get_report_etcds_revisions(cluster: LocalCluster, ctl: Etcdctl) -> None:
    assert ctl.out("put", "/rev/a", "one").strip() == "OK"
    first = ctl.json("get", "/rev/a")
    rev1 = first["header"]["revision"]
    (kv,) = first["kvs"]
    assert unb64(kv["key"]) == b"/rev/a" and unb64(kv["value"]) == b"one"
    assert kv["create_revision"] == kv["mod_revision"] == rev1
    assert kv["version"] == 1
    assert first["count"] == 1
    assert first["header"]["cluster_id"] != 0 and first["header"]["raft_term"] >= 1

    put = ctl.json("put", "/rev/a", "two")
    assert put["header"]["revision"] == rev1 + 1
    second = ctl.json("get", "/rev/a")
    (kv,) = second["kvs"]
    assert (kv["create_revision"], kv["mod_revision"], kv["version"]) == (rev1, rev1 + 1, 2)
    assert unb64(kv["value"]) == b"two"

    # put --prev-kv: OK, then the key and the value it replaced.
    assert ctl.out("put", "/rev/b", "first") == "OK\n"
    assert ctl.out("put", "/rev/b", "second", "--prev-kv") == "OK\n/rev/b\nfirst\n"
    # The simple format: the key on one line, its value on the next.
    assert ctl.out("get", "/rev/a") == "/rev/a\ntwo\n"
    # A key never written: no kvs, count 0, and nothing printed.
    missing = ctl.json("get", "/rev/nothing")
    assert "kvs" not in missing and missing.get("count", 0) == 0
    assert ctl.out("get", "/rev/nothing") == ""


def test_every_member_answers_with_its_own_id_and_the_same_revision(
        cluster: LocalCluster, ctl: Etcdctl) -> None:
    ctl.out("put", "/members/k", "v")
    seen = {}
    for node_id in cluster.nodes:
        resp = etcdctl_at(cluster, node_id).json("get", "/members/k")
        assert resp["header"]["member_id"] == node_id
        seen[node_id] = (resp["header"]["cluster_id"], resp["kvs"][0]["mod_revision"])
    assert len(set(seen.values())) == 1, seen


def test_get_prefix_limit_keys_only_and_sort(ctl: Etcdctl) -> None:
    for name, value in [("b", "2"), ("a", "3"), ("c", "1")]:
        ctl.out("put", f"/pfx/{name}", value)
    ctl.out("put", "/pfx-not-in-prefix", "x")

    whole = ctl.json("get", "/pfx/", "--prefix")
    assert kvs_of(whole) == [(b"/pfx/a", b"3"), (b"/pfx/b", b"2"), (b"/pfx/c", b"1")]
    assert whole["count"] == 3

    limited = ctl.json("get", "/pfx/", "--prefix", "--limit=2")
    assert kvs_of(limited) == [(b"/pfx/a", b"3"), (b"/pfx/b", b"2")]
    assert limited["more"] is True and limited["count"] == 3

    serializable = ctl.json("get", "/pfx/", "--prefix", "--consistency=s")
    assert len(serializable.get("kvs", [])) <= 3  # a member's own state: maybe behind
    assert ctl.out("get", "/pfx/", "--prefix", "--print-value-only").split() == ["3", "2", "1"]

    keys = ctl.json("get", "/pfx/", "--prefix", "--keys-only")
    assert [unb64(kv["key"]) for kv in keys["kvs"]] == [b"/pfx/a", b"/pfx/b", b"/pfx/c"]
    assert all("value" not in kv for kv in keys["kvs"])
    assert ctl.out("get", "/pfx/", "--prefix", "--keys-only").split() == [
        "/pfx/a", "/pfx/b", "/pfx/c"]

    by_value = ctl.json("get", "/pfx/", "--prefix", "--sort-by=VALUE", "--order=ASCEND")
    assert [v for _, v in kvs_of(by_value)] == [b"1", b"2", b"3"]
    by_key_desc = ctl.json("get", "/pfx/", "--prefix", "--sort-by=KEY", "--order=DESCEND")
    assert [k for k, _ in kvs_of(by_key_desc)] == [b"/pfx/c", b"/pfx/b", b"/pfx/a"]
    by_create = ctl.json("get", "/pfx/", "--prefix", "--sort-by=CREATE", "--order=DESCEND")
    assert [k for k, _ in kvs_of(by_create)] == [b"/pfx/c", b"/pfx/a", b"/pfx/b"]
    # From a key to the end of the keyspace.
    from_key = ctl.json("get", "/pfx/b", "--from-key", "--keys-only")
    after = [unb64(kv["key"]) for kv in from_key["kvs"]]
    assert after[:2] == [b"/pfx/b", b"/pfx/c"] and b"/pfx/a" not in after
    assert b"/pfx-not-in-prefix" not in after  # "-" sorts before "/"
    assert after == sorted(after)


def test_get_at_a_past_revision_sees_the_value_then(ctl: Etcdctl) -> None:
    r1 = ctl.json("put", "/past/k", "v1")["header"]["revision"]
    r2 = ctl.json("put", "/past/k", "v2")["header"]["revision"]
    ctl.out("del", "/past/k")
    assert kvs_of(ctl.json("get", "/past/k", f"--rev={r1}")) == [(b"/past/k", b"v1")]
    at2 = ctl.json("get", "/past/k", f"--rev={r2}")
    assert kvs_of(at2) == [(b"/past/k", b"v2")]
    assert at2["kvs"][0]["version"] == 2 and at2["kvs"][0]["create_revision"] == r1
    assert "kvs" not in ctl.json("get", "/past/k")  # deleted now
    future = ctl.run("get", "/past/k", "--rev=1000000000", check=False)
    assert future.returncode != 0
    assert "etcdserver: mvcc: required revision is a future revision" in future.stderr


# --- delete -----------------------------------------------------------------------------------

def test_del_one_key_a_prefix_and_with_prev_kv(ctl: Etcdctl) -> None:
    for k in ("a", "b", "c"):
        ctl.out("put", f"/del/{k}", f"val-{k}")
    assert ctl.out("del", "/del/a").strip() == "1"
    assert ctl.out("del", "/del/a").strip() == "0"
    resp = ctl.json("del", "/del/", "--prefix", "--prev-kv")
    assert resp["deleted"] == 2
    assert kvs_of({"kvs": resp["prev_kvs"]}) == [(b"/del/b", b"val-b"), (b"/del/c", b"val-c")]
    assert "kvs" not in ctl.json("get", "/del/", "--prefix")
    # The simple format with --prev-kv: the count, then each deleted key and value.
    ctl.out("put", "/del/d", "last")
    assert ctl.out("del", "/del/d", "--prev-kv") == "1\n/del/d\nlast\n"


def test_an_empty_key_is_refused_with_etcds_message(ctl: Etcdctl) -> None:
    proc = ctl.run("put", "", "v", check=False)
    assert proc.returncode != 0
    assert "etcdserver: key is not provided" in proc.stderr


# --- txn on stdin -----------------------------------------------------------------------------

def txn_stdin(compares: Sequence[str], success: Sequence[str], failure: Sequence[str]) -> str:
    """etcdctl's non-interactive txn format: compares, success ops and failure ops, each
    block ended by an empty line."""
    return "".join("\n".join(block) + "\n\n" for block in (compares, success, failure))


def txn_ops(resp: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """A txn's responses as (kind, body): etcdctl's json shows the oneof as
    {"Response": {"ResponsePut": {...}}}."""
    out = []
    for r in resp.get("responses", []):
        ((kind, body),) = r["Response"].items()
        out.append((kind, body))
    return out


def test_txn_takes_the_success_branch_when_every_compare_holds(ctl: Etcdctl) -> None:
    created = ctl.json("put", "/txn/k", "v1")["header"]["revision"]
    ctl.out("put", "/txn/k", "v2")
    modded = created + 1
    stdin = txn_stdin(
        [
            'value("/txn/k") = "v2"',
            'version("/txn/k") = "2"',
            f'mod("/txn/k") = "{modded}"',
            f'create("/txn/k") = "{created}"',
            'value("/txn/k") != "v1"',
            'version("/txn/k") > "1"',
            f'mod("/txn/k") < "{modded + 1}"',
        ],
        ['put /txn/k "v3"', "get /txn/k", 'put /txn/other "x"'],
        ['put /txn/k "failed"'],
    )
    resp = ctl.json("txn", stdin=stdin)
    assert resp["succeeded"] is True
    ops = txn_ops(resp)
    assert [kind for kind, _ in ops] == ["ResponsePut", "ResponseRange", "ResponsePut"]
    txn_rev = resp["header"]["revision"]
    assert txn_rev == modded + 1
    assert ops[0][1]["header"]["revision"] == txn_rev
    # The get inside the txn sees the txn's own put, at the txn's revision.
    assert kvs_of(ops[1][1]) == [(b"/txn/k", b"v3")]
    assert ops[1][1]["kvs"][0]["mod_revision"] == txn_rev
    # Both puts of the txn carry one revision.
    got = ctl.json("get", "/txn/", "--prefix")
    assert {unb64(kv["key"]): kv["mod_revision"] for kv in got["kvs"]} == {
        b"/txn/k": txn_rev, b"/txn/other": txn_rev}


def test_txn_takes_the_failure_branch_when_a_compare_fails(ctl: Etcdctl) -> None:
    ctl.out("put", "/txnf/k", "v1")
    stdin = txn_stdin(['value("/txnf/k") = "v1"', 'version("/txnf/k") = "7"'],
                      ['put /txnf/k "success"'],
                      ['put /txnf/k "failure"', "del /txnf/gone", "get /txnf/k"])
    # The simple format: the branch, then each op's output.
    out = ctl.out("txn", stdin=stdin)
    assert out.splitlines() == ["FAILURE", "", "OK", "", "0", "", "/txnf/k", "failure"]
    assert kvs_of(ctl.json("get", "/txnf/k")) == [(b"/txnf/k", b"failure")]


def test_txn_compares_on_a_missing_key(ctl: Etcdctl) -> None:
    # etcd's rule: a missing key has version, create and mod revision 0; a value
    # compare on it is false whatever the operator.
    stdin = txn_stdin(['version("/txnm/absent") = "0"', 'create("/txnm/absent") = "0"'],
                      ['put /txnm/absent "created"'], [])
    assert ctl.json("txn", stdin=stdin)["succeeded"] is True
    stdin = txn_stdin(['value("/txnm/never") != "x"'], ['put /txnm/never "y"'], [])
    resp = ctl.json("txn", stdin=stdin)
    assert "succeeded" not in resp and "responses" not in resp  # false and empty: omitted
    assert "kvs" not in ctl.json("get", "/txnm/never")


def test_a_read_only_txn_answers_at_the_current_revision(ctl: Etcdctl) -> None:
    rev = ctl.json("put", "/txnr/k", "read-me")["header"]["revision"]
    stdin = txn_stdin(['value("/txnr/k") = "read-me"'], ["get /txnr/k"], ["get /txnr/none"])
    resp = ctl.json("txn", stdin=stdin)
    assert resp["succeeded"] is True
    ((kind, body),) = txn_ops(resp)
    assert kind == "ResponseRange"
    assert kvs_of(body) == [(b"/txnr/k", b"read-me")]
    assert resp["header"]["revision"] >= rev
    # Reading changed nothing: the next write is the next revision after the txn's.
    assert ctl.json("put", "/txnr/after", "x")["header"]["revision"] == \
        resp["header"]["revision"] + 1


def test_a_txn_putting_one_key_twice_is_refused(ctl: Etcdctl) -> None:
    stdin = txn_stdin([], ['put /txnd/k "1"', 'put /txnd/k "2"'], [])
    proc = ctl.run("txn", stdin=stdin, check=False)
    assert proc.returncode != 0
    assert "etcdserver: duplicate key given in txn request" in proc.stderr


# --- one store, two views ---------------------------------------------------------------------

def test_a_kvraft_put_is_seen_by_etcdctl(cluster: LocalCluster, ctl: Etcdctl) -> None:
    kv = cluster.kv(cluster.wait_leader())
    resp = retry_unavailable(lambda: kv.Put(pb.PutRequest(key=b"/views/from-kvraft",
                                                          value=b"hello"), timeout=5))
    got = ctl.json("get", "/views/from-kvraft")
    assert kvs_of(got) == [(b"/views/from-kvraft", b"hello")]
    # kvraft's header revision is the store's, the write's own or later.
    assert got["kvs"][0]["mod_revision"] <= resp.header.revision
    assert got["header"]["revision"] >= resp.header.revision


def test_an_etcdctl_put_is_seen_by_kvraft(cluster: LocalCluster, ctl: Etcdctl) -> None:
    rev = ctl.json("put", "/views/from-etcd", "world")["header"]["revision"]
    for node_id in cluster.nodes:
        assert cluster.get(node_id, b"/views/from-etcd") == b"world"
        resp = cluster.kv(node_id).Get(pb.GetRequest(key=b"/views/from-etcd"), timeout=5)
        assert resp.header.revision >= rev


# --- compaction (last: it affects every key's history) ------------------------------------------

def test_compaction_makes_older_revisions_fail_with_etcds_error(ctl: Etcdctl) -> None:
    old = ctl.json("put", "/compact/k", "old")["header"]["revision"]
    new = ctl.json("put", "/compact/k", "new")["header"]["revision"]
    assert ctl.out("compaction", str(new)).strip() == f"compacted revision {new}"
    below = ctl.run("get", "/compact/k", f"--rev={old}", check=False)
    assert below.returncode != 0
    assert "etcdserver: mvcc: required revision has been compacted" in below.stderr
    # At the compact revision itself the key is still readable.
    assert kvs_of(ctl.json("get", "/compact/k", f"--rev={new}")) == [(b"/compact/k", b"new")]
    again = ctl.run("compaction", str(old), check=False)
    assert again.returncode != 0
    assert "etcdserver: mvcc: required revision has been compacted" in again.stderr
