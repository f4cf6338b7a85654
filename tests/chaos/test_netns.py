"""The namespace network: reachability, cuts, heal, and that nothing is left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos.netns import NS_PREFIX, Network, remove_leftovers

pytestmark = [pytest.mark.chaos]

PORT = 7000
CONNECT_TIMEOUT_S = 0.5
WAIT_S = 10.0
REPO = Path(__file__).resolve().parents[2]

# A listener that accepts and closes connections; started inside each namespace.
LISTENER = textwrap.dedent("""
    import socket, sys
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[1], int(sys.argv[2])))
    s.listen()
    while True:
        s.accept()[0].close()
""")
PROBE = "import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), {t})"


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


def _links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True)
    return {line.split(":")[1].strip().split("@")[0] for line in out.stdout.splitlines()}


@pytest.fixture
def net3(netns_available: None) -> Iterator[Network]:
    net = Network(3)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        net.create()
        for node in net.nodes:
            argv = net.exec_argv(node.index, [sys.executable, "-c", LISTENER, node.ip, str(PORT)])
            procs.append(subprocess.Popen(argv))
        for node in net.nodes:  # wait until every listener answers from the root namespace
            _wait(lambda node=node: _connects(None, net, node.index))
        yield net
    finally:
        for p in procs:
            p.kill()
            p.wait(timeout=WAIT_S)
        net.destroy()


def _wait(cond: object) -> None:
    deadline = time.monotonic() + WAIT_S
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def _connects(src: int | None, net: Network, dst: int) -> bool:
    """Can node `src` (None: the root namespace) open a TCP connection to node `dst`?"""
    argv = [sys.executable, "-c", PROBE.format(t=CONNECT_TIMEOUT_S), net.node(dst).ip, str(PORT)]
    if src is not None:
        argv = net.exec_argv(src, argv)
    return subprocess.run(argv, capture_output=True, timeout=WAIT_S).returncode == 0


def _matrix(net: Network) -> dict[tuple[int, int], bool]:
    return {(a, b): _connects(a, net, b) for a in (1, 2, 3) for b in (1, 2, 3) if a != b}


def test_every_node_reaches_every_other_and_the_root_reaches_all(net3: Network) -> None:
    assert all(_matrix(net3).values())
    assert all(_connects(None, net3, i) for i in (1, 2, 3))
    assert net3.subnet is not None and net3.subnet.network_address.packed[:2] == bytes([10, 213])


def test_a_bridge_partition_cuts_only_the_links_between_the_halves(net3: Network) -> None:
    # Node 2 is the bridge: it sees 1 and 3, which do not see each other.
    net3.partition([{1, 2}, {2, 3}])
    assert net3.cut_pairs() == [(1, 3)]
    reach = _matrix(net3)
    assert reach == {(1, 2): True, (2, 1): True, (2, 3): True, (3, 2): True,
                     (1, 3): False, (3, 1): False}
    assert all(_connects(None, net3, i) for i in (1, 2, 3)), "clients always reach nodes"


def test_heal_restores_every_link(net3: Network) -> None:
    net3.partition([{1}, {2, 3}])
    assert not _connects(2, net3, 1)
    net3.heal()
    assert net3.cut_pairs() == []
    assert all(_matrix(net3).values())


def test_destroy_removes_namespaces_links_and_processes(netns_available: None) -> None:
    net = Network(2)
    try:
        net.create()
        sleeper = subprocess.Popen(net.exec_argv(1, ["sleep", "600"]))
        ours = {ns for ns in _namespaces() if ns.startswith(net._ns_base)}
        assert len(ours) == 3  # two nodes and the switch
        assert net.root_link in _links()
    finally:
        net.destroy()
    assert sleeper.wait(timeout=WAIT_S) == -signal.SIGKILL
    assert not {ns for ns in _namespaces() if ns.startswith(net._ns_base)}
    assert net.root_link not in _links()


def test_leftovers_of_a_crashed_run_are_found_and_removed(netns_available: None) -> None:
    # A harness process that builds a network, starts a node, and dies without cleanup.
    crashed = textwrap.dedent("""
        import os, subprocess, signal
        from tests.chaos.netns import Network
        net = Network(2)
        net.create()
        p = subprocess.Popen(net.exec_argv(1, ["sleep", "600"]), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        print(net._ns_base, net.root_link, p.pid, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    out = subprocess.run([sys.executable, "-c", crashed], capture_output=True, text=True,
                         cwd=REPO, timeout=WAIT_S * 3)
    base, root_link, pid = out.stdout.split()
    try:
        assert {ns for ns in _namespaces() if ns.startswith(base)}, out.stderr
        removed = remove_leftovers()
        assert sorted(ns for ns in removed if ns.startswith(base)) == [
            base + "n1", base + "n2", base + "sw"]
        assert not {ns for ns in _namespaces() if ns.startswith(base)}
        assert root_link not in _links()
        _wait(lambda: not Path(f"/proc/{pid}").exists()
              or "zombie" in Path(f"/proc/{pid}/status").read_text().lower())
    finally:
        for ns in _namespaces():  # belt and braces: never leave this test's namespaces
            if ns.startswith(base):
                subprocess.run(["ip", "netns", "del", ns], check=False)


def test_leftovers_of_a_live_run_are_kept(net3: Network) -> None:
    assert net3.owner_pid == os.getpid()
    removed = remove_leftovers()
    assert not [ns for ns in removed if ns.startswith(net3._ns_base)]
    assert all(ns.startswith(NS_PREFIX) for ns in removed)
    assert {n.ns for n in net3.nodes} <= _namespaces()
