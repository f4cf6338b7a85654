"""etcd for the side-by-side benchmark: its v3 protos, a local cluster, a load driver.

etcd's .proto files come from Debian's golang-etcd-server-dev (the same 3.4 release as
the etcd-server package). They carry gogoproto and google.api annotations that only
matter to Go code generation; those are stripped and the rest is compiled with
grpc_tools at benchmark time into a cache directory — nothing generated is committed.

The same driver (EtcdDriver) and the same auth set-up (enable_auth) serve etcd and
kvraft's etcd API alike, so the two are measured through identical client code. With
`certs` (kvraft.devcerts' layout) a cluster serves TLS on its client and peer ports.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from kvraft.bench.drivers import AUTHENTICATE_TIMEOUT_S, open_channel, token_metadata
from kvraft.tls import ClientTLS

ETCD_SRC = Path("/usr/share/gocode/src/go.etcd.io/etcd")
PROTOS = {  # path in the Debian package -> import path used by rpc.proto
    "mvcc/mvccpb/kv.proto": "etcd/mvcc/mvccpb/kv.proto",
    "auth/authpb/auth.proto": "etcd/auth/authpb/auth.proto",
    "etcdserver/etcdserverpb/rpc.proto": "etcd/etcdserver/etcdserverpb/rpc.proto",
}
CACHE_DIR = Path(tempfile.gettempdir()) / "kvraft-bench-etcd-proto"
START_TIMEOUT_S = 30.0
READY_TIMEOUT_S = 60.0
DEBIAN_PACKAGES = ("etcd-server", "golang-etcd-server-dev")


def ensure_installed() -> None:
    """Installs Debian's etcd packages when missing (the benchmark runs as root here)."""
    if shutil.which("etcd") and (ETCD_SRC / "etcdserver/etcdserverpb/rpc.proto").exists():
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "-q", *DEBIAN_PACKAGES], check=True, env=env,
                   stdout=subprocess.DEVNULL)


def _strip_go_annotations(text: str) -> str:
    text = re.sub(r'^import "(gogoproto/gogo|google/api/annotations)\.proto";\n', "", text,
                  flags=re.M)
    text = re.sub(r"^option \(gogoproto\.[^;]*;\n", "", text, flags=re.M)
    text = re.sub(r"\s*\[\s*\(gogoproto\.[^\]]*\]", "", text)
    # rpc X(A) returns (B) { option (google.api.http) = { ... }; }  ->  rpc X(A) returns (B);
    # The option bodies nest braces (additional_bindings), so match braces, not a regex.
    out, pos = [], 0
    opener = re.compile(r"\)\s*\{\s*option \(google\.api\.http\)")
    while (m := opener.search(text, pos)) is not None:
        out.append(text[pos:m.start()] + ");")
        depth, i = 1, text.index("{", m.start())
        while depth:
            i += 1
            depth += {"{": 1, "}": -1}.get(text[i], 0)
        pos = i + 1
    out.append(text[pos:])
    return "".join(out)


def compiled_proto_path() -> Path:
    """Compiles etcd's KV protos once per content hash; returns the dir for sys.path."""
    digest = hashlib.sha256()
    for src in PROTOS:
        digest.update((ETCD_SRC / src).read_bytes())
    out = CACHE_DIR / digest.hexdigest()[:16]
    if (out / "etcd/etcdserver/etcdserverpb/rpc_pb2_grpc.py").exists():
        return out
    from grpc_tools import protoc

    staging = Path(tempfile.mkdtemp(prefix="etcd-proto-"))
    try:
        src_root = staging / "src"
        for src, dest in PROTOS.items():
            target = src_root / dest
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(_strip_go_annotations((ETCD_SRC / src).read_text()))
        gen = staging / "gen"
        gen.mkdir()
        args = ["protoc", f"-I{src_root}", f"--python_out={gen}", f"--grpc_python_out={gen}",
                *[str(src_root / d) for d in PROTOS.values()]]
        if protoc.main(args) != 0:
            raise RuntimeError("compiling etcd's protos failed")
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(out, ignore_errors=True)
        shutil.move(str(gen), str(out))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def _import_rpc():
    path = str(compiled_proto_path())
    if path not in sys.path:
        sys.path.insert(0, path)
    from etcd.etcdserver.etcdserverpb import rpc_pb2, rpc_pb2_grpc

    return rpc_pb2, rpc_pb2_grpc


