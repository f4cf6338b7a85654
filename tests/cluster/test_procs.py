"""kvraft.procs, the process harness of `make run`, tests/cluster and tests/chaos, on a
stand-in process (a Python one-liner) instead of a node: starts and their log markers,
SIGTERM/SIGKILL/SIGSTOP by PID, restarts, exits nobody asked for, bounded stops. Quick:
no node is started, so this runs in `make test-fast`."""
from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvraft import procs
from kvraft.cli import main
from kvraft.procs import ProcessExited, ServeProcess, StopTimeout
from tests.cluster.harness import ClusterError, LocalCluster

WAIT_S = 30.0          # generous: a loaded 2-core machine starts Python slowly
SHORT_STOP_S = 0.5     # how long a stand-in that ignores SIGTERM is given


def stand_in(on_sigterm: str = "exit0", exit_code: int | None = None) -> list[str]:
    """A process that prints "up" once its SIGTERM disposition is set, then sleeps
    (at most WAIT_S: nothing outlives the test by much even if cleanup failed)."""
    handler = {"exit0": "lambda *a: sys.exit(0)", "ignore": "signal.SIG_IGN"}[on_sigterm]
    tail = f"sys.exit({exit_code})" if exit_code is not None else f"time.sleep({WAIT_S})"
    code = (f"import signal, sys, time; signal.signal(signal.SIGTERM, {handler}); "
            f"print('up', flush=True); {tail}")
    return [sys.executable, "-c", code]


def logged_up(process: ServeProcess) -> bool:
    return process.log_path.read_text().count("up\n") >= process.starts


@pytest.fixture
def slots() -> Iterator[list[ServeProcess]]:
    made: list[ServeProcess] = []
    try:
        yield made
    finally:
        for process in made:
            process.kill()


def slot(slots: list[ServeProcess], tmp_path: Path, name: str = "node 1") -> ServeProcess:
    process = ServeProcess(name, tmp_path / f"{name.replace(' ', '')}.log")
    slots.append(process)
    return process


def test_start_stop_pause_and_restart_by_pid(slots: list[ServeProcess], tmp_path: Path) -> None:
    process = slot(slots, tmp_path)
    process.start(stand_in(), procs.child_env())
    process.wait_serving(lambda: logged_up(process), WAIT_S)
    first_pid = process.pid
    process.pause()
    assert process.paused and process.running()
    stat = Path(f"/proc/{first_pid}/stat")
    process.wait_serving(lambda: stat.read_text().split()[2] == "T", WAIT_S)  # stopped
    assert process.terminate(timeout_s=WAIT_S) == 0  # resumed, then a clean exit
    assert not process.paused and process.exited_on_its_own() is None
    process.start(stand_in(), procs.child_env())
    process.wait_serving(lambda: logged_up(process), WAIT_S)
    assert process.pid != first_pid and process.starts == 2
    process.kill()
    assert process.returncode == -signal.SIGKILL and process.exited_on_its_own() is None
    log = process.log_path.read_text()
    assert log.count("=== start #1 at ") == 1 and log.count("=== start #2 at ") == 1


def test_an_exit_nobody_asked_for_is_reported(slots: list[ServeProcess], tmp_path: Path) -> None:
    process = slot(slots, tmp_path)
    process.start(stand_in(exit_code=3), procs.child_env())
    with pytest.raises(ProcessExited) as info:
        process.wait_serving(lambda: False, WAIT_S)
    assert "node 1 exited with code 3" in str(info.value) and "up" in str(info.value)
    assert process.exited_on_its_own() == 3


def test_a_process_that_ignores_sigterm_is_killed_within_the_bound(
        slots: list[ServeProcess], tmp_path: Path) -> None:
    process = slot(slots, tmp_path)
    process.start(stand_in("ignore"), procs.child_env())
    process.wait_serving(lambda: logged_up(process), WAIT_S)
    with pytest.raises(StopTimeout):
        process.terminate(timeout_s=SHORT_STOP_S)
    assert process.returncode == -signal.SIGKILL


