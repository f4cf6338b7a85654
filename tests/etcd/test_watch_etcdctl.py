"""etcdctl 3.4's `watch` (Debian's etcd-client, a client nobody here wrote) against a
real 3-node kvraft cluster (issue 12, "Watches"; SPEC §6): its output asserted line by
line while `etcdctl put` / `del` write — a key, a prefix, history from `--rev`,
`--prev-kv`, a watch on a follower, a watch from a compacted revision; and a watcher
that resumes from its last revision + 1 after its member restarts, with no gap and no
duplicate.

etcdctl's simple output for each event: the type, then (with --prev-kv, when the key
existed) the previous key and value, then the key and value — one line each.
"""
from __future__ import annotations

import asyncio
import json
import os
import queue
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from kvraft.proto import etcdserverpb_pb2 as etcdpb
from kvraft.proto import etcdserverpb_pb2_grpc as etcdpb_grpc
from tests.cluster.harness import LocalCluster, retry_unavailable, wait_until

pytestmark = pytest.mark.cluster

ETCDCTL = shutil.which("etcdctl")
ETCDCTL_TIMEOUT_S = 30.0
# How long a watch's expected output line may take to appear.
LINE_TIMEOUT_S = 15.0
RESUME_TIMEOUT_S = 60.0


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("ETCDCTL_") and k.lower() not in ("http_proxy", "https_proxy")}
    env["ETCDCTL_API"] = "3"
    return env


def etcdctl(endpoint: str, *args: str, stdin: str | None = None) -> str:
    """Run one etcdctl command; its stdout, after checking it succeeded."""
    assert ETCDCTL is not None
    r = subprocess.run([ETCDCTL, f"--endpoints={endpoint}", "--dial-timeout=5s",
                        "--command-timeout=10s", *args], capture_output=True, text=True,
                       env=_env(), timeout=ETCDCTL_TIMEOUT_S, input=stdin)
    assert r.returncode == 0, f"etcdctl {args} failed ({r.returncode}): {r.stderr}"
    return r.stdout


def revision_of(endpoint: str) -> int:
    """The store's revision, as etcdctl reads it (`get -w json`'s header)."""
    out = json.loads(etcdctl(endpoint, "get", "-w", "json", "any-key"))
    return int(out["header"]["revision"])


class EtcdctlWatch:
    """`etcdctl watch ...` running in the background; its stdout and stderr lines are
    collected by threads, and `expect` checks the next ones."""

    def __init__(self, endpoint: str, *args: str) -> None:
        assert ETCDCTL is not None
        self.proc = subprocess.Popen(
            [ETCDCTL, f"--endpoints={endpoint}", "--dial-timeout=5s", "watch", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
        self.out: queue.Queue[str] = queue.Queue()
        self.err: queue.Queue[str] = queue.Queue()
        for pipe, q in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=self._pump, args=(pipe, q), daemon=True).start()

    @staticmethod
    def _pump(pipe: Any, q: queue.Queue[str]) -> None:
        for line in pipe:
            q.put(line.rstrip("\n"))

    def expect(self, lines: list[str], timeout_s: float = LINE_TIMEOUT_S) -> None:
        got: list[str] = []
        deadline = time.monotonic() + timeout_s
        for want in lines:
            try:
                line = self.out.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"etcdctl watch printed {got}, then nothing; wanted "
                                     f"{lines}; stderr: {self.stderr_now()}") from None
            got.append(line)
            assert line == want, f"etcdctl watch printed {got}, wanted {lines}"

    def expect_err(self, timeout_s: float = LINE_TIMEOUT_S) -> str:
        return self.err.get(timeout=timeout_s)

    def no_more_output(self, seconds: float) -> None:
        try:
            line = self.out.get(timeout=seconds)
        except queue.Empty:
            return
        raise AssertionError(f"etcdctl watch printed {line!r} unexpectedly")

    def stderr_now(self) -> list[str]:
        lines = []
        while not self.err.empty():
            lines.append(self.err.get_nowait())
        return lines

    def wait_exit(self, timeout_s: float = LINE_TIMEOUT_S) -> int:
        return self.proc.wait(timeout=timeout_s)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()              # by its PID (Popen), never by name
        self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    if ETCDCTL is None:
        pytest.skip("etcdctl is not installed (Debian: etcd-client)")
    with LocalCluster.start(3) as c:
        c.wait_leader()
        yield c


@pytest.fixture
def watches() -> Iterator[list[EtcdctlWatch]]:
    started: list[EtcdctlWatch] = []
    yield started
    for w in started:
        w.close()