class EtcdDriver:
    """Load driver for etcd's v3 KV API: Put, and Range (linearizable by default); with
    `user`, Authenticate once in open() and the token on every call after."""

    def __init__(self, endpoint: str, tls: ClientTLS | None = None, user: str | None = None,
                 password: str = "") -> None:
        self._pb, self._grpc = _import_rpc()
        self._channel = open_channel(endpoint, tls)
        self._stub = self._grpc.KVStub(self._channel)
        self._user, self._password = user, password
        self._metadata: tuple[tuple[str, str], ...] | None = None  # set by open()

    async def open(self) -> None:
        if self._user is None:
            return
        reply = await self._grpc.AuthStub(self._channel).Authenticate(
            self._pb.AuthenticateRequest(name=self._user, password=self._password),
            timeout=AUTHENTICATE_TIMEOUT_S)
        self._metadata = token_metadata(reply.token)

    async def put(self, key: bytes, value: bytes, timeout_s: float) -> None:
        await self._stub.Put(self._pb.PutRequest(key=key, value=value), timeout=timeout_s,
                             metadata=self._metadata)

    async def get(self, key: bytes, timeout_s: float) -> None:
        await self._stub.Range(self._pb.RangeRequest(key=key), timeout=timeout_s,
                               metadata=self._metadata)

    async def close(self) -> None:
        await self._channel.close()


def sync_channel(endpoint: str, tls: ClientTLS | None) -> grpc.Channel:
    """A blocking channel for set-up and readiness checks, plaintext or TLS."""
    if tls is None:
        return grpc.insecure_channel(endpoint)
    return grpc.secure_channel(endpoint, tls.credentials())


@dataclass(frozen=True)
class BenchAuth:
    """Who the load authenticates as: a user whose role may read and write the load
    generator's keys (kvraft.bench.loadgen names them bench-NNNNNNNN) and nothing else."""

    user: str = "bench"
    password: str = "bench-password"
    root_password: str = "root-password"
    key_prefix: bytes = b"bench-"

    def range_end(self) -> bytes:
        """The end of the prefix range (etcd's --prefix): the last byte plus one."""
        return self.key_prefix[:-1] + bytes([self.key_prefix[-1] + 1])


