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
import base64
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


def _compacted_at(endpoint: str, revision: int) -> bool:
    assert ETCDCTL is not None
    r = subprocess.run([ETCDCTL, f"--endpoints={endpoint}", "--dial-timeout=5s",
                        "--command-timeout=10s", "get", "--consistency=s", "--rev",
                        str(revision), "wc"], capture_output=True, text=True, env=_env(),
                       timeout=ETCDCTL_TIMEOUT_S)
    return r.returncode != 0 and "required revision has been compacted" in r.stderr


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
    # The answer comes once the leader applied the compaction; the follower applies
    # it a moment later (a serializable read there at `old` then fails, as etcd's).
    other = _endpoint_other_than(cluster, leader)
    wait_until(lambda: _compacted_at(other, old), LINE_TIMEOUT_S,
               "the follower to apply the compaction")
    w = watch(watches, other, "--rev", str(old), "wc")
    line = w.expect_err()
    assert line == ("watch was canceled (etcdserver: mvcc: required revision has been "
                    "compacted)"), line
    assert w.wait_exit() != 0
    # At the compact revision itself the history is still there (etcd's rule).
    w2 = watch(watches, ep, "--rev", str(now), "wc")
    w2.expect(["PUT", "wc", "2"])


# --- a Python watcher across member failures ------------------------------------------
# (rev, key, type, value) of each event a watch delivered.
Seen = tuple[int, bytes, int, bytes]
END_KEY = b"wr/~end"


async def _read_events(address: str, start: int, got: list[Seen], *,
                       until_key: bytes | None = None) -> None:
    """Watch the prefix wr/ on `address` from `start` (0: now), appending to `got`,
    until the stream fails (the member died) or an event on `until_key` arrives."""
    requests: asyncio.Queue[etcdpb.WatchRequest] = asyncio.Queue()
    requests.put_nowait(etcdpb.WatchRequest(create_request=etcdpb.WatchCreateRequest(
        key=b"wr/", range_end=b"wr0", start_revision=start)))

    async def gen() -> Any:
        while True:
            yield await requests.get()

    channel = grpc.aio.insecure_channel(address)
    call = etcdpb_grpc.WatchStub(channel).Watch(gen())
    try:
        async for resp in call:
            assert not resp.canceled, f"watch cancelled: {resp}"
            for e in resp.events:
                got.append((e.kv.mod_revision, e.kv.key, e.type, e.kv.value))
            if until_key is not None and any(e.kv.key == until_key for e in resp.events):
                return
    finally:
        call.cancel()
        await channel.close()


class Writer:
    """One client writing wr/<i % 7> = i, i = 0, 1, ..., through the leader's kvraft KV
    (the same store as etcd's view), one write at a time, until stopped; then END_KEY."""

    def __init__(self, cluster: LocalCluster, leader: int) -> None:
        self.cluster, self.leader = cluster, leader
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            key, value = f"wr/{self.count % 7}".encode(), str(self.count).encode()
            retry_unavailable(lambda k=key, v=value: self.cluster.put(self.leader, k, v))
            self.count += 1
            time.sleep(0.005)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(20)
        assert not self._thread.is_alive()
        retry_unavailable(lambda: self.cluster.put(self.leader, END_KEY, b"end"))
        return self.count


def check_no_gap_or_duplicate(got: list[Seen], writes: int, replay: list[Seen]) -> None:
    """`got` must be every write since its first, once, in order, then END_KEY — and
    equal the history the leader replays from the same revision."""
    revisions = [r for r, _, _, _ in got]
    assert revisions == sorted(set(revisions)), "a duplicate or a reordering"
    values = [int(v) for _, k, _, v in got if k != END_KEY]
    first = values[0]
    assert values == list(range(first, writes)), "a gap, a duplicate or a reordering"
    assert got[-1][1] == END_KEY
    assert replay == got


def test_watcher_resuming_after_its_member_restarts_gets_no_gap_or_duplicate(
        cluster: LocalCluster) -> None:
    """A client watches a prefix on a follower while writes go on; the follower is
    killed (SIGKILL) and restarted; the client resumes on it from its last revision + 1.
    What it received is every write, once, in order, and equals the history."""
    leader = cluster.wait_leader()
    follower = _follower(cluster)
    fep = cluster.nodes[follower].client_address

    async def scenario() -> tuple[list[Seen], int, list[Seen]]:
        got: list[Seen] = []
        writer = Writer(cluster, leader)
        reading = asyncio.create_task(_read_events(fep, 0, got))
        await asyncio.to_thread(wait_until, lambda: len(got) >= 30, LINE_TIMEOUT_S,
                                "events before the kill")
        await asyncio.to_thread(cluster.kill9, follower)
        with pytest.raises(grpc.aio.AioRpcError):
            await asyncio.wait_for(reading, LINE_TIMEOUT_S)
        before = writer.count
        await asyncio.to_thread(wait_until, lambda: writer.count >= before + 30,
                                LINE_TIMEOUT_S, "writes while the member is down")
        await asyncio.to_thread(cluster.restart, follower)
        resume_from = got[-1][0] + 1
        resuming = asyncio.create_task(_read_events(fep, resume_from, got,
                                                    until_key=END_KEY))
        await asyncio.to_thread(wait_until, lambda: writer.count >= before + 60,
                                LINE_TIMEOUT_S, "writes after the restart")
        writes = await asyncio.to_thread(writer.stop)
        await asyncio.wait_for(resuming, RESUME_TIMEOUT_S)
        replay: list[Seen] = []
        await asyncio.wait_for(_read_events(cluster.nodes[leader].client_address,
                                            got[0][0], replay, until_key=END_KEY),
                               RESUME_TIMEOUT_S)
        return got, writes, replay

    got, writes, replay = asyncio.run(scenario())
    check_no_gap_or_duplicate(got, writes, replay)


