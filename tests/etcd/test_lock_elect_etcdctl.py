"""etcdctl 3.4's `lock` and `elect` against a 3-node kvraft cluster (issue 13). etcdctl
builds both on the client side from etcd's concurrency package: a session lease kept
alive, a key under the name created with a Txn comparing its create revision with 0,
then a wait for the deletion of the key just before it (a Watch from a revision with
prev_kv). Nothing here is kvraft's own code: if kvraft's leases, txns or watches differed
from etcd's, a second holder would get in early, or never."""
from __future__ import annotations

import itertools
import re
import shutil
import time
from pathlib import Path

import pytest

from tests.cluster.harness import LocalCluster, wait_until
from tests.etcd.background import Background, etcdctl_background
from tests.etcd.conftest import etcdctl, ok

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(shutil.which("etcdctl") is None,
                       reason="etcdctl is not installed (Debian's etcd-client, .ci/run)"),
]

ACQUIRE_TIMEOUT_S = 30.0
# How long the second locker is watched while the first holds the lock: long enough for
# a wrong grant (it would come at once, from the Txn), short for CI.
HELD_FOR_S = 2.0
# etcd's concurrency keys: NAME/<session lease id in hex>.
HOLDER_KEY = re.compile(r"^(?P<name>.+)/(?P<lease>[0-9a-f]+)$")


def holder_key(job: Background, name: str) -> str | None:
    """The NAME/<lease> key etcdctl printed once it held the lock (or won), if yet."""
    for line in job.lines():
        m = HOLDER_KEY.match(line)
        if m is not None and m.group("name") == name:
            return line
    return None


def elected(job: Background, name: str, proposal: str) -> bool:
    """etcdctl printed NAME/<lease> and then the proposal: it won. (The two lines are
    two writes: the key may be read before the proposal is written.)"""
    lines = job.lines()
    return any(HOLDER_KEY.match(key) is not None and key.startswith(f"{name}/")
               and value == proposal for key, value in itertools.pairwise(lines))


def test_a_second_locker_waits_until_the_first_releases(
        etcd_cluster3: LocalCluster, tmp_path: Path) -> None:
    endpoints = etcd_cluster3.endpoints()
    with etcdctl_background(endpoints, "lock", "judges-lock",
                            output=tmp_path / "first.out") as first:
        wait_until(lambda: holder_key(first, "judges-lock"), ACQUIRE_TIMEOUT_S,
                   "the first locker to hold the lock", first.text)
        first_key = holder_key(first, "judges-lock")
        # The second runs a command while it holds the lock; etcdctl hands it the key.
        with etcdctl_background(endpoints, "lock", "judges-lock", "--", "sh", "-c",
                                'echo "held $ETCD_LOCK_KEY"',
                                output=tmp_path / "second.out") as second:
            time.sleep(HELD_FOR_S)
            assert second.running() and "held" not in second.text(), second.text()
            assert first.running()
            assert first.stop() == 0, first.text()   # SIGINT: etcdctl unlocks
            wait_until(lambda: not second.running(), ACQUIRE_TIMEOUT_S,
                       "the second locker to run its command", second.text)
            assert second.proc.returncode == 0, second.text()
    held = [line for line in second.lines() if line.startswith("held ")]
    assert len(held) == 1, second.text()
    second_key = held[0].removeprefix("held ")
    assert HOLDER_KEY.match(second_key) and second_key != first_key
    # Both released: nothing is left under the lock's name.
    left = ok(etcdctl(endpoints, "get", "--prefix", "judges-lock/"))
    assert left == "", left


def test_a_killed_holders_lock_passes_on_once_its_session_lease_expires(
        etcd_cluster3: LocalCluster, tmp_path: Path) -> None:
    """SIGKILL leaves no time to unlock: the lock goes with the holder's session lease
    (--ttl 2), which kvraft expires once etcdctl stops keeping it alive."""
    endpoints = etcd_cluster3.endpoints()
    with etcdctl_background(endpoints, "lock", "--ttl", "2", "judges-killed",
                            output=tmp_path / "killed.out") as holder:
        wait_until(lambda: holder_key(holder, "judges-killed"), ACQUIRE_TIMEOUT_S,
                   "the first locker to hold the lock", holder.text)
        with etcdctl_background(endpoints, "lock", "judges-killed", "--", "echo", "next",
                                output=tmp_path / "next.out") as waiter:
            time.sleep(HELD_FOR_S / 2)
            assert waiter.running() and "next" not in waiter.lines(), waiter.text()
            holder.proc.kill()
            holder.proc.wait(timeout=ACQUIRE_TIMEOUT_S)
            wait_until(lambda: not waiter.running(), ACQUIRE_TIMEOUT_S,
                       "the waiter to get the lock once the lease expired", waiter.text)
            assert waiter.proc.returncode == 0 and "next" in waiter.lines(), waiter.text()


def test_an_observer_sees_each_leader_of_an_election_in_turn(
        etcd_cluster3: LocalCluster, tmp_path: Path) -> None:
    endpoints = etcd_cluster3.endpoints()
    with etcdctl_background(endpoints, "elect", "judges-elect", "alpha",
                            output=tmp_path / "alpha.out") as alpha:
        wait_until(lambda: elected(alpha, "judges-elect", "alpha"), ACQUIRE_TIMEOUT_S,
                   "alpha to win the election", alpha.text)
        with etcdctl_background(endpoints, "elect", "judges-elect", "beta",
                                output=tmp_path / "beta.out") as beta, \
                etcdctl_background(endpoints, "elect", "-l", "judges-elect",
                                   output=tmp_path / "observer.out") as observer:
            wait_until(lambda: "alpha" in observer.lines(), ACQUIRE_TIMEOUT_S,
                       "the observer to see alpha lead", observer.text)
            time.sleep(HELD_FOR_S)
            assert holder_key(beta, "judges-elect") is None, beta.text()
            assert alpha.stop() == 0, alpha.text()   # SIGINT: etcdctl resigns
            wait_until(lambda: elected(beta, "judges-elect", "beta"), ACQUIRE_TIMEOUT_S,
                       "beta to win once alpha resigned", beta.text)
            wait_until(lambda: "beta" in observer.lines(), ACQUIRE_TIMEOUT_S,
                       "the observer to see beta lead", observer.text)
            assert observer.running(), observer.text()
    proposals = [line for line in observer.lines() if line in ("alpha", "beta")]
    assert proposals == ["alpha", "beta"], observer.text()