def test_stop_all_terminates_together_and_kills_the_stragglers(
        slots: list[ServeProcess], tmp_path: Path) -> None:
    polite, stubborn, paused = (slot(slots, tmp_path, f"node {i}") for i in (1, 2, 3))
    polite.start(stand_in(), procs.child_env())
    stubborn.start(stand_in("ignore"), procs.child_env())
    paused.start(stand_in(), procs.child_env())
    for process in (polite, stubborn, paused):
        process.wait_serving(lambda p=process: logged_up(p), WAIT_S)
    paused.pause()
    killed: list[str] = []
    procs.stop_all([polite, stubborn, paused], SHORT_STOP_S,
                   on_kill=lambda p: killed.append(p.name))
    assert (polite.returncode, stubborn.returncode, paused.returncode) == (
        0, -signal.SIGKILL, 0)
    assert killed == ["node 2"]


def test_child_env_drops_the_callers_kvraft_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KVRAFT_JOIN", "1")
    monkeypatch.setenv("KEEP_ME", "yes")
    env = procs.child_env({"KVRAFT_TICK_INTERVAL": "0.05"})
    assert "KVRAFT_JOIN" not in env and env["KEEP_ME"] == "yes"
    assert env["KVRAFT_TICK_INTERVAL"] == "0.05" and env["PYTHONUNBUFFERED"] == "1"


def test_serve_args_are_what_kvraft_serve_parses(monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    import kvraft.server

    configs: list = []
    monkeypatch.setattr(kvraft.server, "run_node", lambda config: configs.append(config) or 0)
    monkeypatch.setattr("kvraft.cli._check_bindable", lambda flag, address: None)
    peers = {1: "127.0.0.1:12380", 2: "127.0.0.1:12381"}
    args = procs.serve_args(2, tmp_path / "d", "127.0.0.1:12379", peers[2],
                            initial_cluster=peers, metrics_listen="127.0.0.1:12390")
    assert main(["serve", *args]) == 0
    joined = procs.serve_args(3, tmp_path / "j", "127.0.0.1:12382", "127.0.0.1:12383",
                              join=True)
    assert main(["serve", *joined]) == 0
    first, second = configs
    assert (first.node_id, str(first.data_dir), first.listen, first.peer_listen) == (
        2, str(tmp_path / "d"), "127.0.0.1:12379", peers[2])
    assert (first.initial_cluster, first.metrics_listen, first.join) == (
        peers, "127.0.0.1:12390", False)
    assert (second.node_id, second.join, second.initial_cluster) == (3, True, {})


def test_local_cluster_controls_its_processes_through_procs(tmp_path: Path) -> None:
    """LocalCluster's process control, on stand-ins (LocalCluster.command is theirs)."""
    cluster = LocalCluster(tmp_path / "cluster")
    try:
        cluster.command = stand_in()  # the serve flags follow; the stand-in ignores them
        for node_id in (1, 2):
            cluster.define(node_id)
            cluster.launch(node_id)
        for node in cluster.nodes.values():
            node.wait_serving(lambda n=node: logged_up(n), WAIT_S)
        cluster.pause(2)
        assert cluster.running_ids() == [1]
        cluster.resume(2)
        cluster.kill9(1)
        assert cluster.terminate(2) == 0
        cluster.check_no_crash()  # both stops were the harness's
        cluster.launch(1)
        assert cluster.nodes[1].starts == 2 and "=== start #2" in cluster.log_tail(1)
        cluster.command = stand_in(exit_code=4)
        cluster.launch(2)
        with pytest.raises(ClusterError, match="did not start serving"):
            cluster.wait_serving(2, timeout_s=WAIT_S)
        with pytest.raises(ClusterError, match="node 2 exited unexpectedly with 4"):
            cluster.check_no_crash()
        assert cluster.nodes[1].running()
    finally:
        cluster.close()
    assert not cluster.root.exists()
    assert cluster.nodes[1].returncode == -signal.SIGKILL  # close() killed and reaped it
