"""The whole chaos pipeline on a stand-in node (tests/chaos/fake_node.py), so that the
harness, nemesis, workload and checker are tested apart from kvraft itself: a
linearizable stand-in passes; one that answers from each node's own copy is caught
with a window, and its logs are kept."""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys

import pytest

from tests.chaos.cluster import Cluster
from tests.chaos.netns import NS_PREFIX
from tests.chaos.run import run_chaos

pytestmark = [pytest.mark.chaos, pytest.mark.slow]


def fake_argv(mode: str, cluster: Cluster, index: int) -> list[str]:
    return [sys.executable, "-m", "tests.chaos.fake_node", "--id", str(index),
            "--listen", cluster.client_address(index), "--primary", cluster.client_address(1),
            "--data-dir", str(cluster.data_dir(index)), "--mode", mode]


def _our_namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return [line.split()[0] for line in out.stdout.splitlines() if line.startswith(NS_PREFIX)]


def test_a_linearizable_store_passes_through_every_fault(netns_available: None) -> None:
    report = run_chaos(seed=5, duration_s=60.0, serve_argv=functools.partial(fake_argv, "primary"),
                       clients=4, etcd_api=False)
    assert report.ok, report.describe(report.t0_s)
    assert report.kinds_applied == {"isolate-leader", "split", "bridge", "kill", "pause"}
    applied = "\n".join(report.nemesis_log)
    for action in ("isolate ", "split majority", "bridge", "kill -9", "SIGSTOP",
                   "SIGCONT", "restart node"):
        assert action in applied
    assert report.ops > 100
    assert not report.workdir.exists()  # a passing run removes its data and logs
    assert not _our_namespaces()


def test_a_store_that_is_not_linearizable_is_caught_and_its_logs_kept(
    netns_available: None,
) -> None:
    report = run_chaos(seed=6, duration_s=10.0, serve_argv=functools.partial(fake_argv, "local"),
                       clients=4, etcd_api=False)
    try:
        assert not report.ok
        assert report.result is not None and report.result.violations
        violation = report.result.violations[0]
        assert 1 <= len(violation.window) < report.ops
        text = report.describe(report.t0_s)
        assert "seed 6" in text and "NOT linearizable" in text and "fault schedule" in text
        assert str(report.workdir) in text
        assert sorted(p.name for p in report.workdir.glob("node*.log")) == [
            f"node{i}.log" for i in range(1, 6)]
        assert not _our_namespaces()
    finally:
        shutil.rmtree(report.workdir, ignore_errors=True)
