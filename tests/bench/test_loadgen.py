"""The load generator against a real gRPC echo server on loopback."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from kvraft.bench.loadgen import LoadError, LoadSpec, run_load
from kvraft.proto import kvraft_pb2, kvraft_pb2_grpc
from kvraft.tls import ClientTLS
from tests.bench.etcd import ETCD_SRC, free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def echo_endpoint() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tests.bench.echo_server", "--port",
                             str(port)], cwd=ROOT)
    try:
        endpoint = f"127.0.0.1:{port}"
        with grpc.insecure_channel(endpoint) as ch:
            grpc.channel_ready_future(ch).result(timeout=30)
            kvraft_pb2_grpc.KVStub(ch).Put(kvraft_pb2.PutRequest(key=b"k"), timeout=10)
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_mixed_load_counts_every_operation_once(echo_endpoint: str) -> None:
    spec = LoadSpec(endpoints=(echo_endpoint,), clients=4, workers=2, duration_s=1.0,
                    keys=50, read_ratio=0.5, preload=True)
    seen: list[int] = []
    result = run_load(spec, progress=lambda _elapsed, ops: seen.append(ops))
    assert result.errors == {}
    assert result.ops == result.reads + result.writes > 0
    assert result.reads > 0 and result.writes > 0
    assert result.latency.count == result.ops
    assert result.read_latency.count == result.reads
    assert result.write_latency.count == result.writes
    assert 0 < result.latency.p50_ms <= result.latency.p99_ms <= result.latency.max_ms
    decoded = json.loads(result.to_json())
    assert decoded["ops"] == result.ops and decoded["spec"]["clients"] == 4
    assert "throughput" in result.format_table()
    assert seen == sorted(seen)  # progress counts only grow


def test_unreachable_endpoint_is_counted_as_errors_not_ops() -> None:
    dead = f"127.0.0.1:{free_port()}"
    result = run_load(LoadSpec(endpoints=(dead,), clients=1, duration_s=0.5,
                               request_timeout_s=0.2))
    assert result.ops == 0
    assert sum(result.errors.values()) > 0


@pytest.mark.parametrize("bad, message", [
    ({"endpoints": ()}, "endpoint"),
    ({"clients": 0}, "clients"),
    ({"duration_s": 0}, "duration"),
    ({"keys": 0}, "keys"),
    ({"read_ratio": 1.5}, "read ratio"),
])
def test_invalid_spec_is_refused(bad: dict, message: str) -> None:
    spec = LoadSpec(**{"endpoints": ("127.0.0.1:1",), **bad})
    with pytest.raises(ValueError, match=message):
        run_load(spec)


def test_unknown_driver_fails_the_run() -> None:
    spec = LoadSpec(endpoints=("127.0.0.1:1",), clients=1, duration_s=0.2,
                    driver="no.such.module:Driver")
    with pytest.raises(LoadError):
        run_load(spec)


class TokenCheckingStore:
    """A fake store for the drivers' auth: Authenticate hands out TOKEN, every KV call
    is refused UNAUTHENTICATED unless it carries it in the `token` metadata. Raw bytes
    in and out (no protos), so this process loads neither kvraft's nor etcd's."""

    TOKEN = "tok-1"

    def __init__(self) -> None:
        self.authenticate_requests: list[bytes] = []
        self.kv_calls = 0
        self._lock = threading.Lock()

    def authenticate(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        with self._lock:
            self.authenticate_requests.append(request)
        return b"\x12" + bytes([len(self.TOKEN)]) + self.TOKEN.encode()  # field 2: token

    def kv(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        if dict(context.invocation_metadata()).get("token") != self.TOKEN:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "etcdserver: invalid auth token")
        with self._lock:
            self.kv_calls += 1
        return b""

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        def unary(fn: Callable[[bytes, grpc.ServicerContext], bytes]
                  ) -> grpc.RpcMethodHandler:  # no (de)serializers: bytes in, bytes out
            return grpc.unary_unary_rpc_method_handler(fn)

        return [
            grpc.method_handlers_generic_handler(
                "etcdserverpb.Auth", {"Authenticate": unary(self.authenticate)}),
            grpc.method_handlers_generic_handler(
                "etcdserverpb.KV", {"Put": unary(self.kv), "Range": unary(self.kv)}),
            grpc.method_handlers_generic_handler(
                "kvraft.KV", {"Put": unary(self.kv), "Get": unary(self.kv)}),
        ]


@pytest.fixture
def token_store() -> Iterator[tuple[str, TokenCheckingStore]]:
    store = TokenCheckingStore()
    server = grpc.server(ThreadPoolExecutor(max_workers=4), handlers=store.handlers())
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", store
    finally:
        server.stop(grace=None)


@pytest.mark.parametrize("driver", [
    "kvraft",
    pytest.param("tests.bench.etcd:EtcdDriver", marks=pytest.mark.skipif(
        not (ETCD_SRC / "etcdserver/etcdserverpb/rpc.proto").exists(),
        reason="etcd's protos (golang-etcd-server-dev) are not installed")),
])
def test_driver_authenticates_once_and_sends_its_token_with_every_call(
        token_store: tuple[str, TokenCheckingStore], driver: str) -> None:
    endpoint, store = token_store
    spec = LoadSpec(endpoints=(endpoint,), clients=2, workers=2, duration_s=0.5, keys=20,
                    read_ratio=0.5, driver=driver, user="bench", password="s3cret")
    result = run_load(spec)
    assert result.errors == {}  # no call went without the token
    assert result.ops > 0 and store.kv_calls == result.ops
    assert len(store.authenticate_requests) == 2  # once per worker and endpoint
    assert all(b"bench" in r and b"s3cret" in r for r in store.authenticate_requests)


def test_driver_options_name_only_what_the_run_uses() -> None:
    plain = LoadSpec(endpoints=("127.0.0.1:1",))
    assert plain.driver_options() == {}
    tls = ClientTLS(cacert="/ca.crt")
    spec = LoadSpec(endpoints=("127.0.0.1:1",), tls=tls, user="bench", password="pw")
    assert spec.driver_options() == {"tls": tls, "user": "bench", "password": "pw"}
    with pytest.raises(ValueError, match="user name is empty"):
        run_load(LoadSpec(endpoints=("127.0.0.1:1",), user=""))