def enable_auth(endpoint: str, tls: ClientTLS | None, auth: BenchAuth = BenchAuth()) -> None:
    """etcdctl's steps through etcd's Auth API: root with the root role, the bench user
    with readwrite on the bench keys, then auth enable. Either store; one member is
    enough (the changes are replicated)."""
    pb, rpc = _import_rpc()
    from etcd.auth.authpb import auth_pb2  # compiled beside rpc_pb2 (on sys.path now)

    with sync_channel(endpoint, tls) as ch:
        stub = rpc.AuthStub(ch)
        t = AUTHENTICATE_TIMEOUT_S
        stub.UserAdd(pb.AuthUserAddRequest(name="root", password=auth.root_password), timeout=t)
        try:
            stub.RoleAdd(pb.AuthRoleAddRequest(name="root"), timeout=t)
        except grpc.RpcError as e:  # a store that has the root role built in
            if e.code() != grpc.StatusCode.FAILED_PRECONDITION:
                raise
        stub.UserGrantRole(pb.AuthUserGrantRoleRequest(user="root", role="root"), timeout=t)
        stub.UserAdd(pb.AuthUserAddRequest(name=auth.user, password=auth.password), timeout=t)
        stub.RoleAdd(pb.AuthRoleAddRequest(name=auth.user), timeout=t)
        stub.RoleGrantPermission(pb.AuthRoleGrantPermissionRequest(
            name=auth.user, perm=auth_pb2.Permission(
                permType=auth_pb2.Permission.READWRITE, key=auth.key_prefix,
                range_end=auth.range_end())), timeout=t)
        stub.UserGrantRole(pb.AuthUserGrantRoleRequest(user=auth.user, role=auth.user),
                           timeout=t)
        stub.AuthEnable(pb.AuthEnableRequest(), timeout=t)
        try:  # a run that claims auth must measure a store that enforces it
            rpc.KVStub(ch).Put(pb.PutRequest(key=auth.key_prefix, value=b"1"), timeout=t)
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.INVALID_ARGUMENT:
                raise
        else:
            raise RuntimeError(f"{endpoint}: a put without a token was accepted after "
                               "auth enable")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class EtcdCluster:
    """A local etcd cluster on loopback, data under `base_dir` (same disk as kvraft's)."""

    size: int
    base_dir: Path
    certs: Path | None = None  # kvraft.devcerts' files: TLS on both ports
    client_ports: list[int] = field(default_factory=list)
    procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def endpoints(self) -> tuple[str, ...]:
        return tuple(f"127.0.0.1:{p}" for p in self.client_ports)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    @property
    def tls(self) -> ClientTLS | None:
        return None if self.certs is None else ClientTLS(cacert=str(self.certs / "ca.crt"))

    def tls_flags(self, member: int) -> list[str]:
        """etcd 3.4/3.5's TLS flags for member `member` (1-based, devcerts' numbering):
        a server certificate on the client port, mutual TLS on the peer port."""
        if self.certs is None:
            return []
        c = self.certs
        return ["--cert-file", str(c / f"member-{member}.crt"),
                "--key-file", str(c / f"member-{member}.key"),
                "--peer-cert-file", str(c / f"peer-{member}.crt"),
                "--peer-key-file", str(c / f"peer-{member}.key"),
                "--peer-trusted-ca-file", str(c / "ca.crt"), "--peer-client-cert-auth"]

    def start(self) -> None:
        peer_ports = [free_port() for _ in range(self.size)]
        self.client_ports = [free_port() for _ in range(self.size)]
        scheme = "http" if self.certs is None else "https"
        initial = ",".join(f"e{i}={scheme}://127.0.0.1:{peer_ports[i]}"
                           for i in range(self.size))
        for i in range(self.size):
            data = self.base_dir / f"etcd{i}"
            data.mkdir(parents=True, exist_ok=True)
            log = open(self.base_dir / f"etcd{i}.log", "wb")  # noqa: SIM115 - owned by proc
            client_url = f"{scheme}://127.0.0.1:{self.client_ports[i]}"
            peer_url = f"{scheme}://127.0.0.1:{peer_ports[i]}"
            cmd = [
                "etcd", "--name", f"e{i}", "--data-dir", str(data),
                "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
                "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
                "--initial-cluster", initial, "--initial-cluster-state", "new",
                "--initial-cluster-token", f"bench-{os.getpid()}",
                "--quota-backend-bytes", str(8 * 1024**3), "--log-level", "error",
                *self.tls_flags(i + 1),
            ]
            self.procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))
            log.close()
        self._wait_ready()

    def _wait_ready(self) -> None:
        rpc_pb2, rpc_grpc = _import_rpc()
        _wait_puts(self.endpoints, rpc_grpc.KVStub, rpc_pb2.PutRequest, START_TIMEOUT_S,
                   self.tls)

    def stop(self, *, graceful: bool = True) -> None:
        """SIGTERM (etcd shuts down cleanly, a few seconds with peers leaving), or with
        graceful=False SIGKILL, for data directories thrown away right after."""
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM if graceful else signal.SIGKILL)
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs.clear()


class EtcdClusterOverKvraftStubs(EtcdCluster):
    """EtcdCluster, waited for through kvraft's stubs (the compiled Debian protos above
    and kvraft's define the same package: they cannot share one process)."""

    def _wait_ready(self) -> None:
        wait_ready(self.endpoints)


def wait_ready(endpoints: tuple[str, ...]) -> None:
    """Waits until each endpoint takes a Put through etcd's API (kvraft's or etcd's)."""
    from kvraft.proto import etcdserverpb_pb2 as etcdpb
    from kvraft.proto import etcdserverpb_pb2_grpc as etcd_grpc

    _wait_puts(endpoints, etcd_grpc.KVStub, etcdpb.PutRequest, READY_TIMEOUT_S)


def _wait_puts(endpoints: tuple[str, ...], kv_stub: Any, put_request: Any,
               timeout_s: float, tls: ClientTLS | None = None) -> None:
    """Puts `ready` through each endpoint until it is taken, within `timeout_s` overall
    (the stub and request classes: Debian's compiled protos or kvraft's; `tls` for a
    cluster serving TLS)."""
    deadline = time.monotonic() + timeout_s
    for ep in endpoints:
        while True:
            try:
                with sync_channel(ep, tls) as ch:
                    kv_stub(ch).Put(put_request(key=b"ready", value=b"1"), timeout=3)
                break
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{ep} not ready through etcd's API after "
                                       f"{timeout_s:.0f} s") from None
                time.sleep(0.2)
