"""kvraft.client's etcd API (SPEC §6) against a real 3-node cluster: revisions, txns, a
watch that resumes on another member after a kill -9 with no gap and no duplicate,
leases kept alive every TTL/3, etcd's lock recipe with a fencing token, and elections.

Every test that does not kill or pause a member runs twice (the `backend` fixture):
against kvraft and against a real 3-member etcd (Debian's etcd-server, 3.4), so that
the client is judged by etcd itself and kvraft's answers by etcd's.

The cluster's tick is the harness's (50 ms: an election timeout of 0.5-1 s), so leases
of 5 s are above the server's minimum TTL and renewed (every TTL/3) even on a loaded
machine."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from kvraft.client import (
    Client,
    Compare,
    DeadlineExceeded,
    DeleteOp,
    FailedPrecondition,
    KvraftError,
    Put,
    PutOp,
    RangeOp,
    TxnOp,
)
from kvraft.client_etcd import PUT, Event, Watch
from kvraft.proto import etcdserverpb_pb2 as etcdpb
from tests.client.real_etcd import real_etcd
from tests.cluster.harness import LocalCluster, wait_until

pytestmark = pytest.mark.cluster

LEASE_TTL_S = 5
# A lease whose holder stopped renewing is gone within its TTL plus this bound (the
# leader's expiry check, a revoke through Raft, a slow shared CI machine).
EXPIRY_SLACK_S = 10.0
WAIT_S = 20.0
# A real etcd of three members, as kvraft's: the client's failover order is exercised.
ETCD_MEMBERS = 3


@dataclass(frozen=True)
class Backend:
    """A cluster serving etcd's API that the client tests run against."""

    name: str                  # "kvraft" or "etcd"
    all_endpoints: tuple[str, ...]

    def endpoints(self) -> list[str]:
        return list(self.all_endpoints)


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster.start(3) as c:
        c.wait_leader()
        yield c