def test_watch_on_a_partitioned_member_that_installs_a_snapshot_misses_nothing() -> None:
    """A follower is frozen (SIGSTOP: as cut off as a partition) with a watch open on
    it while the others write past their log's snapshot point; when it comes back it
    installs a snapshot, and the watch catches up from the store: no gap, no dup."""
    if ETCDCTL is None:
        pytest.skip("etcdctl is not installed (Debian: etcd-client)")
    with LocalCluster.start(3, extra_args=["--snapshot-entries", "40",
                                           "--snapshot-keep-entries", "5"]) as c:
        leader = c.wait_leader()
        follower = _follower(c)
        fep = c.nodes[follower].client_address

        def installed() -> float:
            for line in c.metrics_text(follower).splitlines():
                if line.startswith("kvraft_snapshots_installed_total"):
                    return float(line.split()[1])
            return 0.0

        async def scenario() -> tuple[list[Seen], int, list[Seen]]:
            got: list[Seen] = []
            writer = Writer(c, leader)
            reading = asyncio.create_task(_read_events(fep, 0, got, until_key=END_KEY))
            await asyncio.to_thread(wait_until, lambda: len(got) >= 10, LINE_TIMEOUT_S,
                                    "events before the partition")
            installed_before = await asyncio.to_thread(installed)
            await asyncio.to_thread(c.pause, follower)
            before = writer.count
            # More writes than the leader keeps in flight to a silent follower
            # (MAX_INFLIGHT_MSGS, 256 appends), so it must send a snapshot.
            await asyncio.to_thread(wait_until, lambda: writer.count >= before + 400,
                                    RESUME_TIMEOUT_S, "writes while it is frozen")
            await asyncio.to_thread(c.resume, follower)
            await asyncio.to_thread(wait_until, lambda: installed() > installed_before,
                                    RESUME_TIMEOUT_S, "the follower to install a snapshot")
            writes = await asyncio.to_thread(writer.stop)
            await asyncio.wait_for(reading, RESUME_TIMEOUT_S)
            replay: list[Seen] = []
            await asyncio.wait_for(_read_events(c.nodes[leader].client_address, got[0][0],
                                                replay, until_key=END_KEY),
                                   RESUME_TIMEOUT_S)
            return got, writes, replay

        got, writes, replay = asyncio.run(scenario())
        check_no_gap_or_duplicate(got, writes, replay)


def test_etcdctl_watch_moves_to_another_member_without_gap_or_duplicate(
        cluster: LocalCluster, watches: list[EtcdctlWatch]) -> None:
    """etcd's own client resuming: `etcdctl watch --prefix` given both followers as
    endpoints while writes go on; each follower in turn is killed and restarted, so the
    one serving the watch dies at some point and clientv3 resumes on the other from its
    last revision + 1. What it prints (-w json: each response with its events'
    revisions) equals the history the leader replays: no gap, no duplicate."""
    leader = cluster.wait_leader()
    followers = [i for i in sorted(cluster.nodes) if i != leader]
    endpoints = ",".join(cluster.nodes[i].client_address for i in followers)
    w = watch(watches, endpoints, "-w", "json", "--prefix", "wr/")
    wait_until(lambda: _json_watch_started(cluster, leader, w), LINE_TIMEOUT_S,
               "etcdctl's watch to start")
    writer = Writer(cluster, leader)
    for f in followers:
        before = writer.count
        wait_until(lambda b=before: writer.count >= b + 30, LINE_TIMEOUT_S, "writes")
        cluster.kill9(f)
        before = writer.count
        wait_until(lambda b=before: writer.count >= b + 30, LINE_TIMEOUT_S,
                   "writes while a follower is down")
        cluster.restart(f)
    writer.stop()
    got: list[Seen] = []
    deadline = time.monotonic() + RESUME_TIMEOUT_S
    while not got or got[-1][1] != END_KEY:
        try:
            line = w.out.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"etcdctl stopped after {got[-1:]}; stderr: "
                                 f"{w.stderr_now()}\n{cluster.all_log_tails(40)}") from None
        for e in json.loads(line).get("Events") or []:
            kv = e["kv"]
            got.append((int(kv["mod_revision"]), base64.b64decode(kv["key"]),
                        int(e.get("type", 0)), base64.b64decode(kv.get("value", ""))))
    got = [g for g in got if g[1] != b"wr/ready"]
    replay: list[Seen] = []
    asyncio.run(asyncio.wait_for(_read_events(cluster.nodes[leader].client_address,
                                              got[0][0], replay, until_key=END_KEY),
                                 RESUME_TIMEOUT_S))
    revisions = [r for r, _, _, _ in got]
    assert revisions == sorted(set(revisions)), "a duplicate or a reordering"
    assert got == replay, "a gap"


def _json_watch_started(cluster: LocalCluster, leader: int, w: EtcdctlWatch) -> bool:
    """Put wr/ready until etcdctl -w json prints its event."""
    cluster.put(leader, b"wr/ready", b"1")
    try:
        line = w.out.get(timeout=1.0)
    except queue.Empty:
        return False
    events = json.loads(line).get("Events") or []
    assert events and base64.b64decode(events[0]["kv"]["key"]) == b"wr/ready", line
    return True
