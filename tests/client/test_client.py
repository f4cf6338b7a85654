"""kvraft.client against fake members (real gRPC servers on loopback): the API of
SPEC §4, failover between endpoints, and the write-retry rule (never re-send a write
whose outcome is unknown)."""
from __future__ import annotations

import time

import grpc
import pytest

from kvraft.client import (
    Client,
    DeadlineExceeded,
    Delete,
    FailedPrecondition,
    InvalidArgument,
    KvraftError,
    NotFound,
    Put,
    Unavailable,
    parse_endpoint,
    parse_endpoints,
    prefix_end,
    to_bytes,
)
from tests.client.fake_server import FakeCluster

# Deadline of calls whose test is not about deadlines: generous, so a loaded CI machine
# does not turn a slow answer into a failure.
GENEROUS_S = 30.0

# ------------------------------------------------------------------ the API


def test_put_get_delete_round_trip_encodes_str_as_utf8(fake_cluster: FakeCluster) -> None:
    with Client(fake_cluster.endpoints, timeout=GENEROUS_S) as kv:
        kv.put("grüße", "wörld")
        assert fake_cluster.store[b"gr\xc3\xbc\xc3\x9fe"] == "wörld".encode()
        assert kv.get(b"gr\xc3\xbc\xc3\x9fe") == "wörld".encode()
        assert kv.get("grüße", serializable=True) == "wörld".encode()
        assert kv.delete("grüße") is True
        assert kv.delete("grüße") is False
        assert kv.get("grüße") is None


def test_get_of_a_missing_key_is_none_not_empty(fake_cluster: FakeCluster) -> None:
    with Client(fake_cluster.endpoints, timeout=GENEROUS_S) as kv:
        kv.put("empty", b"")
        assert kv.get("empty") == b""
        assert kv.get("missing") is None


def test_scan_follows_server_pages_and_honours_range_and_limit() -> None:
    cluster = FakeCluster(1, scan_page_max=3)
    try:
        with Client(cluster.endpoints, timeout=GENEROUS_S) as kv:
            for i in range(10):
                kv.put(f"k{i}", f"v{i}")
            kv.put("other", "x")
            everything = kv.scan()
            assert [k for k, _ in everything] == [f"k{i}".encode() for i in range(10)] + [
                b"other"]
            assert kv.scan("k2", "k5") == [(b"k2", b"v2"), (b"k3", b"v3"), (b"k4", b"v4")]
            assert kv.scan("k", prefix_end(b"k"), limit=5) == [
                (f"k{i}".encode(), f"v{i}".encode()) for i in range(5)]
            page, more = kv.scan_page("k", prefix_end(b"k"), limit=4)
            assert len(page) == 4 and more is True
            page, more = kv.scan_page("k8", "", limit=4)
            assert page == [(b"k8", b"v8"), (b"k9", b"v9"), (b"other", b"x")] and more is False
            assert cluster.node(1).calls["Scan"] >= 4  # 11 keys in pages of 3
    finally:
        cluster.stop()


def test_cas_with_expected_value_and_expected_absent(fake_cluster: FakeCluster) -> None:
    with Client(fake_cluster.endpoints, timeout=GENEROUS_S) as kv:
        assert kv.cas("lock", None, "a") is True  # absent -> created
        assert kv.cas("lock", None, "b") is False  # exists now
        result = kv.compare_and_swap("lock", "wrong", "c")
        assert (result.succeeded, result.found, result.current) == (False, True, b"a")
        assert kv.cas("lock", "a", "d") is True
        assert kv.get("lock") == b"d"
        missing = kv.compare_and_swap("nokey", "x", "y")
        assert (missing.succeeded, missing.found, missing.current) == (False, False, None)


def test_batch_applies_in_order_and_answers_each_delete(fake_cluster: FakeCluster) -> None:
    with Client(fake_cluster.endpoints, timeout=GENEROUS_S) as kv:
        kv.put("gone", "1")
        deleted = kv.batch([Put("a", "1"), ("put", "b", "2"), Delete("gone"),
                            ("delete", "never"), Put("gone", "again")])
        assert deleted == [True, False]
        assert fake_cluster.store == {b"a": b"1", b"b": b"2", b"gone": b"again"}
        assert [m for _, m in fake_cluster.applied_writes].count("Batch") == 1
        with pytest.raises(TypeError):
            kv.batch([("upsert", "a", "b")])


