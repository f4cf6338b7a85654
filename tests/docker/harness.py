"""Drive the compose cluster of deploy/docker-compose.yml from tests.

Each ComposeCluster is its own compose project (containers, network, volumes carry its
name) with its own host ports, so a test run never touches a developer's `make
docker-up` cluster or another run. The host only talks to 127.0.0.1 (the published
client ports); faults are Docker's own: kill, start, network disconnect/connect.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from kvraft.client import Client, KvraftError, NodeStatus

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "deploy" / "docker-compose.yml"
BUILD_SCRIPT = ROOT / "deploy" / "scripts" / "build-image.sh"
NODE_IDS = (1, 2, 3, 4, 5)
QUORUM = len(NODE_IDS) // 2 + 1
POLL_INTERVAL_S = 0.25
DOCKER_TIMEOUT_S = 120.0
COMPOSE_UP_TIMEOUT_S = 240.0
IMAGE_BUILD_TIMEOUT_S = 1500.0

T = TypeVar("T")


class DockerError(AssertionError):
    """A docker or compose command failed; carries its output."""


def run(cmd: list[str], *, timeout_s: float = DOCKER_TIMEOUT_S, env: dict[str, str] | None = None,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env,
                         check=False)
    if check and out.returncode != 0:
        raise DockerError(f"{' '.join(cmd)} exited {out.returncode}:\n{out.stdout}\n{out.stderr}")
    return out


def docker_unavailable_reason() -> str | None:
    """Why Docker tests cannot run here, or None when they can."""
    if shutil.which("docker") is None:
        return "no docker command on PATH"
    try:
        out = run(["docker", "info"], timeout_s=30, check=False)
    except subprocess.TimeoutExpired:
        return "`docker info` timed out"
    if out.returncode != 0:
        lines = (out.stderr or out.stdout).strip().splitlines() or ["no output"]
        return f"`docker info` failed: {lines[-1]}"
    if compose_command() is None:
        return "neither `docker compose` nor `docker-compose` is available"
    return None


def compose_command() -> list[str] | None:
    """The compose plugin when present (as the Makefile prefers), else docker-compose v1."""
    with contextlib.suppress(subprocess.TimeoutExpired, OSError):
        if run(["docker", "compose", "version"], timeout_s=30, check=False).returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def build_image() -> str:
    """Build (or find, cached by content hash) the image; returns its tag."""
    out = subprocess.run(["bash", str(BUILD_SCRIPT)], capture_output=True, text=True,
                         timeout=IMAGE_BUILD_TIMEOUT_S, cwd=ROOT, check=False)
    if out.returncode != 0:
        raise DockerError(f"image build failed ({out.returncode}):\n{out.stderr[-4000:]}")
    return out.stdout.strip().splitlines()[-1]


def free_loopback_ports(count: int) -> list[int]:
    """Ports the kernel picks on 127.0.0.1, held together so they are distinct."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def wait_for(what: str, check: Callable[[], T | None], timeout_s: float) -> T:
    """Poll `check` until it returns something other than None/False; bounded."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while True:
        try:
            value = check()
            if value is not None and value is not False:
                return value
        except (KvraftError, DockerError) as e:
            last_error = e
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}"
                                 + (f" (last error: {last_error})" if last_error else ""))
        time.sleep(POLL_INTERVAL_S)


@dataclass
class ComposeCluster:
    image: str
    compose_cmd: list[str]
    project: str = field(default_factory=lambda: f"kvrafttest{uuid.uuid4().hex[:10]}")
    host_ports: dict[int, int] = field(default_factory=dict)
    _clients: dict[int, Client] = field(default_factory=dict)
    _containers: dict[int, str] = field(default_factory=dict)
    _network: str = ""

    def __post_init__(self) -> None:
        if not self.host_ports:
            self.host_ports = dict(zip(NODE_IDS, free_loopback_ports(len(NODE_IDS)), strict=True))

    # ------------------------------------------------------------------ compose

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KVRAFT_")}
        env["KVRAFT_IMAGE"] = self.image
        env["KVRAFT_HOST_IP"] = "127.0.0.1"
        for n, port in self.host_ports.items():
            env[f"KVRAFT_HOST_PORT_{n}"] = str(port)
        return env

    def compose(self, *args: str, timeout_s: float = DOCKER_TIMEOUT_S,
                check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [*self.compose_cmd, "-p", self.project, "-f", str(COMPOSE_FILE), *args]
        return run(cmd, timeout_s=timeout_s, env=self.env(), check=check)

    def up(self) -> None:
        self._containers = {}
        self.compose("up", "--detach", "--no-build", timeout_s=COMPOSE_UP_TIMEOUT_S)

    def down(self, *, volumes: bool) -> None:
        self.close_clients()
        self._containers = {}
        self.compose("down", "--remove-orphans", *(["--volumes"] if volumes else []),
                     timeout_s=COMPOSE_UP_TIMEOUT_S)

    def destroy(self) -> None:
        """Remove everything of this project, also what a half-failed run left behind."""
        self.close_clients()
        with contextlib.suppress(Exception):
            self.down(volumes=True)
        label = f"label=com.docker.compose.project={self.project}"
        for kind, list_cmd in (
            ("container", ["docker", "ps", "-aq", "--filter", label]),
            ("network", ["docker", "network", "ls", "-q", "--filter", label]),
            ("volume", ["docker", "volume", "ls", "-q", "--filter", label]),
        ):
            with contextlib.suppress(Exception):
                ids = run(list_cmd, check=False).stdout.split()
                if ids:
                    rm = ["docker", kind, "rm", *(["-f"] if kind != "network" else []), *ids]
                    run(rm, check=False)

    def project_containers(self) -> list[str]:
        """Ids of every container of this project, running or not."""
        return run(["docker", "ps", "-aq", "--filter", self._label()]).stdout.split()

    def leftovers(self) -> list[str]:
        """Containers, networks and volumes of this project that still exist."""
        label = f"label=com.docker.compose.project={self.project}"
        found = []
        for cmd in (["docker", "ps", "-aq", "--filter", label],
                    ["docker", "network", "ls", "-q", "--filter", label],
                    ["docker", "volume", "ls", "-q", "--filter", label]):
            found += run(cmd).stdout.split()
        return found

    def volumes(self) -> list[str]:
        label = f"label=com.docker.compose.project={self.project}"
        return run(["docker", "volume", "ls", "-q", "--filter", label]).stdout.split()

    # ------------------------------------------------------------------ containers
    # Plain `docker` calls with the compose labels: docker-compose v1 is a Python program
    # that takes seconds per call on a loaded machine.

    def _label(self) -> str:
        return f"label=com.docker.compose.project={self.project}"

    def containers(self) -> dict[int, str]:
        """Container id of each member, by node id (cached until the next up/down)."""
        if not self._containers:
            out = run(["docker", "ps", "-a", "--filter", self._label(), "--format",
                       '{{.ID}} {{.Label "com.docker.compose.service"}}']).stdout
            found = {}
            for line in out.splitlines():
                container_id, service = line.split()
                found[int(service.removeprefix("kvraft"))] = container_id
            assert sorted(found) == list(NODE_IDS), f"containers of {self.project}: {found}"
            self._containers = found
        return self._containers

    def container(self, n: int) -> str:
        return self.containers()[n]

    def inspect(self, nodes: Iterable[int] = NODE_IDS) -> dict[int, dict]:
        nodes = list(nodes)
        infos = json.loads(run(["docker", "inspect", *(self.container(n) for n in nodes)]).stdout)
        return dict(zip(nodes, infos, strict=True))

    def is_running(self, n: int) -> bool:
        return bool(self.inspect([n])[n]["State"]["Running"])

    def network(self) -> str:
        """The compose network's name (its prefix depends on the compose version)."""
        if not self._network:
            names = run(["docker", "network", "ls", "--filter", self._label(),
                         "--format", "{{.Name}}"]).stdout.split()
            assert len(names) == 1, f"networks of {self.project}: {names}"
            self._network = names[0]
        return self._network

    def is_connected(self, n: int) -> bool:
        return self.network() in self.inspect([n])[n]["NetworkSettings"]["Networks"]

    def kill(self, n: int) -> None:
        run(["docker", "kill", self.container(n)])

    def start(self, n: int) -> None:
        run(["docker", "start", self.container(n)])

    def disconnect(self, n: int) -> None:
        run(["docker", "network", "disconnect", self.network(), self.container(n)])

    def connect(self, n: int) -> None:
        # The alias restores the service name the peers dial (kvraftN).
        run(["docker", "network", "connect", "--alias", f"kvraft{n}", self.network(),
             self.container(n)])

    def exec(self, n: int, *cmd: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
        return run(["docker", "exec", self.container(n), *cmd], timeout_s=timeout_s, check=False)

    def logs(self, tail: int = 40) -> str:
        out = self.compose("logs", "--no-color", f"--tail={tail}", check=False)
        return out.stdout + out.stderr

    def heal(self) -> None:
        """Every member running and on the network again (after a failed scenario)."""
        for n, info in self.inspect().items():
            if not info["State"]["Running"]:
                self.start(n)
            if self.network() not in info["NetworkSettings"]["Networks"]:
                self.connect(n)

    # ------------------------------------------------------------------ clients

    def endpoint(self, n: int) -> str:
        return f"127.0.0.1:{self.host_ports[n]}"

    def endpoints(self, nodes: Iterable[int] = NODE_IDS) -> list[str]:
        return [self.endpoint(n) for n in nodes]

    def client(self, n: int) -> Client:
        """A client bound to node n's published port only (no failover)."""
        if n not in self._clients:
            self._clients[n] = Client([self.endpoint(n)], timeout=2.0)
        return self._clients[n]

    def close_clients(self) -> None:
        for c in self._clients.values():
            c.close()
        self._clients.clear()

    def status(self, n: int) -> NodeStatus | None:
        try:
            return self.client(n).status(timeout=1.0)
        except KvraftError:
            return None

    def statuses(self, nodes: Iterable[int]) -> dict[int, NodeStatus]:
        found = {n: self.status(n) for n in nodes}
        return {n: s for n, s in found.items() if s is not None}

    def wait_for_leader(self, among: Iterable[int] = NODE_IDS, timeout_s: float = 60.0,
                        not_: int | None = None) -> int:
        """A member of `among` that says it leads, and a quorum of `among` that follows it
        in the same term. Returns its id."""
        among = tuple(among)

        def leader() -> int | None:
            views = self.statuses(among)
            for n, s in views.items():
                if s.role != "leader" or n == not_:
                    continue
                followers = [m for m, v in views.items() if v.leader_id == n and v.term == s.term]
                if len(followers) >= QUORUM:
                    return n
            return None

        return wait_for(f"a leader among {among}", leader, timeout_s)

    def wait_converged(self, timeout_s: float = 60.0) -> int:
        """All five agree on one leader, one term and one commit index; returns the leader."""
        def converged() -> int | None:
            views = self.statuses(NODE_IDS)
            if len(views) != len(NODE_IDS):
                return None
            leaders = [n for n, s in views.items() if s.role == "leader"]
            agreed = {(s.leader_id, s.term, s.commit_index) for s in views.values()}
            if len(leaders) == 1 and len(agreed) == 1 and agreed.pop()[0] == leaders[0]:
                return leaders[0]
            return None

        return wait_for("one leader, term and commit index on all five", converged, timeout_s)


@contextlib.contextmanager
def compose_cluster(image: str, compose_cmd: list[str]) -> Iterator[ComposeCluster]:
    """Up a fresh cluster with a leader; always removes all of it afterwards."""
    cluster = ComposeCluster(image=image, compose_cmd=compose_cmd)
    try:
        cluster.up()
        try:
            cluster.wait_for_leader(timeout_s=90.0)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{cluster.logs()}") from None
        yield cluster
    finally:
        cluster.destroy()
