"""kvraft under faults: a real 5-node cluster in network namespaces, clients recording
every operation, the seeded nemesis, then the linearizability check (and the final
reads after a SIGKILL of every node, so no acknowledged write may be lost).

Each seed's 60 s schedule holds every fault kind (asserted first); one more seed runs the
nodes with lease reads. A failure prints the seed, the schedule as applied, the
smallest failing window and where the logs are; `make chaos SEED=<seed> DURATION=60`
replays the schedule."""

from __future__ import annotations

import pytest

from tests.chaos.nemesis import FAULT_KINDS, schedule
from tests.chaos.run import NODES, run_chaos

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

DURATION_S = 60.0
SEEDS = [11, 12, 13]


@pytest.mark.parametrize("seed", SEEDS)
def test_kvraft_stays_linearizable_under_faults(netns_available: None, seed: int) -> None:
    faults, _ = schedule(seed, DURATION_S, NODES)
    assert {f.kind for f in faults} == set(FAULT_KINDS)
    report = run_chaos(seed, DURATION_S)
    text = report.describe(report.t0_s)
    print(text)
    assert report.ok, text
    assert report.result is not None and report.result.ops_checked > 500, text
    assert set(report.final_values) == {b"chaos-%d" % k for k in range(4)}
    # The etcd workloads' checks passed (report.ok) and had something to check.
    counts = report.etcd_counts
    assert counts is not None, text
    assert counts.txn_ok > 100 and counts.keepalives_ok > 20, text
    assert counts.fenced_writes + counts.stale_writes_refused > 0, text


# Lease reads (`kvraft serve --read-mode lease`, thesis §6.4.1) under the same nemesis,
# SIGSTOP of the leader included: the history stays linearizable.
LEASE_SEEDS = [21]


@pytest.mark.parametrize("seed", LEASE_SEEDS)
def test_kvraft_with_lease_reads_stays_linearizable_under_faults(netns_available: None,
                                                                 seed: int) -> None:
    faults, _ = schedule(seed, DURATION_S, NODES)
    assert {f.kind for f in faults} == set(FAULT_KINDS)
    report = run_chaos(seed, DURATION_S, read_mode="lease")
    text = report.describe(report.t0_s)
    print(text)
    assert report.ok, text
    assert "READ_MODE=lease" in text
    assert report.result is not None and report.result.ops_checked > 500, text