def _follower(cluster: LocalCluster) -> int:
    leader = cluster.wait_leader()
    return next(i for i in sorted(cluster.nodes) if i != leader)


def watch(watches: list[EtcdctlWatch], endpoint: str, *args: str) -> EtcdctlWatch:
    w = EtcdctlWatch(endpoint, *args)
    watches.append(w)
    return w


def ready(cluster: LocalCluster, endpoint: str, w: EtcdctlWatch, key: str) -> None:
    """Wait until the watch is established: etcdctl prints nothing on creation, so put
    a marker key it matches until its event shows (then consume its lines)."""
    marker = f"{key}"
    deadline = time.monotonic() + LINE_TIMEOUT_S
    while True:
        etcdctl(endpoint, "put", marker, "ready")
        try:
            line = w.out.get(timeout=1.0)
        except queue.Empty:
            assert time.monotonic() < deadline, f"watch never started: {w.stderr_now()}"
            continue
        assert line == "PUT", line
        w.expect([marker, "ready"])
        return


def test_watch_a_key_prints_each_put_and_delete_in_order(cluster: LocalCluster,
                                                        watches: list[EtcdctlWatch]) -> None:
    leader = cluster.wait_leader()
    ep = cluster.nodes[leader].client_address
    w = watch(watches, ep, "wk")
    ready(cluster, ep, w, "wk")
    etcdctl(ep, "put", "wk", "v1")
    etcdctl(ep, "put", "wk-other", "not-watched")
    etcdctl(ep, "put", "wk", "v2")
    etcdctl(ep, "del", "wk")
    w.expect(["PUT", "wk", "v1", "PUT", "wk", "v2", "DELETE", "wk", ""])
    w.no_more_output(0.5)


def test_watch_prefix_on_a_follower(cluster: LocalCluster,
                                    watches: list[EtcdctlWatch]) -> None:
    """A watch served by a follower sees the writes made through the leader."""
    leader = cluster.wait_leader()
    follower = _follower(cluster)
    lep, fep = cluster.nodes[leader].client_address, cluster.nodes[follower].client_address
    w = watch(watches, fep, "--prefix", "wp/")
    ready(cluster, lep, w, "wp/ready")
    etcdctl(lep, "put", "wp/a", "1")
    etcdctl(lep, "put", "wq", "outside")
    etcdctl(lep, "put", "wp/b", "2")
    etcdctl(lep, "del", "--prefix", "wp/")
    # The deletion of a prefix: one event per key, in key order, one revision.
    w.expect(["PUT", "wp/a", "1", "PUT", "wp/b", "2",
              "DELETE", "wp/a", "", "DELETE", "wp/b", "", "DELETE", "wp/ready", ""])
    w.no_more_output(0.5)


def test_watch_from_a_revision_replays_history_with_prev_kv(cluster: LocalCluster,
                                                           watches: list[EtcdctlWatch]) -> None:
    leader = cluster.wait_leader()
    ep = cluster.nodes[leader].client_address
    etcdctl(ep, "put", "wh", "a")
    first = revision_of(ep)
    etcdctl(ep, "put", "wh", "b")
    etcdctl(ep, "del", "wh")
    etcdctl(ep, "put", "wh", "c")
    w = watch(watches, _endpoint_other_than(cluster, leader), "--rev", str(first),
              "--prev-kv", "wh")
    # History first (the first put had no previous value), then live events.
    w.expect(["PUT", "wh", "a",
              "PUT", "wh", "a", "wh", "b",
              "DELETE", "wh", "b", "wh", "",
              "PUT", "wh", "c"])
    etcdctl(ep, "put", "wh", "d")
    w.expect(["PUT", "wh", "c", "wh", "d"])
    w.no_more_output(0.5)


def _endpoint_other_than(cluster: LocalCluster, node_id: int) -> str:
    return cluster.nodes[next(i for i in sorted(cluster.nodes) if i != node_id)].client_address


def test_watch_from_a_compacted_revision_is_cancelled_with_etcds_message(
        cluster: LocalCluster, watches: list[EtcdctlWatch]) -> None:
    leader = cluster.wait_leader()
    ep = cluster.nodes[leader].client_address
    etcdctl(ep, "put", "wc", "1")
    old = revision_of(ep)
    etcdctl(ep, "put", "wc", "2")
    now = revision_of(ep)
    out = etcdctl(ep, "compact", str(now))
    assert out.strip() == f"compacted revision {now}"
    w = watch(watches, _endpoint_other_than(cluster, leader), "--rev", str(old), "wc")
    line = w.expect_err()
    assert line == ("watch was canceled (etcdserver: mvcc: required revision has been "
                    "compacted)"), line
    assert w.wait_exit() != 0
    # At the compact revision itself the history is still there (etcd's rule).
    w2 = watch(watches, ep, "--rev", str(now), "wc")
    w2.expect(["PUT", "wc", "2"])


