"""README "Clients without kvraft.client": the stub snippet runs as written against a real
single node, the stub-generation command works, and the server reflection that the
grpcurl lines rely on describes the KV service."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from tests.cluster.harness import LocalCluster

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
SECTION = "## Clients without kvraft.client"
RUN_TIMEOUT_S = 60


def readme_blocks(lang: str = "") -> list[str]:
    """The fenced blocks of the README section, of language `lang` ("" = unlabelled)."""
    text = (ROOT / "README.md").read_text()
    assert SECTION in text, f"README.md has no section {SECTION!r}"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```(\w*)\n(.*?)^```", section, re.M | re.S)
    return [body for block_lang, body in blocks if block_lang == lang]


def command_lines(prefix: str) -> list[str]:
    lines = [ln.strip() for block in readme_blocks() for ln in block.splitlines()]
    return [ln for ln in lines if ln.startswith(prefix)]


@pytest.fixture(scope="module")
def node() -> Iterator[LocalCluster]:
    with LocalCluster.start(1) as cluster:
        cluster.wait_leader()
        yield cluster


def test_the_stub_snippet_runs_as_written(node: LocalCluster) -> None:
    snippets = readme_blocks("python")
    assert len(snippets) == 1, "expected one Python snippet in the section"
    address = node.nodes[1].client_address
    result = subprocess.run([sys.executable, "-c", snippets[0]], cwd=ROOT,
                            env={**os.environ, "KVRAFT_ENDPOINTS": address},
                            capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True hello leader: 1"
    assert node.get(1, b"greeting") == b"hello"   # the put really went through Raft


def test_the_stub_generation_command_makes_an_importable_kv_stub(tmp_path: Path) -> None:
    (tmp_path / "protos").symlink_to(ROOT / "protos")
    commands = command_lines("mkdir ") + command_lines("python -m grpc_tools.protoc")
    assert len(commands) == 2, commands
    for command in commands:
        argv = command.split()
        if argv[0] == "python":
            argv[0] = sys.executable
        result = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True,
                                timeout=RUN_TIMEOUT_S)
        assert result.returncode == 0, f"{command}: {result.stderr}"
    # A process of its own: the generated kvraft_pb2 registers the same .proto file as
    # kvraft.proto.kvraft_pb2 does, which one descriptor pool refuses twice.
    check = ("import kvraft_pb2, kvraft_pb2_grpc; "
             "assert kvraft_pb2_grpc.KVStub and kvraft_pb2_grpc.ClusterStub; "
             "print(sorted(kvraft_pb2.DESCRIPTOR.services_by_name))")
    result = subprocess.run([sys.executable, "-c", check], cwd=tmp_path / "gen",
                            capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['Cluster', 'KV']"


def test_server_reflection_describes_what_the_grpcurl_lines_call(node: LocalCluster) -> None:
    calls = {m.group(1) for ln in command_lines("grpcurl ")
             for m in [re.search(r" (kvraft\.\w+/\w+)$", ln)] if m}
    assert calls == {"kvraft.KV/Put", "kvraft.KV/Get", "kvraft.Cluster/Status"}
    with grpc.insecure_channel(node.nodes[1].client_address) as channel:
        db = ProtoReflectionDescriptorDatabase(channel)
        services = set(db.get_services())
        assert {"kvraft.KV", "kvraft.Cluster"} <= services
        for call in sorted(calls):
            service, method = call.split("/")
            proto = db.FindFileContainingSymbol(service)
            described = {m.name for s in proto.service for m in s.method
                         if f"{proto.package}.{s.name}" == service}
            assert method in described, f"reflection does not describe {call}"


@pytest.mark.skipif(shutil.which("grpcurl") is None,
                    reason="grpcurl is not installed (not packaged by Debian)")
def test_the_grpcurl_lines_run(node: LocalCluster) -> None:
    address = node.nodes[1].client_address
    lines = command_lines("grpcurl ")
    assert len(lines) == 4
    for line in lines:
        command = line.split("#")[0].replace("127.0.0.1:2379", address)
        result = subprocess.run(command, shell=True, capture_output=True, text=True,
                                timeout=RUN_TIMEOUT_S)
        assert result.returncode == 0, f"{command}: {result.stderr}"
