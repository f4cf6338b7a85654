"""Real `kvraft serve` processes, one per network namespace of a `Network`.

Each node listens on its namespace's address (clients on CLIENT_PORT, peers on
PEER_PORT; the ports can be fixed because every node has its own address). The
processes are kvraft.procs's, the harness `make run` and the cluster tests share: its
stdout and stderr are appended to `<workdir>/node<N>.log` across restarts, with a
marker line per start, so a failing run leaves one readable log per node.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from kvraft import procs
from kvraft.client import NodeStatus
from kvraft.procs import ServeProcess, StopTimeout
from tests.chaos.netns import Network

CLIENT_PORT = 2379
PEER_PORT = 2380
STOP_TIMEOUT_S = 10.0
STATUS_TIMEOUT_S = 1.0
POLL_INTERVAL_S = 0.1
SNAPSHOT_ENTRIES = 1000
SNAPSHOT_KEEP_ENTRIES = 100


ServeArgv = Callable[["Cluster", int], list[str]]


def kvraft_serve_argv(cluster: Cluster, index: int) -> list[str]:
    return [
        *procs.serve_command(),
        *procs.serve_args(index, cluster.data_dir(index), cluster.client_address(index),
                          cluster.peer_address(index), initial_cluster=cluster.peers()),
        "--log-level", "info",
        # Small snapshots, so that a node back from a kill or a partition is often
        # brought up to date by a snapshot rather than by log entries.
        "--snapshot-entries", str(SNAPSHOT_ENTRIES),
        "--snapshot-keep-entries", str(SNAPSHOT_KEEP_ENTRIES),
    ]


class Cluster:
    """Start, kill, pause and restart the nodes; find the leader."""

    def __init__(self, net: Network, workdir: Path,
                 serve_argv: ServeArgv = kvraft_serve_argv) -> None:
        self.net = net
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.serve_argv = serve_argv
        self.nodes = {i: ServeProcess(f"node {i}", self.log_path(i))
                      for i in range(1, net.size + 1)}
        # Only the process that made the cluster stops it (not a forked child).
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

    def peers(self) -> dict[int, str]:
        return {i: self.peer_address(i) for i in self.indexes}

    def initial_cluster(self) -> str:
        return procs.format_initial_cluster(self.peers())

    def data_dir(self, index: int) -> Path:
        return self.workdir / f"node{index}"

    def log_path(self, index: int) -> Path:
        return self.workdir / f"node{index}.log"

    # -- processes ---------------------------------------------------------------------

    def start(self, index: int) -> None:
        argv = self.net.exec_argv(index, self.serve_argv(self, index))
        self.nodes[index].start(argv, procs.child_env())

    def start_all(self) -> None:
        for i in self.indexes:
            self.start(i)

    def kill9(self, index: int) -> None:
        """SIGKILL: the node loses everything it had not made durable."""
        if self.nodes[index].running():
            self.nodes[index].kill(STOP_TIMEOUT_S)

    def terminate(self, index: int) -> None:
        """SIGTERM, a clean shutdown; SIGKILL if it does not finish in time."""
        if self.nodes[index].running():
            with contextlib.suppress(StopTimeout):
                self.nodes[index].terminate(timeout_s=STOP_TIMEOUT_S)

    def pause(self, index: int) -> None:
        self.nodes[index].pause()

    def resume(self, index: int) -> None:
        self.nodes[index].resume()

    def restart(self, index: int) -> None:
        """Start a node that is down (killed or exited) on its same data directory."""
        if not self.nodes[index].running():
            self.start(index)

    def stop_all(self) -> None:
        if os.getpid() != self.owner_pid:
            return
        for i in self.indexes:
            self.kill9(i)

    def exited(self) -> dict[int, int]:
        """Nodes that exited on their own (not stopped by the harness): index -> code."""
        out = {}
        for i, node in self.nodes.items():
            code = node.exited_on_its_own()
            if code is not None:
                out[i] = code
        return out

    # -- observation -------------------------------------------------------------------

    def statuses(self, indexes: Sequence[int] | None = None) -> dict[int, NodeStatus | None]:
        """Status of every reachable node (None for those that did not answer)."""
        out: dict[int, NodeStatus | None] = {}
        for i in indexes or self.indexes:
            node = self.nodes[i]
            running = node.running() and not node.paused
            out[i] = procs.node_status(self.client_address(i), STATUS_TIMEOUT_S) \
                if running else None
        return out

    def leader(self) -> int | None:
        """The node that says it leads in the highest term, if any answers so."""
        best: tuple[int, int] | None = None
        for i, st in self.statuses().items():
            if st is not None and st.role == "leader":
                term = st.term
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
