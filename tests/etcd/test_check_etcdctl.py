"""etcdctl 3.4's `check datascale` and `check perf` against a 3-node kvraft cluster
(issue 13). Both write many keys under a prefix of their own from 50 clients, then
delete the prefix. datascale puts 10,000 keys of 512 + 512 bytes and reads
process_resident_memory_bytes from http://<first endpoint>/metrics before and after:
etcd serves /metrics on its client port, kvraft on its metrics listener, so that
listener is named first in --endpoints (clientv3 then leaves the endpoint that does not
speak gRPC and sends its requests to the others).

`check perf` puts at 150 writes/s for 60 s, a length etcdctl fixes (no flag shortens it):
it runs only when KVRAFT_CHECK_PERF=1, beyond CI's budget. Its verdicts on throughput,
slowest request and spread are timings of this machine and are not asserted; that no
request failed is."""
from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from tests.cluster.harness import LocalCluster
from tests.etcd.conftest import etcdctl, ok

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(shutil.which("etcdctl") is None,
                       reason="etcdctl is not installed (Debian's etcd-client, .ci/run)"),
]

DATASCALE_TIMEOUT_S = 240   # 10,000 puts from 50 clients: ~30 s on a loaded 2-core machine
PERF_TIMEOUT_S = 180        # 60 s of load, then the delete of the prefix
MEMORY_USED = re.compile(r"^PASS: Approximate system memory used : (-?\d+\.\d\d) MB\.$", re.M)
THROUGHPUT = re.compile(r"^(PASS: Throughput is|FAIL: Throughput too low:) (\d+) writes/s$",
                        re.M)


def run_check(endpoints: str, *args: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
    """`etcdctl check ...`: longer than one etcdctl run usually may take."""
    return etcdctl(endpoints, "check", *args, timeout_s=timeout_s)


def left_under(endpoints: str, prefix: str) -> str:
    return ok(etcdctl(endpoints, "get", "--prefix", "--keys-only", prefix)).strip()


def test_check_datascale_reports_the_memory_a_members_data_takes(
        etcd_cluster3: LocalCluster) -> None:
    measured = min(etcd_cluster3.nodes)
    endpoints = f"{etcd_cluster3.nodes[measured].metrics_address},{etcd_cluster3.endpoints()}"
    proc = run_check(endpoints, "datascale", timeout_s=DATASCALE_TIMEOUT_S)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert ("Start data scale check for work load [10000 key-value pairs, 1024 bytes per "
            "key-value, 50 concurrent clients].") in out
    assert "FAIL" not in out, out
    assert MEMORY_USED.search(out), out
    assert left_under(etcd_cluster3.endpoints(), "/etcdctl-check-datascale/") == ""


def test_check_datascale_refuses_a_prefix_that_has_keys(etcd_cluster3: LocalCluster) -> None:
    endpoints = etcd_cluster3.endpoints()
    ok(etcdctl(endpoints, "put", "/taken-datascale/k", "v"))
    proc = run_check(endpoints, "datascale", "--prefix", "/taken-datascale/",
                     timeout_s=DATASCALE_TIMEOUT_S)
    assert proc.returncode != 0
    assert ('prefix "/taken-datascale/" has keys. Delete with etcdctl del --prefix '
            "/taken-datascale/ first") in proc.stderr
    assert left_under(endpoints, "/taken-datascale/") == "/taken-datascale/k"


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("KVRAFT_CHECK_PERF") != "1",
                    reason="etcdctl check perf runs 60 s (fixed by etcdctl); "
                           "KVRAFT_CHECK_PERF=1 runs it")
def test_check_perf_puts_for_a_minute_without_a_failed_request(
        etcd_cluster3: LocalCluster) -> None:
    endpoints = etcd_cluster3.endpoints()
    proc = run_check(endpoints, "perf", "--load=s", timeout_s=PERF_TIMEOUT_S)
    out = proc.stdout + proc.stderr
    assert "FAIL: too many errors" not in out and "ERROR(" not in out, out
    throughput = THROUGHPUT.search(out)
    assert throughput is not None and int(throughput.group(2)) > 0, out
    assert left_under(endpoints, "/etcdctl-check-perf/") == ""
