"""aetcd, a Python etcd v3 client nobody here wrote, against a 3-node kvraft cluster
through etcd's KV service: put, get (with etcd's revisions), prefix, txn on value,
version and mod revision with both branches, delete with prev_kv, and etcd's error
message for an empty key. It runs in a process of its own (aetcd_session.py says why)."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.harness import LocalCluster, retry_unavailable, wait_until

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(importlib.util.find_spec("aetcd") is None,
                       reason="aetcd is not installed (the test extra pins it)"),
]

SESSION = Path(__file__).with_name("aetcd_session.py")
SESSION_TIMEOUT_S = 60.0
PROXY_VARIABLES = ("http_proxy", "https_proxy", "grpc_proxy", "all_proxy")


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster.start(3) as c:
        c.wait_leader()
        yield c


def run_session(address: str) -> dict[str, object]:
    host, port = address.rsplit(":", 1)
    # No proxy: gRPC would dial loopback through it.
    env = {k: v for k, v in os.environ.items() if k.lower() not in PROXY_VARIABLES}
    proc = subprocess.run([sys.executable, str(SESSION), host, port], capture_output=True,
                          text=True, env=env, timeout=SESSION_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr
    result: dict[str, object] = json.loads(proc.stdout)
    return result


def test_aetcd_reads_and_writes_through_a_follower(cluster: LocalCluster) -> None:
    leader = cluster.wait_leader()
    follower = next(i for i in cluster.nodes if i != leader)
    # A fresh cluster's bootstrap entries set the cluster version that etcd's writes
    # need; once a write has applied on the follower, so have they.
    retry_unavailable(lambda: cluster.put(leader, b"/probe", b"1"))
    wait_until(lambda: cluster.get(follower, b"/probe", serializable=True) == b"1", 10,
               "the follower to apply the probe")
    seen = run_session(cluster.nodes[follower].client_address)
    r1 = seen["put_revision"]
    assert isinstance(r1, int) and r1 >= 2
    assert seen["get"] == {"value": "1", "create": r1, "mod": r1, "version": 1,
                           "member_id": follower, "header_revision": r1}
    assert seen["prev_value"] == "1" and seen["second_revision"] == r1 + 1
    assert seen["prefix"] == [["/py/a", "2"], ["/py/b", "3"]] and seen["prefix_count"] == 2
    assert seen["missing"] is True
    assert seen["txn_succeeded"] is True and seen["txn_read"] == ["2"]
    assert seen["failed_txn_succeeded"] is False and seen["b_after_failure_branch"] is True
    assert seen["deleted"] == 1 and seen["deleted_prev"] == "2"
    assert seen["empty_key_error"] == "etcdserver: key is not provided"

