"""A reusable harness for clusters of real `kvraft serve` processes on loopback.

    with LocalCluster.start(3) as cluster:      # or the `cluster3` fixture
        leader = cluster.wait_leader()
        cluster.kv(leader).Put(pb.PutRequest(key=b"k", value=b"v"), timeout=5)
        cluster.kill9(leader)                    # SIGKILL by PID
        cluster.wait_leader(exclude={leader})
        cluster.restart(leader)

Every node gets free loopback ports (bound to port 0 by the harness), its own data
directory under one temp dir, and a log file (`cluster.log_tail(id)`). `close()` —
called by the context manager even when a test fails — resumes paused nodes, kills
every process it started (by PID) and removes the temp dir.

Nodes are `kvraft serve` processes of kvraft.procs, the process harness `make run` and
the chaos tests share: they get the caller's environment without its KVRAFT_* variables,
plus the cluster's `env`. Set KVRAFT_TEST_TICK_S to change the tick interval of test
nodes.
"""
from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc

from kvraft import procs
from kvraft.procs import ProcessError, ServeProcess
from kvraft.proto import kvraft_pb2 as pb
from kvraft.proto import kvraft_pb2_grpc as pb_grpc

T = TypeVar("T")
StubT = TypeVar("StubT")

START_TIMEOUT_S = 30.0
LEADER_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
RPC_TIMEOUT_S = 5.0
POLL_INTERVAL_S = 0.05


class ClusterError(AssertionError):
    """A harness wait timed out or a node misbehaved; the message carries log tails."""