def test_status_and_member_operations(fake_cluster: FakeCluster) -> None:
    with Client(fake_cluster.endpoints, timeout=GENEROUS_S) as kv:
        status = kv.status()
        assert status.leader_id == 1 and status.term == 2
        assert [m.id for m in status.members] == [1, 2, 3]
        one = kv.status(fake_cluster.endpoints[2])
        assert one.member_id == 3 and one.role == "follower"
        members = kv.member_add(4, "127.0.0.1:9999", "127.0.0.1:9998", learner=True)
        assert any(m.id == 4 and m.learner for m in members)
        promoted = kv.member_add(4, "127.0.0.1:9999", "127.0.0.1:9998")
        assert any(m.id == 4 and not m.learner for m in promoted)
        assert [m.id for m in kv.member_remove(4)] == [1, 2, 3]
        with pytest.raises(FailedPrecondition) as info:
            kv.member_remove(42)
        assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
        kv.transfer_leader(2)
        assert kv.status().leader_id == 2
        with pytest.raises(ValueError):
            kv.member_remove(0)


def test_closed_client_refuses_calls(fake_cluster: FakeCluster) -> None:
    kv = Client(fake_cluster.endpoints, timeout=GENEROUS_S)
    kv.close()
    with pytest.raises(KvraftError, match="closed"):
        kv.get("a")


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("code", "exc_type"),
    [
        ("INVALID_ARGUMENT", InvalidArgument),
        ("FAILED_PRECONDITION", FailedPrecondition),
        ("NOT_FOUND", NotFound),
        ("PERMISSION_DENIED", KvraftError),
    ],
)
def test_status_codes_map_to_typed_errors(fake_cluster: FakeCluster, code: str,
                                          exc_type: type[KvraftError]) -> None:
    fake_cluster.node(1).mode = f"error:{code}"
    with Client(fake_cluster.endpoints, timeout=GENEROUS_S) as kv, \
            pytest.raises(exc_type) as info:
        kv.get("a")
    assert type(info.value) is exc_type
    assert info.value.code == getattr(grpc.StatusCode, code)
    # A definite answer is not failed over: the other members were never asked.
    assert fake_cluster.node(2).calls["Get"] == 0 and fake_cluster.node(3).calls["Get"] == 0


@pytest.mark.parametrize("key", [b"", b"k" * 4097])
def test_invalid_key_is_invalid_argument_and_changes_nothing(fake_cluster: FakeCluster,
                                                             key: bytes) -> None:
    with Client(fake_cluster.endpoints, timeout=GENEROUS_S) as kv:
        with pytest.raises(InvalidArgument):
            kv.put(key, "v")
        with pytest.raises(InvalidArgument):
            kv.cas(key, None, "v")
    assert fake_cluster.store == {} and fake_cluster.applied_writes == []


def test_oversized_value_is_invalid_argument(fake_cluster: FakeCluster) -> None:
    with Client(fake_cluster.endpoints, timeout=GENEROUS_S) as kv, \
            pytest.raises(InvalidArgument):
        kv.put("k", b"v" * ((1 << 20) + 1))
    assert fake_cluster.store == {}


# ------------------------------------------------------------------ failover


def test_reads_and_writes_fail_over_past_a_dead_endpoint(fake_cluster: FakeCluster,
                                                        dead_endpoint: str) -> None:
    """A refused connection means the request never left: even a CAS may move on."""
    with Client([dead_endpoint, *fake_cluster.endpoints], timeout=GENEROUS_S) as kv:
        assert kv.cas("k", None, "v") is True
        assert kv.get("k") == b"v"
        kv.put("k2", "v2")
    assert fake_cluster.applied_writes == [(1, "CompareAndSwap"), (1, "Put")]


def test_a_connection_closed_in_the_handshake_is_not_sent_so_a_cas_fails_over(
        fake_cluster: FakeCluster, closing_endpoint: str) -> None:
    with Client([closing_endpoint, *fake_cluster.endpoints], timeout=GENEROUS_S) as kv:
        assert kv.cas("k", None, "v") is True
    assert fake_cluster.applied_writes == [(1, "CompareAndSwap")]


def test_failover_when_a_member_stops(fake_cluster: FakeCluster) -> None:
    with Client(fake_cluster.endpoints, timeout=GENEROUS_S) as kv:
        kv.put("k", "v")
        fake_cluster.node(1).stop()  # headers still name 1 as the leader
        kv.put("k", "v2")  # the connection to node 1 is refused: not sent, moves on
        assert kv.get("k") == b"v2"
    assert fake_cluster.node(2).calls["Put"] == 1


def test_read_fails_over_on_unavailable(fake_cluster: FakeCluster) -> None:
    fake_cluster.store[b"k"] = b"v"
    fake_cluster.node(1).mode = "unavailable"
    with Client(fake_cluster.endpoints, timeout=GENEROUS_S) as kv:
        assert kv.get("k") == b"v"
    assert fake_cluster.node(1).calls["Get"] == 1 and fake_cluster.node(2).calls["Get"] == 1


