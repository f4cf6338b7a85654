"""Fixtures for etcd's API on real kvraft clusters, judged by etcdctl 3.4 (Debian's
etcd-client, a client nobody here wrote): real `kvraft serve` processes on loopback
(tests/cluster/harness.py), etcdctl run as a subprocess against their client ports."""
from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from tests.cluster.harness import LocalCluster, wait_until

ETCDCTL = shutil.which("etcdctl")
# One etcdctl run, its connection and command included.
ETCDCTL_TIMEOUT_S = 30
MEMBERS_TIMEOUT_S = 30


def etcdctl_env() -> dict[str, str]:
    """This environment without the caller's ETCDCTL_* settings (a user's endpoints,
    certs) nor a proxy gRPC would dial loopback through; API v3."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("ETCDCTL_") and k.lower() not in ("http_proxy", "https_proxy")}
    env["ETCDCTL_API"] = "3"
    return env


def etcdctl(endpoints: str, *args: str, stdin: str | None = None,
            timeout_s: float = ETCDCTL_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """Run `etcdctl --endpoints=... ARGS` (API v3), `stdin` on its standard input; its own
    deadlines are bounded."""
    assert ETCDCTL is not None, "etcdctl is not installed (Debian: etcd-client)"
    return subprocess.run(
        [ETCDCTL, f"--endpoints={endpoints}", "--dial-timeout=5s", "--command-timeout=10s",
         *args], input=stdin, capture_output=True, text=True, env=etcdctl_env(),
        timeout=timeout_s)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    """etcdctl's stdout, after checking it succeeded."""
    assert result.returncode == 0, f"etcdctl failed ({result.returncode}): {result.stderr}"
    return result.stdout


def failed(result: subprocess.CompletedProcess[str]) -> str:
    """etcdctl's stderr, after checking it failed."""
    assert result.returncode != 0, f"etcdctl succeeded unexpectedly: {result.stdout}"
    return result.stderr


def all_published(cluster: LocalCluster) -> bool:
    """Every member of the cluster has published its client address (etcd: started)."""
    status = cluster.status(min(cluster.running_ids()), timeout_s=2.0)
    published = {m.id: m.client_address for m in status.members}
    return published == {i: n.client_address for i, n in cluster.nodes.items()
                         if i in published} and all(published.values())


@pytest.fixture(scope="module")
def etcd_cluster3() -> Iterator[LocalCluster]:
    """A healthy 3-node cluster whose members all published their addresses."""
    if ETCDCTL is None:
        pytest.skip("etcdctl is not installed (Debian: etcd-client)")
    with LocalCluster.start(3) as cluster:
        cluster.wait_leader()
        wait_until(lambda: all_published(cluster), MEMBERS_TIMEOUT_S,
                   "every member to publish its client address", cluster.all_log_tails)
        yield cluster