# Node ports come from below the kernel's ephemeral range. A port found free by binding
# port 0 lies inside that range, where the kernel may hand it out again before the node
# binds it — as the source port of any outgoing connection on this shared machine, or to
# another process's bind(0) — and the node then fails with "address already in use".
# Below the range only another explicit choice can take it.
FREE_PORT_LOW = 20000
_ports_handed_out: set[int] = set()   # this process's picks, never handed out twice
_port_rng = random.Random()           # not the global one: tests seed that


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_port() -> int:
    """A loopback port nothing is bound to now, not handed out before by this process."""
    high = _ephemeral_low() - 1
    if high - FREE_PORT_LOW >= 1000:
        if len(_ports_handed_out) > (high - FREE_PORT_LOW) // 2:
            _ports_handed_out.clear()  # long runs: forget the oldest picks wholesale
        for _ in range(100):
            port = _port_rng.randint(FREE_PORT_LOW, high)
            if port in _ports_handed_out:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
            _ports_handed_out.add(port)
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:  # no room below the range
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition: Callable[[], T], timeout_s: float, what: str,
               on_timeout: Callable[[], str] | None = None) -> T:
    """Poll `condition` until it returns something truthy; raise after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    last_error: BaseException | None = None
    while True:
        try:
            value = condition()
            if value:
                return value
        except (grpc.RpcError, OSError, ValueError) as e:
            last_error = e
        if time.monotonic() >= deadline:
            detail = on_timeout() if on_timeout else ""
            raise ClusterError(f"timed out after {timeout_s}s waiting for {what}"
                               f" (last error: {last_error})\n{detail}")
        time.sleep(POLL_INTERVAL_S)


class NodeProcess(ServeProcess):
    """One node: its identity, addresses and data dir, and (when running) its process
    (`proc`, `pid`, `running()`, `paused`, `starts` of kvraft.procs.ServeProcess)."""

    def __init__(self, id: int, data_dir: Path, client_address: str, peer_address: str,
                 metrics_address: str, log_path: Path,
                 extra_args: Iterable[str] = ()) -> None:
        super().__init__(f"node {id}", log_path)
        self.id = id
        self.data_dir = data_dir  # a caller may point it elsewhere before the first launch
        self.client_address = client_address
        self.peer_address = peer_address
        self.metrics_address = metrics_address
        self.extra_args = list(extra_args)
        # The node's one client channel, opened on first use and closed when the harness
        # stops the node. _channel_lock orders a stub's creation against close(): grpc
        # crashes the process (SIGSEGV in _get_registered_call_handle) when a load thread
        # builds a stub on a channel another thread is closing.
        self.channel: grpc.Channel | None = None
        self._channel_lock = threading.Lock()
        # Set (before the first call) for a client port that serves TLS (tests/tls).
        self.credentials: grpc.ChannelCredentials | None = None

    @property
    def stopped_by_harness(self) -> bool:
        """ServeProcess.stop_requested under the harness's old name; a test that expects
        an exit may set it, so check_no_crash does not report that exit."""
        return self.stop_requested

    @stopped_by_harness.setter
    def stopped_by_harness(self, value: bool) -> None:
        self.stop_requested = value

    def stub(self, stub_class: Callable[[grpc.Channel], StubT]) -> StubT:
        """A stub of `stub_class` on the node's channel; safe beside close_channel in
        another thread (calls on a closed channel then fail with ValueError or
        CANCELLED, as a restart's would)."""
        with self._channel_lock:
            return stub_class(self._open_channel())

    def grpc_channel(self) -> grpc.Channel:
        """The channel itself, for a caller on the test's own thread (use stub() from
        other threads)."""
        with self._channel_lock:
            return self._open_channel()

    def _open_channel(self) -> grpc.Channel:
        if self.channel is None:
            self.channel = (grpc.insecure_channel(self.client_address) if self.credentials is None
                            else grpc.secure_channel(self.client_address, self.credentials))
        return self.channel

    def close_channel(self) -> None:
        with self._channel_lock:
            if self.channel is not None:
                self.channel.close()
                self.channel = None


class LocalCluster:
    def __init__(self, root: Path, tick_s: float | None = None,
                 extra_args: Iterable[str] = (), env: dict[str, str] | None = None,
                 command: list[str] | None = None) -> None:
        self.root = root
        self.nodes: dict[int, NodeProcess] = {}
        self.initial_cluster: dict[int, str] = {}
        self.tick_s = tick_s if tick_s is not None else float(
            os.environ.get("KVRAFT_TEST_TICK_S", "0.05"))
        self.extra_args = list(extra_args)
        self.env = dict(env or {})
        self.command = command or procs.serve_command()
        # True: close() leaves `root` in place (a caller that keeps it for inspection,
        # or that has mounts inside it to take down first).
        self.keep_root = False

    # -------------------------------------------------------------- construction
    @classmethod
    @contextlib.contextmanager
    def start(cls, n: int, **kwargs: Any) -> Iterator[LocalCluster]:
        root = Path(tempfile.mkdtemp(prefix="kvraft-cluster-"))
        cluster = cls(root, **kwargs)
        try:
            for node_id in range(1, n + 1):
                cluster.define(node_id)
            cluster.initial_cluster = {i: nd.peer_address for i, nd in cluster.nodes.items()}
            for node_id in cluster.nodes:
                cluster.launch(node_id)
            for node_id in cluster.nodes:
                cluster.wait_serving(node_id)
            yield cluster
        finally:
            cluster.close()

    def define(self, node_id: int) -> NodeProcess:
        assert node_id not in self.nodes, f"node {node_id} already defined"
        node_dir = self.root / f"node{node_id}"
        node_dir.mkdir(parents=True, exist_ok=True)
        node = NodeProcess(
            id=node_id,
            data_dir=node_dir / "data",
            client_address=f"127.0.0.1:{free_port()}",
            peer_address=f"127.0.0.1:{free_port()}",
            metrics_address=f"127.0.0.1:{free_port()}",
            log_path=node_dir / "node.log",
        )
        self.nodes[node_id] = node
        return node

    def launch(self, node_id: int, *, join: bool = False, extra_args: Iterable[str] = ()) -> None:
        node = self.nodes[node_id]
        assert not node.running(), f"node {node_id} is already running"
        initial = None if join else (self.initial_cluster or {node_id: node.peer_address})
        args = [
            *self.command,
            *procs.serve_args(node_id, node.data_dir, node.client_address, node.peer_address,
                              initial_cluster=initial, join=join,
                              metrics_listen=node.metrics_address),
            *self.extra_args, *extra_args, *node.extra_args,
        ]
        env = procs.child_env({"KVRAFT_TICK_INTERVAL": str(self.tick_s), **self.env})
        node.start(args, env)

    # -------------------------------------------------------------- process control
    def wait_serving(self, node_id: int, timeout_s: float = START_TIMEOUT_S) -> None:
        try:
            self.nodes[node_id].wait_serving(
                lambda: bool(self.status(node_id, timeout_s=1.0)), timeout_s)
        except (ProcessError, TimeoutError) as e:
            raise ClusterError(f"node {node_id} did not start serving: {e}") from None

    def kill9(self, node_id: int) -> None:
        """SIGKILL by PID: no clean shutdown, like a power cut of the process."""
        node = self.nodes[node_id]
        assert node.proc is not None
        node.close_channel()
        node.kill(STOP_TIMEOUT_S)

    def terminate(self, node_id: int, sig: int = signal.SIGTERM) -> int:
        """A clean stop (SIGTERM/SIGINT); returns the exit code."""
        node = self.nodes[node_id]
        assert node.proc is not None
        node.close_channel()
        try:
            return node.terminate(sig, STOP_TIMEOUT_S)
        except ProcessError as e:
            raise ClusterError(str(e)) from None

    def pause(self, node_id: int) -> None:
        node = self.nodes[node_id]
        assert node.running()
        node.pause()

    def resume(self, node_id: int) -> None:
        self.nodes[node_id].resume()

    def restart(self, node_id: int, *, join: bool = False, wait: bool = True) -> None:
        node = self.nodes[node_id]
        if node.running():
            self.kill9(node_id)
        self.launch(node_id, join=join)
        if wait:
            self.wait_serving(node_id)

    def wipe(self, node_id: int) -> None:
        node = self.nodes[node_id]
        assert not node.running(), "stop the node before wiping its data"
        shutil.rmtree(node.data_dir, ignore_errors=True)

    def check_no_crash(self) -> None:
        """Raise at once if a node exited that the harness did not stop."""
        for node_id, node in self.nodes.items():
            code = node.exited_on_its_own()
            if code is not None:
                raise ClusterError(f"node {node_id} exited unexpectedly with "
                                   f"{code}:\n{self.log_tail(node_id)}")

    def running_ids(self) -> list[int]:
        return [i for i, n in sorted(self.nodes.items()) if n.running() and not n.paused]

    def close(self) -> None:
        for node in self.nodes.values():
            node.close_channel()
            with contextlib.suppress(Exception):  # close every node whatever one does
                node.kill(STOP_TIMEOUT_S)
        if not self.keep_root:
            shutil.rmtree(self.root, ignore_errors=True)

    # ------------------------------------------------------------------ clients
    def endpoints(self, ids: Iterable[int] | None = None) -> str:
        """HOST:PORT,... of the given (default: all) members, for --endpoints / Client."""
        chosen = sorted(ids) if ids is not None else sorted(self.nodes)
        return ",".join(self.nodes[i].client_address for i in chosen)

    def kv(self, node_id: int) -> pb_grpc.KVStub:
        return self.nodes[node_id].stub(pb_grpc.KVStub)

    def cluster_stub(self, node_id: int) -> pb_grpc.ClusterStub:
        return self.nodes[node_id].stub(pb_grpc.ClusterStub)

    def metrics_text(self, node_id: int, timeout_s: float = RPC_TIMEOUT_S) -> str:
        url = f"http://{self.nodes[node_id].metrics_address}/metrics"
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            return r.read().decode()

    def status(self, node_id: int, timeout_s: float = RPC_TIMEOUT_S) -> pb.StatusResponse:
        return self.cluster_stub(node_id).Status(pb.StatusRequest(), timeout=timeout_s)

    def put(self, node_id: int, key: bytes, value: bytes, timeout_s: float = RPC_TIMEOUT_S) -> None:
        self.kv(node_id).Put(pb.PutRequest(key=key, value=value), timeout=timeout_s)

    def get(self, node_id: int, key: bytes, *, serializable: bool = False,
            timeout_s: float = RPC_TIMEOUT_S) -> bytes | None:
        consistency = pb.SERIALIZABLE if serializable else pb.LINEARIZABLE
        r = self.kv(node_id).Get(pb.GetRequest(key=key, consistency=consistency), timeout=timeout_s)
        return r.value if r.found else None

    def leader_views(self, ids: Iterable[int] | None = None) -> dict[int, int]:
        """Each reachable node's view of the leader (0 = none)."""
        views = {}
        for node_id in ids if ids is not None else self.running_ids():
            try:
                views[node_id] = self.status(node_id, timeout_s=1.0).header.leader_id
            except grpc.RpcError:
                views[node_id] = -1
        return views

    def wait_leader(self, ids: Iterable[int] | None = None, *, exclude: Iterable[int] = (),
                    timeout_s: float = LEADER_TIMEOUT_S) -> int:
        """Wait until every node in `ids` (default: all running) agrees on one leader,
        not in `exclude`, and that leader says it leads; return its id."""
        excluded = set(exclude)

        def agreed() -> int | None:
            self.check_no_crash()
            members = [i for i in (ids if ids is not None else self.running_ids())
                       if i not in excluded]
            views = self.leader_views(members)
            leaders = set(views.values())
            if len(leaders) != 1:
                return None
            (leader,) = leaders
            if leader <= 0 or leader in excluded or leader not in self.nodes:
                return None
            if self.status(leader, timeout_s=1.0).role != "leader":
                return None
            return leader

        return wait_until(agreed, timeout_s, "an agreed leader",
                          lambda: f"views: {self.leader_views()}\n{self.all_log_tails()}")

    def wait_applied(self, node_id: int, index: int, timeout_s: float = LEADER_TIMEOUT_S) -> None:
        wait_until(lambda: self.status(node_id, timeout_s=1.0).header.applied_index >= index,
                   timeout_s, f"node {node_id} to apply index {index}",
                   lambda: self.log_tail(node_id))

    # ------------------------------------------------------------------ logs
    def log_tail(self, node_id: int, lines: int = 40) -> str:
        return self.nodes[node_id].log_tail(lines)

    def all_log_tails(self, lines: int = 20) -> str:
        return "\n".join(self.log_tail(i, lines) for i in sorted(self.nodes))


def retry_unavailable(fn: Callable[[], T], timeout_s: float = LEADER_TIMEOUT_S) -> T:
    """Call `fn` until it does not fail with UNAVAILABLE (a leader election on a loaded
    machine); any other error, or UNAVAILABLE past `timeout_s`, propagates."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return fn()
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() >= deadline:
                raise
        time.sleep(POLL_INTERVAL_S)