def test_read_fails_over_from_a_member_that_hangs(fake_cluster: FakeCluster) -> None:
    """A frozen member gets only its share of the deadline; the read lands elsewhere."""
    fake_cluster.store[b"k"] = b"v"
    fake_cluster.node(1).mode = "hang"
    with Client(fake_cluster.endpoints, timeout=9) as kv:
        assert kv.get("k") == b"v"
    assert fake_cluster.node(2).calls["Get"] == 1


@pytest.mark.parametrize("mode", ["unavailable", "apply-then-unavailable"])
def test_unmarked_unavailable_write_surfaces_unknown_outcome(fake_cluster: FakeCluster,
                                                             mode: str) -> None:
    """An UNAVAILABLE without the retry-safe mark may follow a proposal that will still
    commit; re-sending it could apply a CAS twice, so the client reports it."""
    fake_cluster.node(1).mode = mode
    with Client(fake_cluster.endpoints, timeout=GENEROUS_S) as kv, \
            pytest.raises(Unavailable) as info:
        kv.cas("k", None, "v")
    assert info.value.outcome_unknown is True
    assert "may or may not" in str(info.value)
    assert fake_cluster.node(2).calls["CompareAndSwap"] == 0
    assert fake_cluster.node(3).calls["CompareAndSwap"] == 0
    expected = [(1, "CompareAndSwap")] if mode == "apply-then-unavailable" else []
    assert fake_cluster.applied_writes == expected


@pytest.mark.parametrize("details", [
    # A member's own UNAVAILABLE may quote gRPC's words (about its hop to the leader,
    # say): the request reached it, so the write's outcome is unknown.
    "forwarding to the leader: failed to connect to all addresses; last error: refused",
    "failed to connect to all addresses of the leader",
    "the leader's name: dns resolution failed for node-1",
    "name resolution failure (fake)",
])
def test_a_server_answer_quoting_grpc_connect_errors_is_not_taken_for_not_sent(
        fake_cluster: FakeCluster, details: str) -> None:
    fake_cluster.node(1).mode = f"apply-then-unavailable:{details}"
    with Client(fake_cluster.endpoints, timeout=GENEROUS_S) as kv, \
            pytest.raises(Unavailable) as info:
        kv.cas("k", None, "v")
    assert info.value.outcome_unknown is True
    assert fake_cluster.applied_writes == [(1, "CompareAndSwap")]  # applied once, not re-sent


def test_write_marked_retry_safe_moves_to_the_next_member(fake_cluster: FakeCluster) -> None:
    fake_cluster.node(1).mode = "unavailable-retry-safe"
    with Client(fake_cluster.endpoints, timeout=GENEROUS_S) as kv:
        assert kv.cas("k", None, "v") is True
    assert fake_cluster.applied_writes == [(2, "CompareAndSwap")]


def test_write_past_its_deadline_is_applied_once_and_reported_unknown(
        fake_cluster: FakeCluster) -> None:
    fake_cluster.node(1).mode = "hang"
    with Client(fake_cluster.endpoints, timeout=0.5) as kv, pytest.raises(DeadlineExceeded) as e:
        kv.delete("k")
    assert e.value.outcome_unknown is True
    assert fake_cluster.node(2).calls["Delete"] == 0
    assert fake_cluster.node(3).calls["Delete"] == 0


def test_every_endpoint_dead_is_unavailable_within_the_deadline(dead_endpoint: str) -> None:
    started = time.monotonic()
    with Client([dead_endpoint], timeout=1.0) as kv, pytest.raises(Unavailable) as info:
        kv.put("k", "v")
    assert info.value.outcome_unknown is False
    assert "unreachable" in str(info.value)
    assert time.monotonic() - started < 10  # bounded by the 1 s deadline plus slack


def test_client_prefers_the_leader_named_in_headers(fake_cluster: FakeCluster) -> None:
    fake_cluster.leader_id = 3
    with Client(fake_cluster.endpoints, timeout=GENEROUS_S) as kv:
        kv.put("k", "v1")  # node 1 answers, names 3; one Status maps 3 to its endpoint
        assert kv.leader_id == 3
        kv.put("k", "v2")
        kv.get("k")
        fake_cluster.leader_id = 2  # a new leader, learned from node 3's next header
        kv.get("k")
        kv.get("k")
    assert fake_cluster.node(1).calls["Put"] == 1 and fake_cluster.node(1).calls["Status"] == 1
    assert fake_cluster.node(3).calls["Put"] == 1 and fake_cluster.node(3).calls["Get"] == 2
    assert fake_cluster.node(2).calls["Get"] == 1
    assert fake_cluster.node(3).calls["Status"] == 0  # 2 was already mapped


