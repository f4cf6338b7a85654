"""`kvraft serve` as a process: a clean stop on SIGTERM/SIGINT that a restart recovers
from, and one-line errors for a data directory of another node or a busy address."""
from __future__ import annotations

import signal
import socket
import subprocess
from pathlib import Path

import grpc
import pytest

from kvraft.proto import kvraft_pb2 as pb
from kvraft.proto import kvraft_pb2_grpc as pb_grpc

from .harness import LocalCluster, retry_unavailable, wait_until

pytestmark = pytest.mark.cluster


def run_serve(cluster: LocalCluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*cluster.command, *args], capture_output=True, text=True,
                          timeout=60)


def test_sigterm_and_sigint_stop_cleanly_and_a_restart_recovers() -> None:
    with LocalCluster.start(1) as cluster:
        cluster.wait_leader()
        retry_unavailable(lambda: cluster.put(1, b"durable", b"yes"))
        assert cluster.terminate(1, signal.SIGTERM) == 0
        assert "stopped" in cluster.log_tail(1)
        cluster.restart(1)
        cluster.wait_leader()
        assert retry_unavailable(lambda: cluster.get(1, b"durable")) == b"yes"
        assert cluster.terminate(1, signal.SIGINT) == 0


def test_in_flight_calls_fail_unavailable_on_shutdown() -> None:
    with LocalCluster.start(3) as cluster:
        leader = cluster.wait_leader()
        followers = [i for i in cluster.nodes if i != leader]
        for node_id in followers:
            cluster.pause(node_id)   # the write cannot commit: it stays in flight
        # Its own channel: the harness closes its channel to a node it stops.
        with grpc.insecure_channel(cluster.nodes[leader].client_address) as channel:
            pending = pb_grpc.KVStub(channel).Put.future(
                pb.PutRequest(key=b"k", value=b"v"), timeout=30)
            # Stop only once the write waits on the leader: a SIGTERM that overtakes it
            # meets a server already shutting down, whose answer is another matter.
            wait_until(lambda: "kvraft_proposals_in_flight 1.0" in cluster.metrics_text(leader),
                       30, "the write to be in flight on the leader", cluster.all_log_tails)
            assert cluster.terminate(leader, signal.SIGTERM) == 0
            with pytest.raises(grpc.RpcError) as info:
                pending.result()
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value.details()


def test_data_dir_of_another_node_and_busy_address_are_one_line_errors() -> None:
    with LocalCluster.start(1) as cluster:
        node = cluster.nodes[1]
        cluster.wait_leader()
        assert cluster.terminate(1) == 0
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            free_peer = f"127.0.0.1:{s.getsockname()[1]}"
        r = run_serve(cluster, "--id", "2", "--data-dir", str(node.data_dir),
                      "--listen", node.client_address, "--peer-listen", free_peer,
                      "--initial-cluster", f"2={free_peer}")
        assert r.returncode != 0
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "belongs to node 1" in lines[0], r.stderr
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            taken = f"127.0.0.1:{busy.getsockname()[1]}"
            r = run_serve(cluster, "--id", "1", "--data-dir", str(node.data_dir),
                          "--listen", taken, "--peer-listen", node.peer_address,
                          "--initial-cluster", f"1={node.peer_address}")
        assert r.returncode != 0
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and taken in lines[0], r.stderr


@pytest.mark.parametrize("event_loop", ["uvloop", "asyncio"])
def test_serve_runs_on_the_chosen_event_loop(event_loop: str) -> None:
    """uvloop is the default loop (every tier runs on it); --event-loop asyncio is the
    standard library's, kept as a way out. Both serve writes and reads."""
    extra = () if event_loop == "uvloop" else ("--event-loop", "asyncio")
    with LocalCluster.start(1, extra_args=extra) as cluster:
        cluster.wait_leader()
        retry_unavailable(lambda: cluster.put(1, b"loop", event_loop.encode()))
        assert retry_unavailable(lambda: cluster.get(1, b"loop")) == event_loop.encode()
        assert f"{event_loop} loop" in cluster.log_tail(1)


def test_unknown_event_loop_is_a_usage_error() -> None:
    with LocalCluster.start(0) as cluster:
        result = run_serve(cluster, "--event-loop", "tokio")
    assert result.returncode == 2
    assert "tokio" in result.stderr and "Traceback" not in result.stderr


PUTS_FOR_SWITCH_COUNT = 200


def _event_engine_switches(pid: int) -> int:
    """Context switches so far of the process's gRPC EventEngine threads."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            if (task / "comm").read_text().strip() != "event_engine":
                continue
            status = (task / "status").read_text()
        except OSError:   # the thread ended
            continue
        for line in status.splitlines():
            if "ctxt_switches:" in line:   # voluntary and nonvoluntary
                total += int(line.split()[1])
    return total


def _switches_per_put(env: dict[str, str]) -> float:
    with LocalCluster.start(1, env=env) as cluster:
        cluster.wait_leader()
        retry_unavailable(lambda: cluster.put(1, b"warm", b"up"))
        pid = cluster.nodes[1].pid
        assert pid is not None
        before = _event_engine_switches(pid)
        for i in range(PUTS_FOR_SWITCH_COUNT):
            cluster.put(1, b"k%d" % i, b"v")
        return (_event_engine_switches(pid) - before) / PUTS_FOR_SWITCH_COUNT


def test_grpc_sockets_are_served_by_the_polling_thread_unless_grpc_experiments_is_set() -> None:
    # kvraft/_cli_env.py turns gRPC's EventEngine off for sockets: its threads then stay
    # asleep under RPCs. An operator's GRPC_EXPERIMENTS (empty: gRPC's defaults) wins, and
    # then every RPC wakes them several times.
    quiet = _switches_per_put({})
    busy = _switches_per_put({"GRPC_EXPERIMENTS": ""})
    assert busy >= 2, f"gRPC's defaults: {busy:.2f} EventEngine switches per put"
    assert quiet * 4 < busy, f"kvraft's default {quiet:.2f} vs gRPC's {busy:.2f} per put"
