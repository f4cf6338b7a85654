"""A private network of Linux network namespaces for fault injection.

Layout (everything named with a per-run prefix so that leftovers are recognisable):

    root namespace                 switch namespace             node namespaces
    kvc<run>r 10.213.X.254 ---veth--- sw0 ┐
                                         ├ br0 (bridge) --- veth --- eth0 10.213.X.1  (node 1)
                                         ├                 --- veth --- eth0 10.213.X.2  (node 2)
                                         ...

The bridge lives in its own namespace, not in the root one, so the host's firewall
(Docker sets the root FORWARD policy to DROP, and br_netfilter would apply it to bridged
frames) never sees node-to-node traffic, and the root namespace gains a single veth
whose peer — and so the whole network — disappears when the namespaces are deleted.
The subnet exists only on these interfaces; clients in the root namespace reach every
node through the one veth.

Links between nodes are cut with iptables DROP rules inside the node namespaces (a
silent loss, like a real partition: no connection-refused shortcut), in both
directions. The root namespace's client link is never cut: clients always reach every
node, so a partitioned minority still receives requests and must refuse them correctly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import os
import re
import secrets
import shutil
import signal
import subprocess
from collections.abc import Iterable, Sequence

NS_PREFIX = "kvchaos-"
LINK_PREFIX = "kvc"
SUBNET_FIRST_OCTETS = "10.213"
COMMAND_TIMEOUT_S = 15.0
NODES_MAX = 50


class NetnsUnavailable(RuntimeError):
    """This machine cannot run the harness (not root, no iproute2/iptables, no netns)."""


def _run(argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def unavailable_reason() -> str | None:
    """Why the harness cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"needs `{tool}` (Debian packages iproute2, iptables)"
    name = f"{NS_PREFIX}probe-{os.getpid()}"
    try:
        probe = _run(["ip", "netns", "add", name], check=False)
        if probe.returncode != 0:
            return f"`ip netns add` does not work here: {probe.stderr.strip()}"
        fw = _run(["ip", "netns", "exec", name, "iptables", "-S"], check=False)
        if fw.returncode != 0:
            return f"iptables does not work in a network namespace: {fw.stderr.strip()}"
    finally:
        _run(["ip", "netns", "del", name], check=False)
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _namespaces() -> list[str]:
    out = _run(["ip", "netns", "list"]).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _kill_namespace_processes(ns: str) -> None:
    """SIGKILL what runs inside one of *our* namespaces (a crashed run's nodes)."""
    out = _run(["ip", "netns", "pids", ns], check=False).stdout
    for pid in (int(p) for p in out.split() if p.isdigit()):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def remove_leftovers() -> list[str]:
    """Remove the namespaces of earlier runs whose owning process is dead, with the
    processes inside them; their veths, bridge and firewall rules go with them.
    Returns the names removed."""
    removed = []
    runs: set[str] = set()
    pattern = re.compile(rf"^{re.escape(NS_PREFIX)}([0-9a-f]+)-(\d+)-")
    for ns in _namespaces():
        m = pattern.match(ns)
        if m is None or _pid_alive(int(m.group(2))):
            continue
        _kill_namespace_processes(ns)
        _run(["ip", "netns", "del", ns], check=False)
        removed.append(ns)
        runs.add(m.group(1))
    # A namespace goes away only when its last process has; do not wait for that to
    # remove the root namespace's end of the client link.
    for run_id in runs:
        root_link = f"{LINK_PREFIX}{run_id}r"
        if _run(["ip", "link", "show", root_link], check=False).returncode == 0:
            _run(["ip", "link", "del", root_link], check=False)
    return removed


def _pick_subnet() -> ipaddress.IPv4Network:
    """A /24 under 10.213.0.0/16 that no interface or route of the root namespace uses
    (two runs at once, or a host network that happens to overlap, must not collide)."""
    used = _run(["ip", "-4", "route", "show", "table", "all"]).stdout
    used += _run(["ip", "-4", "addr", "show"]).stdout
    for third in [7, *range(8, 250)]:
        net = ipaddress.IPv4Network(f"{SUBNET_FIRST_OCTETS}.{third}.0/24")
        if f"{SUBNET_FIRST_OCTETS}.{third}." not in used:
            return net
    raise NetnsUnavailable("no free /24 under 10.213.0.0/16")


@dataclasses.dataclass(frozen=True)
class NodeNet:
    index: int  # 1-based
    ns: str
    ip: str