# --- resuming after a member restart ---------------------------------------------------
async def _read_events(stub: etcdpb_grpc.WatchStub, key: bytes, range_end: bytes,
                       start: int, got: list[tuple[int, bytes, int]], stop_at: int | None
                       ) -> None:
    """Watch from `start`, appending (revision, key, type) to `got`, until the stream
    fails (the member died) or an event at `stop_at` arrives."""
    requests: asyncio.Queue[etcdpb.WatchRequest] = asyncio.Queue()
    requests.put_nowait(etcdpb.WatchRequest(create_request=etcdpb.WatchCreateRequest(
        key=key, range_end=range_end, start_revision=start)))

    async def gen() -> Any:
        while True:
            yield await requests.get()

    call = stub.Watch(gen())
    try:
        async for resp in call:
            if resp.canceled:
                raise AssertionError(f"watch cancelled: {resp}")
            for e in resp.events:
                got.append((e.kv.mod_revision, e.kv.key, e.type))
            if stop_at is not None and got and got[-1][0] >= stop_at:
                return
    finally:
        call.cancel()


def test_watcher_resuming_after_its_member_restarts_gets_no_gap_or_duplicate(
        cluster: LocalCluster) -> None:
    """A client watches a prefix on a follower while writes go on; the follower is
    killed (SIGKILL) and restarted; the client resumes on it from its last revision + 1.
    What it received equals the history read afterwards: no gap, no duplicate."""
    leader = cluster.wait_leader()
    follower = _follower(cluster)
    lep = cluster.nodes[leader].client_address
    fep = cluster.nodes[follower].client_address
    first = revision_of(lep) + 1
    stop = threading.Event()
    written: list[int] = []

    def writer() -> None:
        channel = grpc.insecure_channel(lep)
        kv = etcdpb_grpc.KVStub(channel)
        i = 0
        while not stop.is_set():
            req = etcdpb.PutRequest(key=f"wr/{i % 7}".encode(), value=str(i).encode())
            resp = retry_unavailable(lambda r=req: kv.Put(r, timeout=5))
            written.append(resp.header.revision)
            i += 1
            time.sleep(0.01)
        channel.close()

    async def scenario() -> list[tuple[int, bytes, int]]:
        got: list[tuple[int, bytes, int]] = []
        channel = grpc.aio.insecure_channel(fep)
        reading = asyncio.create_task(_read_events(
            etcdpb_grpc.WatchStub(channel), b"wr/", b"wr0", first, got, None))
        await asyncio.to_thread(wait_until, lambda: len(got) >= 30, LINE_TIMEOUT_S,
                                "events before the kill")
        await asyncio.to_thread(cluster.kill9, follower)
        with pytest.raises(grpc.aio.AioRpcError):
            await asyncio.wait_for(reading, LINE_TIMEOUT_S)
        await channel.close()
        await asyncio.to_thread(time.sleep, 0.5)          # writes go on without it
        await asyncio.to_thread(cluster.restart, follower)
        resume_from = got[-1][0] + 1
        await asyncio.to_thread(wait_until, lambda: len(written) >= len(got) + 30,
                                LINE_TIMEOUT_S, "writes after the restart")
        stop.set()
        await asyncio.to_thread(t.join, 10)
        last = written[-1]
        channel = grpc.aio.insecure_channel(fep)
        try:
            await asyncio.wait_for(_read_events(
                etcdpb_grpc.WatchStub(channel), b"wr/", b"wr0", resume_from, got, last),
                RESUME_TIMEOUT_S)
        finally:
            await channel.close()
        return got

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    try:
        got = asyncio.run(scenario())
    finally:
        stop.set()
        t.join(10)
    revisions = [r for r, _, _ in got]
    assert revisions == sorted(set(revisions)), "a duplicate or a reordering"
    assert revisions == [r for r in written if r >= first], "a gap or a stray event"
    # And the history as the leader replays it says the same.
    history: list[tuple[int, bytes, int]] = []

    async def replay() -> None:
        channel = grpc.aio.insecure_channel(lep)
        try:
            await asyncio.wait_for(_read_events(etcdpb_grpc.WatchStub(channel), b"wr/",
                                                b"wr0", first, history, written[-1]),
                                   RESUME_TIMEOUT_S)
        finally:
            await channel.close()
    asyncio.run(replay())
    assert history == got
