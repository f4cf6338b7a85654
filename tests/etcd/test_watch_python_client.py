"""aetcd's watches (a Python etcd v3 client nobody here wrote, many watches on one
stream) against a follower of a 3-node kvraft cluster: a prefix with prev_kv, a key
with aetcd's DELETE-only filter (etcd's NOPUT), a replay from a revision, and a watch
from a compacted revision, which aetcd turns into its RevisionCompactedError. It runs in
a process of its own (aetcd_session.py says why)."""
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

SESSION = Path(__file__).with_name("aetcd_watch_session.py")
SESSION_TIMEOUT_S = 60.0
PROXY_VARIABLES = ("http_proxy", "https_proxy", "grpc_proxy", "all_proxy")


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster.start(3) as c:
        c.wait_leader()
        yield c


def test_aetcd_watches_through_a_follower(cluster: LocalCluster) -> None:
    leader = cluster.wait_leader()
    follower = next(i for i in cluster.nodes if i != leader)
    retry_unavailable(lambda: cluster.put(leader, b"/probe", b"1"))
    wait_until(lambda: cluster.get(follower, b"/probe", serializable=True) == b"1", 10,
               "the follower to apply the probe")
    host, port = cluster.nodes[follower].client_address.rsplit(":", 1)
    env = {k: v for k, v in os.environ.items() if k.lower() not in PROXY_VARIABLES}
    proc = subprocess.run([sys.executable, str(SESSION), host, port], capture_output=True,
                          text=True, env=env, timeout=SESSION_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    r = seen["first"]
    # Revisions: /pw/a=1 at r, /pw/b=2 at r+1, /other at r+2, /pw/a=3 at r+3, del at r+4.
    history = [
        {"kind": "PUT", "key": "/pw/a", "value": "1", "mod": r, "prev": None},
        {"kind": "PUT", "key": "/pw/b", "value": "2", "mod": r + 1, "prev": None},
        {"kind": "PUT", "key": "/pw/a", "value": "3", "mod": r + 3, "prev": "1"},
        {"kind": "DELETE", "key": "/pw/a", "value": "", "mod": r + 4, "prev": "3"},
    ]
    assert seen["prefix"] == history
    assert seen["deletes"] == [dict(history[3], prev=None)]
    assert seen["replay"] == [dict(e, prev=None) for e in history]
    assert seen["compacted"] == seen["latest"]
