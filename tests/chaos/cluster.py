"""Real `kvraft serve` processes, one per network namespace of a `Network`.

Each node listens on its namespace's address (clients on CLIENT_PORT, peers on
PEER_PORT; the ports can be fixed because every node has its own address). Its
stdout and stderr are appended to `<workdir>/node<N>.log` across restarts, with a
marker line per start, so a failing run leaves one readable log per node.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from tests.chaos.netns import Network

CLIENT_PORT = 2379
PEER_PORT = 2380
STOP_TIMEOUT_S = 10.0
STATUS_TIMEOUT_S = 1.0
POLL_INTERVAL_S = 0.1
SNAPSHOT_ENTRIES = 1000
SNAPSHOT_KEEP_ENTRIES = 100


def kvraft_executable() -> str | None:
    """The `kvraft` console script of this interpreter's environment."""
    beside = Path(sys.executable).parent / "kvraft"
    if beside.exists():
        return str(beside)
    return shutil.which("kvraft")


ServeArgv = Callable[["Cluster", int], list[str]]


def kvraft_serve_argv(cluster: Cluster, index: int) -> list[str]:
    exe = kvraft_executable()
    assert exe is not None, "the kvraft console script is not installed"
    return [
        exe, "serve",
        "--id", str(index),
        "--data-dir", str(cluster.data_dir(index)),
        "--listen", cluster.client_address(index),
        "--peer-listen", cluster.peer_address(index),
        "--initial-cluster", cluster.initial_cluster(),
        "--log-level", "info",
        # Small snapshots, so that a node back from a kill or a partition is often
        # brought up to date by a snapshot rather than by log entries.
        "--snapshot-entries", str(SNAPSHOT_ENTRIES),
        "--snapshot-keep-entries", str(SNAPSHOT_KEEP_ENTRIES),
    ]


@dataclasses.dataclass
class NodeProcess:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    paused: bool = False
    starts: int = 0

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Cluster:
    """Start, kill, pause and restart the nodes; find the leader."""

    def __init__(self, net: Network, workdir: Path, serve_argv: ServeArgv = kvraft_serve_argv):
        self.net = net
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.serve_argv = serve_argv
        self.nodes = {i: NodeProcess(i) for i in range(1, net.size + 1)}
        self.owner_pid = os.getpid()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    # -- addresses ---------------------------------------------------------------------

    @property
    def indexes(self) -> list[int]:
        return list(self.nodes)

    def client_address(self, index: int) -> str:
        return f"{self.net.node(index).ip}:{CLIENT_PORT}"

    def peer_address(self, index: int) -> str:
        return f"{self.net.node(index).ip}:{PEER_PORT}"

    def endpoints(self) -> list[str]:
        return [self.client_address(i) for i in self.indexes]

    def initial_cluster(self) -> str:
        return ",".join(f"{i}={self.peer_address(i)}" for i in self.indexes)

    def data_dir(self, index: int) -> Path:
        return self.workdir / f"node{index}"

    def log_path(self, index: int) -> Path:
        return self.workdir / f"node{index}.log"

    # -- processes ---------------------------------------------------------------------

    def start(self, index: int) -> None:
        node = self.nodes[index]
        assert not node.running, f"node {index} is already running"
        argv = self.net.exec_argv(index, self.serve_argv(self, index))
        env = {k: v for k, v in os.environ.items() if not k.startswith("KVRAFT_")}
        env["PYTHONUNBUFFERED"] = "1"
        node.starts += 1
        with open(self.log_path(index), "ab") as log:
            stamp = time.strftime("%H:%M:%S")
            log.write(f"=== chaos harness: start #{node.starts} at {stamp}\n".encode())
            log.flush()
            # A session of its own: a Ctrl-C on the terminal reaches the harness only,
            # which then stops the nodes itself.
            node.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=env, start_new_session=True,
            )
        node.paused = False

    def start_all(self) -> None:
        for i in self.indexes:
            self.start(i)

    def _signal(self, index: int, sig: signal.Signals) -> None:
        node = self.nodes[index]
        assert node.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(node.proc.pid, sig)

    def kill9(self, index: int) -> None:
        """SIGKILL: the node loses everything it had not made durable."""
        node = self.nodes[index]
        if not node.running:
            return
        self._signal(index, signal.SIGKILL)
        assert node.proc is not None
        node.proc.wait(timeout=STOP_TIMEOUT_S)
        node.paused = False

    def terminate(self, index: int) -> None:
        """SIGTERM, a clean shutdown; SIGKILL if it does not finish in time."""
        node = self.nodes[index]
        if not node.running:
            return
        assert node.proc is not None
        if node.paused:
            self._signal(index, signal.SIGCONT)
            node.paused = False
        self._signal(index, signal.SIGTERM)
        try:
            node.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill9(index)

    def pause(self, index: int) -> None:
        if self.nodes[index].running:
            self._signal(index, signal.SIGSTOP)
            self.nodes[index].paused = True

    def resume(self, index: int) -> None:
        node = self.nodes[index]
        if node.running and node.paused:
            self._signal(index, signal.SIGCONT)
        node.paused = False

    def restart(self, index: int) -> None:
        """Start a node that is down (killed or exited) on its same data directory."""
        if not self.nodes[index].running:
            self.start(index)

    def stop_all(self) -> None:
        if os.getpid() != self.owner_pid:
            return
        for i in self.indexes:
            node = self.nodes[i]
            if node.running:
                self.kill9(i)

    def exited(self) -> dict[int, int]:
        """Nodes that exited on their own (not killed by the harness): index -> code."""
        out = {}
        for i, node in self.nodes.items():
            if node.proc is not None:
                code = node.proc.poll()
                if code is not None and code != -signal.SIGKILL:
                    out[i] = code
        return out

    # -- observation -------------------------------------------------------------------

    def statuses(self, indexes: Sequence[int] | None = None) -> dict[int, object]:
        """Status of every reachable node (None for those that did not answer)."""
        from kvraft.client import Client, KvraftError

        out: dict[int, object] = {}
        for i in indexes or self.indexes:
            if not self.nodes[i].running or self.nodes[i].paused:
                out[i] = None
                continue
            try:
                with Client([self.client_address(i)], timeout=STATUS_TIMEOUT_S) as c:
                    out[i] = c.status(self.client_address(i), timeout=STATUS_TIMEOUT_S)
            except KvraftError:
                out[i] = None
        return out

    def leader(self) -> int | None:
        """The node that says it leads in the highest term, if any answers so."""
        best: tuple[int, int] | None = None
        for i, st in self.statuses().items():
            if st is not None and st.role == "leader":  # type: ignore[attr-defined]
                term = st.term  # type: ignore[attr-defined]
                if best is None or term > best[0]:
                    best = (term, i)
        return None if best is None else best[1]

    def wait_for_leader(self, timeout_s: float) -> int:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            leader = self.leader()
            if leader is not None:
                return leader
            dead = self.exited()
            if dead:
                raise RuntimeError(f"nodes exited: {dead}; logs in {self.workdir}")
            time.sleep(POLL_INTERVAL_S)
        raise TimeoutError(f"no leader within {timeout_s} s; logs in {self.workdir}")
