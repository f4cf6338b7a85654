"""The chaos Cluster's process control (kvraft.procs underneath) without network
namespaces: a stand-in network runs each command as is, and a stand-in process takes
the place of `kvraft serve`. What the nemesis relies on — kill, pause, resume, restart,
and telling the nodes that exited on their own from those it stopped — is checked here;
the namespaces themselves are tests/chaos/test_netns.py's."""
from __future__ import annotations

import dataclasses
import signal
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from kvraft.procs import ServeProcess
from tests.chaos.cluster import Cluster, kvraft_serve_argv

WAIT_S = 30.0


@dataclasses.dataclass
class _Node:
    ip: str


class StandInNetwork:
    """A Network's interface, without namespaces: every node at 127.0.0.1."""

    def __init__(self, size: int) -> None:
        self.size = size

    def node(self, index: int) -> _Node:
        return _Node("127.0.0.1")

    def exec_argv(self, index: int, argv: Sequence[str]) -> list[str]:
        return list(argv)


def stand_in(cluster: Cluster, index: int) -> list[str]:
    """Node 3 exits at once with code 5; the others print "up" and sleep until SIGTERM
    (exit 0) or WAIT_S."""
    if index == 3:
        return [sys.executable, "-c", "import sys; sys.exit(5)"]
    return [sys.executable, "-c", "import signal, sys, time; "
            "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0)); "
            f"print('up', flush=True); time.sleep({WAIT_S})"]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with Cluster(StandInNetwork(3), tmp_path, stand_in) as made:  # type: ignore[arg-type]
        yield made


def wait_up(node: ServeProcess) -> None:
    node.wait_serving(lambda: node.log_path.read_text().count("up\n") >= node.starts, WAIT_S)


def test_the_nemesis_faults_act_on_the_processes(cluster: Cluster) -> None:
    cluster.start_all()
    one, two, three = (cluster.nodes[i] for i in (1, 2, 3))
    wait_up(one)
    wait_up(two)
    three.proc.wait(timeout=WAIT_S)  # type: ignore[union-attr]
    assert cluster.exited() == {3: 5}  # an exit nobody asked for
    cluster.pause(1)
    assert one.paused
    cluster.resume(1)
    cluster.kill9(2)
    assert two.returncode == -signal.SIGKILL
    cluster.terminate(1)
    assert one.returncode == 0
    assert cluster.exited() == {3: 5}  # the kill and the stop were the harness's
    cluster.restart(2)
    wait_up(two)
    assert two.starts == 2
    log = cluster.log_path(2).read_text()
    assert "=== start #1 at " in log and "=== start #2 at " in log
    cluster.stop_all()
    assert not two.running()


def test_kvraft_serve_argv_names_every_member(cluster: Cluster) -> None:
    argv = kvraft_serve_argv(cluster, 2)
    assert argv[1:4] == ["-m", "kvraft", "serve"]
    flags = dict(zip(argv[4::2], argv[5::2], strict=False))
    assert flags["--id"] == "2" and flags["--listen"] == "127.0.0.1:2379"
    assert flags["--initial-cluster"] == cluster.initial_cluster() == (
        "1=127.0.0.1:2380,2=127.0.0.1:2380,3=127.0.0.1:2380")
