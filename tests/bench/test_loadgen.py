"""The load generator against a real gRPC echo server on loopback."""
from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from kvraft.bench.loadgen import LoadError, LoadSpec, run_load
from kvraft.proto import kvraft_pb2, kvraft_pb2_grpc
from tests.bench.etcd import free_port

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