@pytest.fixture(scope="module", params=["kvraft", "etcd"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "kvraft":
        cluster: LocalCluster = request.getfixturevalue("cluster")
        yield Backend("kvraft", tuple(cluster.endpoints().split(",")))
        return
    with real_etcd(ETCD_MEMBERS) as endpoints:
        yield Backend("etcd", endpoints)


@pytest.fixture
def kv(backend: Backend) -> Iterator[Client]:
    with Client(backend.endpoints(), timeout=10) as client:
        yield client


def in_order(cluster: LocalCluster, ids: list[int]) -> list[str]:
    """The members' client addresses in this order (the client tries them in it)."""
    return [cluster.nodes[i].client_address for i in ids]


def collect(w: Watch, n: int, timeout_s: float = WAIT_S) -> list[Event]:
    """The first `n` events of `w` (fewer if they do not come within `timeout_s`)."""
    got: list[Event] = []
    failed: list[BaseException] = []
    done = threading.Event()

    def run() -> None:
        try:
            for event in w:
                got.append(event)
                if len(got) >= n:
                    break
        except BaseException as e:  # raised again in the test's thread
            failed.append(e)
        finally:
            done.set()

    threading.Thread(target=run, daemon=True).start()
    done.wait(timeout_s)
    w.close()
    if failed:
        raise failed[0]
    return got


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["result"] = fn()
        except BaseException as e:  # reported by the test
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


# --------------------------------------------------------------------------- KV


def test_get_at_a_revision_reads_the_value_the_key_had_then(kv: Client) -> None:
    kv.put("rev/k", "one")
    first = kv.range("rev/k").kvs[0]
    kv.put("rev/k", "two")
    now = kv.range("rev/k")
    assert now.kvs[0].version == first.version + 1
    assert now.kvs[0].create_revision == first.create_revision
    assert kv.get("rev/k", revision=first.mod_revision) == b"one"
    assert kv.get("rev/k", revision=now.kvs[0].mod_revision) == b"two"
    assert kv.get("rev/k") == b"two"
    assert kv.get("rev/k", revision=first.mod_revision - 1) is None  # before it existed
    assert kv.get("rev/k", True, revision=first.mod_revision) == b"one"  # serializable


def test_txn_runs_the_branch_its_compares_choose(kv: Client) -> None:
    kv.put("txn/a", "1")
    mod = kv.range("txn/a").kvs[0].mod_revision
    won = kv.txn([Compare.value("txn/a") == "1", Compare.mod("txn/a") == mod,
                  Compare.create("txn/absent") == 0],
                 [PutOp("txn/a", "2", prev_kv=True), RangeOp("txn/a"), Put("txn/b", "x")],
                 [RangeOp("txn/a")])
    assert won.succeeded
    put_result, read, batch_put = won.responses
    assert put_result.prev_kv is not None and put_result.prev_kv.value == b"1"
    assert read.kvs[0].value == b"2" and read.kvs[0].mod_revision == won.revision
    assert batch_put.revision == won.revision          # one txn, one revision
    assert kv.get("txn/b") == b"x"

    lost = kv.txn([Compare.value("txn/a") == "1"], [PutOp("txn/a", "never")],
                  [RangeOp("txn/", prefix=True), DeleteOp("txn/b", prev_kv=True)])
    assert not lost.succeeded
    listing, deleted = lost.responses
    assert [kv_.key for kv_ in listing.kvs] == [b"txn/a", b"txn/b"]
    assert deleted.deleted == 1 and deleted.prev_kvs[0].value == b"x"
    assert kv.get("txn/a") == b"2" and kv.get("txn/b") is None


def test_txn_compares_over_a_prefix_nested_txns_and_etcd_messages(kv: Client) -> None:
    kv.put("nest/x", "a")
    kv.put("nest/y", "a")
    outer = kv.txn([Compare.value("nest/", prefix=True) == "a",
                    Compare.version("nest/", prefix=True) > 0],
                   [TxnOp([Compare.value("nest/x") != "a"], [PutOp("nest/x", "no")],
                          [PutOp("nest/x", "inner-failure")])], [])
    assert outer.succeeded
    inner = outer.responses[0]
    assert not inner.succeeded and kv.get("nest/x") == b"inner-failure"
    # One txn, one revision: etcd leaves a nested txn's header empty, kvraft fills it.
    assert inner.revision == outer.revision == inner.responses[0].revision > 0
    raw = kv.txn([etcdpb.Compare(key=b"nest/y", target=etcdpb.Compare.VALUE,
                                 result=etcdpb.Compare.EQUAL, value=b"a")],
                 [etcdpb.RequestOp(request_put=etcdpb.PutRequest(key=b"nest/y", value=b"b"))],
                 [])
    assert raw.succeeded and kv.get("nest/y") == b"b"
    with pytest.raises(TypeError):
        kv.txn(["not a compare"], [], [])  # type: ignore[list-item]


# --------------------------------------------------------------------------- watch


def test_a_watch_from_a_past_revision_replays_the_history_with_prev_kv(kv: Client) -> None:
    kv.put("w1/a", "1")
    start = kv.range("w1/a").kvs[0].mod_revision
    kv.put("w1/a", "2")
    kv.put("w1/b", "3")
    kv.delete("w1/a")
    kv.put("w1x", "not under the prefix w1/")
    events = collect(kv.watch("w1/", prefix=True, start_revision=start, prev_kv=True), 4)
    assert [(e.type, e.kv.key, e.kv.value) for e in events] == [
        ("PUT", b"w1/a", b"1"), ("PUT", b"w1/a", b"2"), ("PUT", b"w1/b", b"3"),
        ("DELETE", b"w1/a", b"")]
    assert [e.prev_kv.value if e.prev_kv else None for e in events] == [None, b"1", None, b"2"]
    deleted = events[3].kv     # etcd's tombstone: the key and the deletion's revision only
    assert (deleted.create_revision, deleted.version, deleted.lease) == (0, 0, 0)
    revisions = [e.revision for e in events]
    assert revisions == sorted(revisions) and len(set(revisions)) == 4
    assert revisions[0] == start


def test_a_watch_from_now_sees_only_later_changes(backend: Backend) -> None:
    # "Now" is the revision the watch's member has applied: put and watch through one
    # member, which applied the put before acknowledging it.
    with Client(backend.endpoints()[:1], timeout=10) as kv:
        watch_from_now(kv)


def watch_from_now(kv: Client) -> None:
    kv.put("w2", "before")
    w = kv.watch("w2")
    got: list[Event] = []
    t, _ = in_thread(lambda: got.extend(e for _, e in zip(range(2), w, strict=False)))
    wait_until(lambda: w.endpoint is not None, WAIT_S, "the watch is created")
    kv.put("w2", "after")
    kv.delete("w2")
    t.join(WAIT_S)
    w.close()
    assert [(e.type, e.kv.value) for e in got] == [("PUT", b"after"), ("DELETE", b"")]


def test_a_watch_resumes_on_another_member_after_kill9_with_no_gap_or_duplicate(
        cluster: LocalCluster) -> None:
    """The watch's member is killed -9 while puts go on through the others: the watch
    reopens on the next endpoint from the revision after its last event, and delivers
    every put exactly once, in order. A lease kept alive across the kill survives it."""
    leader = cluster.wait_leader()
    victim = next(i for i in cluster.nodes if i != leader)
    others = [i for i in cluster.nodes if i != victim]
    order = [victim, *others]   # the watch starts on the victim
    with Client(in_order(cluster, order), timeout=10) as watcher, \
            Client(cluster.endpoints(others), timeout=10) as writer:
        start = writer.range("resume/").revision + 1
        w = watcher.watch("resume/", prefix=True, start_revision=start)
        lease = watcher.lease(LEASE_TTL_S)
        writer.put("resume/leased", "v", lease=lease.id)
        values = [f"v{i:03d}" for i in range(60)]
        got: list[Event] = []

        def follow() -> None:
            for event in w:
                got.append(event)
                if len(got) == len(values) + 1:   # the leased key's put, then the values
                    return

        t, out = in_thread(follow)
        wait_until(lambda: w.endpoint == cluster.nodes[victim].client_address, WAIT_S,
                   "the watch is served by the victim")
        for i, value in enumerate(values):
            if i == 20:
                wait_until(lambda: len(got) >= 10, WAIT_S, "events before the kill")
                cluster.kill9(victim)
            writer.put(f"resume/{i % 7}", value)
        wait_until(lambda: len(got) >= len(values) + 1, WAIT_S,
                   "every put delivered after the failover")
        w.close()
        t.join(WAIT_S)
        assert "error" not in out, out
        puts = [e for e in got if e.kv.key != b"resume/leased"]
        assert [e.kv.value.decode() for e in puts] == values      # no gap, no duplicate
        revisions = [e.revision for e in got]
        assert revisions == sorted(set(revisions))               # in order, each once
        assert w.endpoint != cluster.nodes[victim].client_address
        # The lease lived through the kill (renewed on the survivors every TTL/3).
        time.sleep(LEASE_TTL_S * 1.5)
        assert lease.alive and writer.get("resume/leased") == b"v"
        lease.revoke()
        assert writer.get("resume/leased") is None
    cluster.restart(victim)
    cluster.wait_leader()


def test_a_watch_leaves_a_paused_member_for_another_with_no_gap_or_duplicate(
        cluster: LocalCluster) -> None:
    """SIGSTOP of the watch's member keeps its TCP stream open but silent: the watchdog
    asks for progress, hears nothing, drops the stream and resumes on the next member."""
    leader = cluster.wait_leader()
    victim = next(i for i in cluster.nodes if i != leader)
    others = [i for i in cluster.nodes if i != victim]
    with Client(in_order(cluster, [victim, *others]), timeout=10) as watcher, \
            Client(cluster.endpoints(others), timeout=10) as writer:
        start = writer.range("paused/").revision + 1
        w = watcher.watch("paused/", prefix=True, start_revision=start)
        values = [f"p{i:02d}" for i in range(20)]
        got: list[Event] = []

        def follow() -> None:
            for event in w:
                got.append(event)
                if len(got) == len(values):
                    return

        t, out = in_thread(follow)
        wait_until(lambda: w.endpoint == cluster.nodes[victim].client_address, WAIT_S,
                   "the watch is served by the victim")
        try:
            for i, value in enumerate(values):
                if i == 5:
                    wait_until(lambda: len(got) == 5, WAIT_S, "events before the pause")
                    cluster.pause(victim)
                writer.put(f"paused/{i % 3}", value)
            wait_until(lambda: len(got) == len(values), WAIT_S * 2,
                       "every put delivered after leaving the paused member")
        finally:
            cluster.resume(victim)
        w.close()
        t.join(WAIT_S)
        assert "error" not in out, out
        assert [e.kv.value.decode() for e in got] == values
        assert w.stalls >= 1 and w.endpoint != cluster.nodes[victim].client_address


# --------------------------------------------------------------------------- leases


def test_a_kept_alive_lease_outlives_its_ttl_and_revoke_deletes_its_keys(kv: Client) -> None:
    with kv.lease(LEASE_TTL_S) as lease:
        kv.put("lease/kept", "v", lease=lease.id)
        assert kv.range("lease/kept").kvs[0].lease == lease.id
        time.sleep(LEASE_TTL_S * 2.5)
        assert lease.alive
        assert kv.get("lease/kept") == b"v"
        info = lease.time_to_live(keys=True)
        assert info is not None and info.keys == (b"lease/kept",)
        assert 0 < info.ttl <= info.granted_ttl
        assert lease.id in kv.lease_list()
    assert kv.get("lease/kept") is None
    assert kv.lease_time_to_live(lease.id) is None
    assert not lease.alive


def test_a_lease_kept_alive_through_a_paused_member_lives_on(cluster: LocalCluster) -> None:
    """The member the keep-alives go to is stopped (SIGSTOP) for twice the TTL: each
    renewal attempt gets only a share of the renewal period, so the next member renews
    the lease in time."""
    leader = cluster.wait_leader()
    victim = next(i for i in cluster.nodes if i != leader)
    others = [i for i in cluster.nodes if i != victim]
    with Client(in_order(cluster, [victim, *others]), timeout=10) as kv, \
            kv.lease(LEASE_TTL_S) as lease:
        kv.put("lease/paused", "v", lease=lease.id)
        cluster.pause(victim)
        try:
            time.sleep(LEASE_TTL_S * 2)
            assert lease.alive
        finally:
            cluster.resume(victim)
        with Client(cluster.endpoints(others), timeout=10) as reader:
            assert reader.get("lease/paused") == b"v"


def test_an_abandoned_lease_expires_and_takes_its_keys(kv: Client) -> None:
    lease = kv.lease(LEASE_TTL_S, keep_alive=False)
    kv.put("lease/abandoned", "v", lease=lease.id)
    granted_at = time.monotonic()
    wait_until(lambda: kv.get("lease/abandoned") is None, LEASE_TTL_S + EXPIRY_SLACK_S,
               "the abandoned lease's key is deleted")
    assert time.monotonic() - granted_at >= LEASE_TTL_S - 1  # not before its TTL
    assert kv.lease_keep_alive_once(lease.id) == 0            # gone: TTL 0


# --------------------------------------------------------------------------- locks


def test_a_lock_excludes_a_second_holder_until_released(backend: Backend) -> None:
    with Client(backend.endpoints(), timeout=10) as a, \
            Client(backend.endpoints(), timeout=10) as b:
        first = a.lock("locks/one", ttl=LEASE_TTL_S)
        assert first.key.startswith(b"locks/one/")
        assert first.key == b"locks/one/%x" % first.lease.id
        t, out = in_thread(lambda: b.lock("locks/one", ttl=LEASE_TTL_S))
        t.join(2.0)
        assert t.is_alive(), "the second lock() returned while the first held the lock"
        first.release()
        t.join(WAIT_S)
        second = out["result"]
        assert second.held and second.fencing_token > first.fencing_token
        assert a.get(first.key) is None
        second.release()
        assert b.range("locks/one/", prefix=True).kvs == ()


def test_a_lock_wait_times_out_and_leaves_no_key(kv: Client) -> None:
    with kv.lock("locks/two", ttl=LEASE_TTL_S) as held:
        began = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            kv.lock("locks/two", ttl=LEASE_TTL_S, timeout=1.0)
        assert 1.0 <= time.monotonic() - began < 10
        assert [k.key for k in kv.range("locks/two/", prefix=True).kvs] == [held.key]


def test_a_paused_holder_loses_the_lock_and_its_fenced_write_is_refused(
        kv: Client) -> None:
    """A lock is not mutual exclusion under pauses (docs/client.md#locks): the holder
    stops renewing (as a paused process would), the next waiter takes the lock after
    the TTL, and only a write fenced by a Txn compare on the holder's token tells the
    stale holder's write from the new one's."""
    stale = kv.lock("locks/fenced", ttl=LEASE_TTL_S)
    stale.lease.stop_keep_alive()      # "paused": no more renewals
    began = time.monotonic()
    fresh = kv.lock("locks/fenced", ttl=LEASE_TTL_S, timeout=LEASE_TTL_S + EXPIRY_SLACK_S)
    assert time.monotonic() - began >= LEASE_TTL_S - 1
    assert fresh.fencing_token > stale.fencing_token
    assert not stale.held              # it can only know after the fact

    def fenced_write(holder: Any, value: str) -> bool:
        return kv.txn([Compare.create(holder.key) == holder.fencing_token],
                      [PutOp("locks/fenced-resource", value)], []).succeeded

    assert fenced_write(fresh, "from the new holder")
    assert not fenced_write(stale, "from the stale holder")   # refused
    assert kv.get("locks/fenced-resource") == b"from the new holder"
    fresh.release()


# --------------------------------------------------------------------------- elections


def test_an_election_campaign_proclaim_observe_and_resign(backend: Backend) -> None:
    with Client(backend.endpoints(), timeout=10) as a, \
            Client(backend.endpoints(), timeout=10) as b, \
            Client(backend.endpoints(), timeout=10) as watcher:
        ea = a.election("elect/one", ttl=LEASE_TTL_S)
        eb = b.election("elect/one", ttl=LEASE_TTL_S)
        assert ea.leader() is None
        leader = ea.campaign("a")
        assert leader.value == b"a" and ea.leader() == leader
        seen: list[bytes] = []

        def observe() -> None:
            for leader_kv in watcher.election("elect/one").observe():
                seen.append(leader_kv.value)
                if leader_kv.value == b"b":   # the last leader this test makes
                    return

        tobs, _ = in_thread(observe)
        wait_until(lambda: seen == [b"a"], WAIT_S, "the observer sees the leader")
        tb, out = in_thread(lambda: eb.campaign("b"))
        time.sleep(1.0)
        assert tb.is_alive(), "b was elected while a led"
        with pytest.raises(FailedPrecondition):
            eb.proclaim("b-not-leader")
        ea.proclaim("a2")
        wait_until(lambda: seen == [b"a", b"a2"], WAIT_S, "the observer sees a2")
        ea.resign()
        tb.join(WAIT_S)
        assert out["result"].value == b"b"
        tobs.join(WAIT_S)
        assert seen == [b"a", b"a2", b"b"]
        leader_b = eb.leader()
        assert leader_b is not None and leader_b.key == out["result"].key
        eb.resign()
        assert eb.leader() is None


# --------------------------------------------------------------------------- edges
# etcd's answers where a store could reasonably answer otherwise: run against etcd,
# these assertions are etcd's behaviour; run against kvraft, they hold kvraft to it.


def test_writes_that_change_nothing_take_no_revision(kv: Client) -> None:
    kv.put("edge/k", "v")
    now = kv.range("edge/k").revision
    assert kv.delete("edge/absent") is False
    missed = kv.txn([Compare.value("edge/k") == "other"], [PutOp("edge/k", "no")], [])
    assert not missed.succeeded and missed.revision == now and missed.responses == ()
    reads = kv.txn([], [RangeOp("edge/k"), RangeOp("edge/absent")], [])
    assert reads.succeeded and reads.revision == now
    assert kv.range("edge/absent").revision == now      # a miss reads at the store's revision
    deleted = kv.txn([], [DeleteOp("edge/absent")], [])
    assert deleted.revision == now and deleted.responses[0].deleted == 0


def test_a_range_with_a_limit_counts_every_key_and_says_more(kv: Client) -> None:
    for name in ("a", "b", "c"):
        kv.put(f"limit/{name}", name)
    page = kv.range("limit/", prefix=True, limit=2)
    assert [k.key for k in page.kvs] == [b"limit/a", b"limit/b"]
    assert page.count == 3 and page.more
    whole = kv.range("limit/", prefix=True, limit=3)
    assert whole.count == 3 and not whole.more
    counted = kv.range("limit/", prefix=True, count_only=True)
    assert counted.count == 3 and counted.kvs == ()
    keys = kv.range("limit/", prefix=True, keys_only=True)
    assert [k.value for k in keys.kvs] == [b"", b"", b""]


def test_etcds_errors_for_bad_requests(kv: Client) -> None:
    def refused(call: Callable[[], Any]) -> tuple[grpc.StatusCode | None, str]:
        with pytest.raises(KvraftError) as raised:
            call()
        return raised.value.code, raised.value.message

    future = kv.range("edge/").revision + 1000
    assert refused(lambda: kv.range("edge/k", revision=future)) == (
        grpc.StatusCode.OUT_OF_RANGE, "etcdserver: mvcc: required revision is a future revision")
    assert refused(lambda: kv.compact(future)) == (
        grpc.StatusCode.OUT_OF_RANGE, "etcdserver: mvcc: required revision is a future revision")
    assert refused(lambda: kv.txn([], [PutOp("edge/dup", "1"), PutOp("edge/dup", "2")], [])) == (
        grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: duplicate key given in txn request")
    assert refused(lambda: kv.put("", "v", lease=0x7AB)) == (
        grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: key is not provided")
    assert refused(lambda: kv.put("edge/leased", "v", lease=0x7AB)) == (
        grpc.StatusCode.NOT_FOUND, "etcdserver: requested lease not found")
    assert refused(lambda: kv.lease_revoke(0x7AB)) == (
        grpc.StatusCode.NOT_FOUND, "etcdserver: requested lease not found")
    assert kv.lease_time_to_live(0x7AB) is None                 # TTL -1, not an error
    assert kv.lease_keep_alive_once(0x7AB) == 0
    assert kv.get("edge/leased") is None and kv.get("edge/dup") is None


def test_a_lease_granted_with_an_id_keeps_it_and_a_second_grant_is_refused(
        kv: Client) -> None:
    lease_id, ttl = kv.lease_grant(LEASE_TTL_S, lease_id=0x5EED)
    try:
        assert (lease_id, ttl) == (0x5EED, LEASE_TTL_S)
        with pytest.raises(KvraftError) as again:
            kv.lease_grant(LEASE_TTL_S, lease_id=0x5EED)
        assert (again.value.code, again.value.message) == (
            grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: lease already exists")
        kv.put("edge/l1", "a", lease=lease_id)
        kv.put("edge/l2", "b", lease=lease_id)
        kv.delete("edge/l1")
        info = kv.lease_time_to_live(lease_id, keys=True)
        assert info is not None and info.keys == (b"edge/l2",) and info.granted_ttl == ttl
        assert kv.range("edge/l2").kvs[0].lease == lease_id
    finally:
        kv.lease_revoke(lease_id)
    assert kv.get("edge/l2") is None


# --------------------------------------------------------------------------- compaction
# Last: compaction removes the history the tests above read.


def test_reads_and_watches_below_the_compacted_revision_fail(kv: Client) -> None:
    kv.put("compact/k", "old")
    old = kv.range("compact/k").kvs[0].mod_revision
    kv.put("compact/k", "new")
    now = kv.range("compact/k").revision
    kv.compact(now, physical=True)
    with pytest.raises(KvraftError) as read:
        kv.get("compact/k", revision=old)
    assert read.value.code == grpc.StatusCode.OUT_OF_RANGE
    assert "required revision has been compacted" in read.value.message
    w = kv.watch("compact/k", start_revision=old)
    with pytest.raises(KvraftError) as watched:
        next(iter(w))
    assert watched.value.code == grpc.StatusCode.OUT_OF_RANGE
    assert getattr(watched.value, "compact_revision", 0) == now   # etcd's: the compaction's
    events = collect(kv.watch("compact/k", start_revision=now), 1)
    assert [(e.type, e.kv.value) for e in events] == [(PUT, b"new")]
