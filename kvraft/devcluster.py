"""`make run`: a local N-node cluster on loopback, in the foreground (SPEC §5).

    python -m kvraft.devcluster [--nodes 5] [--dir .run]

Each node is a `kvraft serve` child process (kvraft.procs) with its data in DIR/nodeN/
and its log in DIR/nodeN.log. The ports are picked free on the first run and kept in
DIR/cluster.json, so a second run restarts the same cluster from its data. It prints the
endpoints and a first command, then waits. A node that dies is reported and the others
keep running (kill one to watch a failover). Ctrl-C (or SIGTERM) stops every node:
SIGTERM to each child by PID, a bounded wait, SIGKILL for any that hangs.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from kvraft import procs
from kvraft.procs import ServeProcess

HOST = "127.0.0.1"
NODES_MAX = 9
READY_TIMEOUT_S = 60.0
READY_POLL_S = 0.2
STATUS_TIMEOUT_S = 1.0
STOP_TIMEOUT_S = 15.0
LOG_TAIL_LINES = 5


class Stop(Exception):
    """SIGINT or SIGTERM arrived: stop every node."""


@dataclass(frozen=True)
class NodeSpec:
    id: int
    client: str
    peer: str


def _free_ports(count: int) -> list[int]:
    """`count` distinct free loopback ports (all held open until all are chosen)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind((HOST, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _port_free(address: str) -> bool:
    host, _, port = address.rpartition(":")
    with socket.socket() as s:
        # As gRPC binds: connections of a just-stopped run in TIME_WAIT do not count.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, int(port)))
        except OSError:
            return False
    return True


def load_layout(run_dir: Path, nodes: int) -> list[NodeSpec]:
    """The cluster of an earlier run in `run_dir`, or a new one on free ports."""
    layout_path = run_dir / "cluster.json"
    if layout_path.exists():
        saved = json.loads(layout_path.read_text())
        specs = [NodeSpec(**n) for n in saved["nodes"]]
        if len(specs) != nodes:
            raise SystemExit(f"error: {run_dir} holds a {len(specs)}-node cluster; remove it "
                             f"or pass --nodes {len(specs)}")
        return specs
    ports = _free_ports(2 * nodes)
    specs = [NodeSpec(i + 1, f"{HOST}:{ports[2 * i]}", f"{HOST}:{ports[2 * i + 1]}")
             for i in range(nodes)]
    layout_path.write_text(json.dumps({"nodes": [s.__dict__ for s in specs]}, indent=2))
    return specs


def start_node(spec: NodeSpec, specs: list[NodeSpec], run_dir: Path) -> ServeProcess:
    """Start node `spec` as a child in the terminal's process group (a Ctrl-C reaches
    every node as it reaches us), which dies with us."""
    node = ServeProcess(f"node {spec.id}", run_dir / f"node{spec.id}.log")
    args = procs.serve_args(spec.id, run_dir / f"node{spec.id}", spec.client, spec.peer,
                            initial_cluster={s.id: s.peer for s in specs})
    node.start([*procs.serve_command(), *args], procs.child_env(), own_session=False,
               die_with_parent=True)
    return node


def wait_ready(nodes: dict[int, ServeProcess], specs: list[NodeSpec], run_dir: Path) -> int:
    """Wait until every node answers Status and one leader is agreed; return its id."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        for node_id, node in nodes.items():
            if not node.running():
                raise SystemExit(f"error: node {node_id} exited with code {node.returncode}"
                                 f" while starting; its log:\n"
                                 f"{node.log_tail(LOG_TAIL_LINES)}")
        leaders = set()
        for spec in specs:
            status = procs.node_status(spec.client, STATUS_TIMEOUT_S)
            leaders.add(status.leader_id if status is not None else -1)
        if len(leaders) == 1 and min(leaders) > 0:
            return leaders.pop()
        if time.monotonic() > deadline:
            raise SystemExit(f"error: no agreed leader after {READY_TIMEOUT_S:.0f} s; "
                             f"see the logs in {run_dir}/")
        time.sleep(READY_POLL_S)


def stop_all(nodes: dict[int, ServeProcess]) -> None:
    """SIGTERM every live child by PID, wait (bounded), SIGKILL the stragglers."""
    def killing(node: ServeProcess) -> None:
        print(f"{node.name} (pid {node.pid}) ignored SIGTERM; killing it", flush=True)

    procs.stop_all(nodes.values(), STOP_TIMEOUT_S, on_kill=killing)


def _raise_stop(signum: int, frame: object) -> None:
    raise Stop(signal.Signals(signum).name)


def _short_path(path: Path) -> str:
    """`path` relative to the working directory when it lies inside it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _print_banner(specs: list[NodeSpec], nodes: dict[int, ServeProcess], leader: int,
                  run_dir: Path) -> None:
    endpoints = ",".join(s.client for s in specs)
    kvraft = Path(sys.executable).with_name("kvraft")
    python = _short_path(Path(sys.executable))
    cli = _short_path(kvraft) if kvraft.exists() else f"{python} -m kvraft"
    lines = [f"kvraft: {len(specs)}-node cluster on {HOST}, data and logs in {run_dir}/"]
    lines += [f"  node {s.id}  client {s.client}  peer {s.peer}  pid {nodes[s.id].pid}"
              for s in specs]
    lines += [
        f"leader: node {leader}",
        "",
        "try, in another terminal:",
        f"  export KVRAFT_ENDPOINTS={endpoints}",
        f"  {cli} put hello world && {cli} get hello",
        f"  {cli} status",
        "",
        "Ctrl-C stops every node.",
    ]
    print("\n".join(lines), flush=True)


def run(count: int, run_dir: Path) -> int:
    run_dir.mkdir(parents=True, exist_ok=True)
    specs = load_layout(run_dir, count)
    busy = [a for s in specs for a in (s.client, s.peer) if not _port_free(a)]
    if busy:
        raise SystemExit(f"error: port(s) {', '.join(busy)} in use (is another `make run` "
                         f"going?); stop it, or remove {run_dir}/ to pick new ports")
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    nodes: dict[int, ServeProcess] = {}
    try:
        for spec in specs:
            nodes[spec.id] = start_node(spec, specs, run_dir)
        leader = wait_ready(nodes, specs, run_dir)
        _print_banner(specs, nodes, leader, run_dir)
        by_pid = {node.pid: node_id for node_id, node in nodes.items()}
        while by_pid:
            pid, status = os.wait()  # until a node exits or a signal raises Stop
            node_id = by_pid.pop(pid, None)
            if node_id is None:
                continue
            code = nodes[node_id].record_exit(status)
            print(f"node {node_id} (pid {pid}) exited with code {code}"
                  f"; {len(by_pid)} node(s) still running", flush=True)
        print("every node has exited", flush=True)
        return 1
    except Stop as stop:
        print(f"\n{stop}: stopping {sum(n.running() for n in nodes.values())} node(s)",
              flush=True)
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # let the stop below finish
        stop_all(nodes)
        print("every node stopped", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kvraft.devcluster",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=5, help="cluster size (default 5)")
    parser.add_argument("--dir", default=".run", help="data and logs (default ./.run)")
    args = parser.parse_args(argv)
    if not 1 <= args.nodes <= NODES_MAX:
        parser.error(f"--nodes must be 1..{NODES_MAX}")
    return run(args.nodes, Path(args.dir))


if __name__ == "__main__":
    sys.exit(main())