class Network:
    """Namespaces for `size` nodes on one bridge, reachable from the root namespace.

    Use as a context manager, or call `create()` and `destroy()` (idempotent; safe to
    call from a signal handler's path or an atexit hook)."""

    def __init__(self, size: int) -> None:
        assert 1 <= size <= NODES_MAX
        self.size = size
        self.run_id = secrets.token_hex(2)  # 4 hex digits: interface names stay <= 15
        self.owner_pid = os.getpid()
        self._ns_base = f"{NS_PREFIX}{self.run_id}-{self.owner_pid}-"
        self.switch_ns = self._ns_base + "sw"
        self.root_link = f"{LINK_PREFIX}{self.run_id}r"
        self.subnet: ipaddress.IPv4Network | None = None
        self.root_ip = ""
        self.nodes: list[NodeNet] = []
        self._cut: set[frozenset[int]] = set()
        self._created: list[str] = []  # namespaces, in creation order

    # -- lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> Network:
        self.create()
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    def create(self) -> None:
        assert not self._created, "create() once"
        self.subnet = _pick_subnet()
        hosts = list(self.subnet.hosts())
        prefix = self.subnet.prefixlen
        self.root_ip = str(hosts[-1])
        self._add_ns(self.switch_ns)
        sw = ["ip", "netns", "exec", self.switch_ns]
        _run([*sw, "ip", "link", "add", "br0", "type", "bridge"])
        _run([*sw, "ip", "link", "set", "br0", "up"])
        # the root namespace's client link
        _run(["ip", "link", "add", self.root_link, "type", "veth", "peer", "name", "up0",
              "netns", self.switch_ns])
        _run([*sw, "ip", "link", "set", "up0", "master", "br0", "up"])
        _run(["ip", "addr", "add", f"{self.root_ip}/{prefix}", "dev", self.root_link])
        _run(["ip", "link", "set", self.root_link, "up"])
        for i in range(1, self.size + 1):
            node = NodeNet(i, f"{self._ns_base}n{i}", str(hosts[i - 1]))
            self._add_ns(node.ns)
            inside = ["ip", "netns", "exec", node.ns]
            _run([*inside, "ip", "link", "set", "lo", "up"])
            _run([*sw, "ip", "link", "add", f"n{i}", "type", "veth", "peer", "name", "eth0",
                  "netns", node.ns])
            _run([*sw, "ip", "link", "set", f"n{i}", "master", "br0", "up"])
            _run([*inside, "ip", "addr", "add", f"{node.ip}/{prefix}", "dev", "eth0"])
            _run([*inside, "ip", "link", "set", "eth0", "up"])
            self.nodes.append(node)

    def _add_ns(self, name: str) -> None:
        _run(["ip", "netns", "add", name])
        self._created.append(name)

    def destroy(self) -> None:
        """Kill anything still running inside our namespaces, then delete them (which
        deletes every veth, the bridge and every firewall rule with them)."""
        if os.getpid() != self.owner_pid:
            return  # a forked child must not tear down its parent's network
        for ns in reversed(self._created):
            _kill_namespace_processes(ns)
            _run(["ip", "netns", "del", ns], check=False)
        self._created.clear()
        # Deleting the switch namespace deletes the veth pair, root side included.
        _run(["ip", "link", "del", self.root_link], check=False)
        self._cut.clear()

    # -- processes ---------------------------------------------------------------------

    def node(self, index: int) -> NodeNet:
        return self.nodes[index - 1]

    def exec_argv(self, index: int, argv: Sequence[str]) -> list[str]:
        """argv that runs `argv` inside node `index`'s namespace. `ip netns exec` execs
        the command after entering the namespace, so a Popen's pid is the command's."""
        return ["ip", "netns", "exec", self.node(index).ns, *argv]

    # -- faults ------------------------------------------------------------------------

    def cut(self, a: int, b: int) -> None:
        """Drop all traffic between nodes a and b, both ways."""
        pair = frozenset((a, b))
        assert a != b and pair not in self._cut
        for me, other in ((a, b), (b, a)):
            ip = self.node(other).ip
            inside = ["ip", "netns", "exec", self.node(me).ns, "iptables", "-w", "5"]
            _run([*inside, "-I", "INPUT", "-s", ip, "-j", "DROP"])
            _run([*inside, "-I", "OUTPUT", "-d", ip, "-j", "DROP"])
        self._cut.add(pair)

    def partition(self, groups: Iterable[Iterable[int]]) -> None:
        """Nodes talk only within their group; a node in several groups (a bridge)
        talks to all of them. Replaces any earlier partition."""
        self.heal()
        groups = [set(g) for g in groups]
        for a in range(1, self.size + 1):
            for b in range(a + 1, self.size + 1):
                if not any(a in g and b in g for g in groups):
                    self.cut(a, b)

    def heal(self) -> None:
        for node in self.nodes:
            if any(node.index in pair for pair in self._cut):
                inside = ["ip", "netns", "exec", node.ns, "iptables", "-w", "5"]
                _run([*inside, "-F", "INPUT"])
                _run([*inside, "-F", "OUTPUT"])
        self._cut.clear()

    def cut_pairs(self) -> list[tuple[int, int]]:
        return sorted(tuple(sorted(p)) for p in self._cut)  # type: ignore[misc]