# ------------------------------------------------------------------ helpers


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("127.0.0.1:2379", True),
        ("localhost:1", True),
        ("[::1]:65535", True),
        (" node-1.example:2379 ", True),
        ("127.0.0.1", False),
        (":2379", False),
        ("127.0.0.1:0", False),
        ("127.0.0.1:65536", False),
        ("127.0.0.1:port", False),
        ("::1:2379", False),
        ("[::1:2379", False),
        ("[zz]:2379", False),
        ("http://host:2379", False),
        ("a b:1", False),
    ],
)
def test_parse_endpoint(text: str, ok: bool) -> None:
    if ok:
        assert parse_endpoint(text) == text.strip()
    else:
        with pytest.raises(ValueError, match="malformed address"):
            parse_endpoint(text)


def test_parse_endpoints_splits_and_dedups() -> None:
    assert parse_endpoints("a:1,b:2,a:1") == ["a:1", "b:2"]
    assert parse_endpoints(["a:1"]) == ["a:1"]
    for bad in ("", "a:1,,b:2", []):
        with pytest.raises(ValueError):
            parse_endpoints(bad)


@pytest.mark.parametrize(
    ("prefix", "end"),
    [(b"a", b"b"), (b"ab", b"ac"), (b"a\xff", b"b"), (b"\xff\xff", b""), (b"", b"")],
)
def test_prefix_end(prefix: bytes, end: bytes) -> None:
    assert prefix_end(prefix) == end


def test_to_bytes_accepts_bytes_like_and_str_only() -> None:
    assert to_bytes(bytearray(b"x")) == b"x"
    assert to_bytes(memoryview(b"y")) == b"y"
    with pytest.raises(TypeError, match="key must be bytes or str"):
        to_bytes(5, "key")  # type: ignore[arg-type]


def test_bad_timeouts_are_rejected() -> None:
    with pytest.raises(ValueError):
        Client("127.0.0.1:1", timeout=0)
    with Client("127.0.0.1:1") as kv, pytest.raises(ValueError):
        kv.get("k", timeout=-1)


def test_an_unresolvable_host_is_not_sent_so_even_a_cas_fails_over(
        fake_cluster: FakeCluster) -> None:
    with Client(["no-such-host.invalid:2379", fake_cluster.endpoints[0]], timeout=GENEROUS_S) as kv:
        assert kv.cas("k", None, "v") is True
    assert fake_cluster.applied_writes == [(1, "CompareAndSwap")]


def test_scan_pages_streams_one_page_per_request() -> None:
    cluster = FakeCluster(1, scan_page_max=4)
    try:
        cluster.store.update({f"k{i:02}".encode(): b"v" for i in range(10)})
        with Client(cluster.endpoints, timeout=GENEROUS_S) as kv:
            pages = kv.scan_pages()
            first, more = next(pages)
            assert [k for k, _ in first] == [b"k00", b"k01", b"k02", b"k03"] and more
            assert cluster.node(1).calls["Scan"] == 1  # the rest is not fetched yet
            rest = list(pages)
            assert [len(p) for p, _ in rest] == [4, 2] and [m for _, m in rest] == [True, False]
            limited = list(kv.scan_pages(limit=6))
            assert [len(p) for p, _ in limited] == [4, 2] and limited[-1][1] is True
            with pytest.raises(ValueError):
                kv.scan_pages(limit=-1)
    finally:
        cluster.stop()


def test_one_client_shared_by_threads_applies_each_write_once(
        fake_cluster: FakeCluster, dead_endpoint: str) -> None:
    import concurrent.futures

    def writer(t: int) -> None:
        for i in range(25):
            kv.put(f"t{t}/k{i}", str(i))

    with Client([dead_endpoint, *fake_cluster.endpoints], timeout=GENEROUS_S) as kv, \
            concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(writer, range(8)))
    assert len(fake_cluster.store) == 200
    assert len(fake_cluster.applied_writes) == 200


def test_a_write_refused_everywhere_before_proposing_stays_definite(
        fake_cluster: FakeCluster) -> None:
    """Every member rejects the write unproposed (retry-safe) until the deadline: the
    client retries while time remains, then reports a definite UNAVAILABLE naming each
    member — it never spends the last moments on an attempt that could only end unknown."""
    for node in fake_cluster.nodes:
        node.mode = "unavailable-retry-safe"
    with Client(fake_cluster.endpoints, timeout=1.5) as kv, pytest.raises(Unavailable) as info:
        kv.put("k", "v")
    assert info.value.outcome_unknown is False
    assert str(info.value).startswith("no member answered in time: ")
    assert all(node.calls["Put"] >= 1 for node in fake_cluster.nodes)
    assert fake_cluster.applied_writes == []
