"""etcd's own command-line client, which nobody here wrote, against a 3-node kvraft
cluster through etcd's `Lease` service (SPEC §6, issue 12 "Leases"): Debian's etcdctl
3.4 grants, lists, asks the time to live (with keys), keeps alive (once, and as a
stream), revokes; a key put with --lease disappears once its lease is left to expire,
and stays while it is kept alive, through a follower, and through the kill -9 of the
leader (etcd #9395/#17132: a leader change must not cut a kept-alive lease short).
Its output is asserted, not only its exit code.

Every test uses leases and keys of its own; the leader-kill test runs last in the
module (it leaves the shared cluster with two members)."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
import pytest

from kvraft.proto import etcdserverpb_pb2 as etcdpb
from kvraft.proto import etcdserverpb_pb2_grpc as etcdpb_grpc
from tests.cluster.harness import LocalCluster, wait_until

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(shutil.which("etcdctl") is None,
                       reason="etcdctl is not installed (Debian's etcd-client, .ci/run)"),
]

PROXY_VARIABLES = ("http_proxy", "https_proxy", "grpc_proxy", "all_proxy")
ETCDCTL_TIMEOUT_S = 30.0
WRITABLE_TIMEOUT_S = 30.0
# How late past its TTL an abandoned lease may go: the leader notices at once (its
# timer sleeps until the deadline), then one revoke entry commits; generous for a
# loaded 2-core machine.
EXPIRY_BOUND_S = 5.0
KEEP_ALIVE_STOP_S = 5.0
# The leader checkpoints remaining TTLs every 5 s (lessor.CHECKPOINT_INTERVAL_S) for the
# leases whose remaining moved 5 s: a lease has a committed checkpoint within ~10 s.
CHECKPOINTED_AFTER_S = 11.0
GRANTED = re.compile(r"^lease ([0-9a-f]+) granted with TTL\((\d+)s\)$")
TIME_TO_LIVE = re.compile(
    r"^lease ([0-9a-f]+) granted with TTL\((\d+)s\), remaining\((-?\d+)s\)"
    r"(?:, attached keys\(\[(.*)\]\))?$")


class Etcdctl:
    """etcdctl with some of the cluster's client addresses as --endpoints."""

    def __init__(self, endpoints: Sequence[str]) -> None:
        self.endpoints = ",".join(endpoints)
        # The caller's ETCDCTL_* settings must not leak in (a user's endpoints, certs),
        # nor a proxy that gRPC would dial loopback through.
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_")
                    and k.lower() not in PROXY_VARIABLES}
        self.env["ETCDCTL_API"] = "3"

    def argv(self, *args: str) -> list[str]:
        return ["etcdctl", f"--endpoints={self.endpoints}", "--dial-timeout=5s",
                "--command-timeout=10s", *args]

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = self.argv(*args)
        proc = subprocess.run(argv, capture_output=True, text=True, env=self.env,
                              timeout=ETCDCTL_TIMEOUT_S)
        if check and proc.returncode != 0:
            raise AssertionError(f"{argv} exited {proc.returncode}: {proc.stderr}")
        return proc

    def out(self, *args: str) -> str:
        return self.run(*args).stdout.strip()

    def grant(self, ttl: int) -> tuple[int, int]:
        """(lease id, granted TTL)."""
        m = GRANTED.match(self.out("lease", "grant", str(ttl)))
        assert m is not None
        return int(m.group(1), 16), int(m.group(2))

    def time_to_live(self, lease_id: int, *, keys: bool = False
                     ) -> tuple[int, int, list[str]] | None:
        """(granted TTL, remaining, attached keys); None once expired or revoked."""
        args = ["lease", "timetolive", f"{lease_id:016x}", *(["--keys"] if keys else [])]
        text = self.out(*args)
        if text == f"lease {lease_id:016x} already expired":
            return None
        m = TIME_TO_LIVE.match(text)
        assert m is not None, text
        assert int(m.group(1), 16) == lease_id
        attached = m.group(4).split() if m.group(4) else []
        return int(m.group(2)), int(m.group(3)), attached

    def leases(self) -> set[int]:
        lines = self.out("lease", "list").splitlines()
        assert re.fullmatch(r"found \d+ leases", lines[0]), lines
        assert int(lines[0].split()[1]) == len(lines) - 1
        return {int(line, 16) for line in lines[1:]}

    def value(self, key: str) -> str | None:
        lines = self.out("get", key).splitlines()
        if not lines:
            return None
        assert lines[0] == key, lines
        return lines[1]

    def keep_alive(self, lease_id: int, output: Path) -> subprocess.Popen[bytes]:
        """`lease keep-alive` as a stream (until stopped), its output into `output`:
        clientv3 renews every TTL/3."""
        with output.open("wb") as out:
            return subprocess.Popen(self.argv("lease", "keep-alive", f"{lease_id:016x}"),
                                    stdout=out, stderr=subprocess.STDOUT, env=self.env)


def stop(proc: subprocess.Popen[bytes], output: Path) -> str:
    """End a keep-alive stream by its pid (SIGINT ends etcdctl at once); its output."""
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=KEEP_ALIVE_STOP_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=KEEP_ALIVE_STOP_S)
    return output.read_text()


def keep_alive_lines(output: str, lease_id: int, ttl: int) -> int:
    return output.count(f"lease {lease_id:016x} keepalived with TTL({ttl})")


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster.start(3) as c:
        c.wait_leader()
        yield c


def etcdctl_at(cluster: LocalCluster, *node_ids: int) -> Etcdctl:
    return Etcdctl([cluster.nodes[i].client_address for i in node_ids or cluster.nodes])


@pytest.fixture(scope="module")
def ctl(cluster: LocalCluster) -> Etcdctl:
    """etcdctl on every member, once the cluster takes etcd writes (a grant)."""
    e = etcdctl_at(cluster)
    last_error = [""]

    def writable() -> bool:
        proc = e.run("lease", "grant", "60", check=False)
        last_error[0] = proc.stderr
        return proc.returncode == 0

    wait_until(writable, WRITABLE_TIMEOUT_S, "the cluster to take lease grants",
               on_timeout=lambda: f"etcdctl said: {last_error[0]}")
    return e


@pytest.fixture(scope="module")
def kv(ctl: Etcdctl) -> Etcdctl:
    """The same, for the tests that also need etcd's KV service (put --lease)."""
    proc = ctl.run("put", "/lease-probe", "1", check=False)
    if proc.returncode != 0 and "code = Unimplemented" in proc.stderr:
        pytest.skip("etcd's KV service (kvraft/server/etcd/kv.py) is not on this branch")
    assert proc.returncode == 0, proc.stderr
    return ctl


def followers(cluster: LocalCluster) -> list[int]:
    leader = cluster.wait_leader()
    return [i for i in cluster.running_ids() if i != leader]


def lease_stub(cluster: LocalCluster, node_id: int) -> etcdpb_grpc.LeaseStub:
    return cluster.nodes[node_id].stub(etcdpb_grpc.LeaseStub)


# --- grant, time to live, list, revoke -------------------------------------------------

def test_grant_then_every_member_reports_the_ttl_and_lists_the_lease(
        cluster: LocalCluster, ctl: Etcdctl) -> None:
    lease_id, ttl = ctl.grant(120)
    assert ttl == 120 and lease_id > 0
    for node_id in cluster.running_ids():   # followers ask the leader
        at = etcdctl_at(cluster, node_id)
        answer = at.time_to_live(lease_id)
        assert answer is not None
        granted, remaining, keys = answer
        assert granted == 120 and 100 <= remaining <= 120 and keys == []
        assert lease_id in at.leases()


def test_revoke_removes_the_lease_and_a_second_revoke_is_not_found(ctl: Etcdctl) -> None:
    lease_id, _ = ctl.grant(120)
    assert ctl.out("lease", "revoke", f"{lease_id:016x}") == f"lease {lease_id:016x} revoked"
    assert ctl.time_to_live(lease_id) is None
    assert lease_id not in ctl.leases()
    again = ctl.run("lease", "revoke", f"{lease_id:016x}", check=False)
    assert again.returncode != 0
    assert "etcdserver: requested lease not found" in again.stderr


def test_a_ttl_below_the_minimum_is_raised_and_a_huge_one_is_refused(ctl: Etcdctl) -> None:
    # The cluster's election timeout is 10 ticks of 0.05 s: minTTL = ceil(0.75) = 1 s.
    _, ttl = ctl.grant(0)
    assert ttl == 1
    huge = ctl.run("lease", "grant", "9000000001", check=False)
    assert huge.returncode != 0 and "etcdserver: too large lease TTL" in huge.stderr
    _, ttl = ctl.grant(9_000_000_000)
    assert ttl == 9_000_000_000


def test_a_grant_of_a_taken_id_fails_like_etcd(cluster: LocalCluster) -> None:
    """etcdctl 3.4 cannot choose the id; etcd's own gRPC request can."""
    stub = lease_stub(cluster, followers(cluster)[0])
    lease_id = 0x6b7261667401
    first = stub.LeaseGrant(etcdpb.LeaseGrantRequest(ID=lease_id, TTL=60), timeout=10)
    assert (lease_id, 60) == (first.ID, first.TTL)
    assert first.header.revision > 0
    with pytest.raises(grpc.RpcError) as info:
        stub.LeaseGrant(etcdpb.LeaseGrantRequest(ID=lease_id, TTL=60), timeout=10)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert info.value.details() == "etcdserver: lease already exists"
    with pytest.raises(grpc.RpcError) as info:
        stub.LeaseRevoke(etcdpb.LeaseRevokeRequest(ID=lease_id + 1), timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_keep_alive_once_through_a_follower_renews_the_lease(
        cluster: LocalCluster, ctl: Etcdctl) -> None:
    lease_id, _ = ctl.grant(8)
    time.sleep(3.0)
    follower = etcdctl_at(cluster, followers(cluster)[0])
    before = follower.time_to_live(lease_id)
    assert before is not None and before[1] <= 5
    assert follower.out("lease", "keep-alive", "--once", f"{lease_id:016x}") == \
        f"lease {lease_id:016x} keepalived with TTL(8)"
    after = follower.time_to_live(lease_id)
    assert after is not None and after[1] >= 6


def test_keep_alives_pipelined_on_one_stream_through_a_follower_answer_in_order(
        cluster: LocalCluster, ctl: Etcdctl) -> None:
    """A client renewing many leases on one stream (as clientv3 does) gets one answer per
    request, in request order, also when a follower forwards them; an unknown lease's
    answer is TTL 0, as etcd's."""
    leases = [ctl.grant(30 + i)[0] for i in range(4)]
    unknown = 0x5eed
    asked = [*leases * 25, unknown]
    stub = lease_stub(cluster, followers(cluster)[0])
    answers = list(stub.LeaseKeepAlive(
        iter([etcdpb.LeaseKeepAliveRequest(ID=i) for i in asked]), timeout=30))
    assert [a.ID for a in answers] == asked
    ttl_of = {lease_id: 30 + i for i, lease_id in enumerate(leases)} | {unknown: 0}
    assert [a.TTL for a in answers] == [ttl_of[i] for i in asked]
    assert len({a.header.member_id for a in answers}) == 1   # the leader answered all


def test_a_forwarded_keep_alive_that_reaches_a_follower_is_refused_not_bounced(
        cluster: LocalCluster, ctl: Etcdctl) -> None:
    """Two members that disagree on the leader must not bounce a keep-alive between
    them: a forwarded one that reaches a member that does not lead fails UNAVAILABLE."""
    lease_id, _ = ctl.grant(30)
    stub = lease_stub(cluster, followers(cluster)[0])
    with pytest.raises(grpc.RpcError) as info:
        list(stub.LeaseKeepAlive(iter([etcdpb.LeaseKeepAliveRequest(ID=lease_id)]),
                                 metadata=(("kvraft-lease-forwarded", "1"),), timeout=10))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert info.value.details() == "etcdserver: not leader"


def test_keep_alive_of_an_unknown_lease_says_not_found(ctl: Etcdctl) -> None:
    proc = ctl.run("lease", "keep-alive", "--once", "123456789abcdef", check=False)
    assert proc.returncode != 0
    assert "etcdserver: requested lease not found" in proc.stderr


def test_an_abandoned_lease_expires_within_its_ttl_plus_the_bound(ctl: Etcdctl) -> None:
    lease_id, ttl = ctl.grant(2)
    granted_at = time.monotonic()
    wait_until(lambda: lease_id not in ctl.leases(), ttl + EXPIRY_BOUND_S,
               f"lease {lease_id:016x} to expire")
    assert time.monotonic() - granted_at >= ttl - 0.5   # not before its time either
    assert ctl.time_to_live(lease_id) is None


# --- keys attached with put --lease ----------------------------------------------------

def test_a_key_put_with_a_lease_disappears_after_the_ttl(kv: Etcdctl) -> None:
    lease_id, ttl = kv.grant(3)
    granted_at = time.monotonic()
    assert kv.out("put", "--lease", f"{lease_id:016x}", "/lease/expiring", "v") == "OK"
    assert kv.value("/lease/expiring") == "v"
    answer = kv.time_to_live(lease_id, keys=True)
    assert answer is not None and answer[2] == ["/lease/expiring"]
    wait_until(lambda: kv.value("/lease/expiring") is None, ttl + EXPIRY_BOUND_S,
               "the key of the abandoned lease to be deleted")
    assert time.monotonic() - granted_at >= ttl - 0.5
    assert lease_id not in kv.leases()


def test_a_put_with_an_unknown_lease_is_refused(kv: Etcdctl) -> None:
    proc = kv.run("put", "--lease", "1234abcd", "/lease/none", "v", check=False)
    assert proc.returncode != 0
    assert "etcdserver: requested lease not found" in proc.stderr


def test_a_revoke_deletes_the_leases_keys(kv: Etcdctl) -> None:
    lease_id, _ = kv.grant(120)
    for key in ("/lease/r/a", "/lease/r/b"):
        kv.out("put", "--lease", f"{lease_id:016x}", key, "v")
    answer = kv.time_to_live(lease_id, keys=True)
    assert answer is not None and sorted(answer[2]) == ["/lease/r/a", "/lease/r/b"]
    kv.out("lease", "revoke", f"{lease_id:016x}")
    assert kv.value("/lease/r/a") is None and kv.value("/lease/r/b") is None


def test_keep_alive_through_a_follower_keeps_the_key(cluster: LocalCluster, kv: Etcdctl,
                                                     tmp_path: Path) -> None:
    lease_id, ttl = kv.grant(3)
    kv.out("put", "--lease", f"{lease_id:016x}", "/lease/kept", "v")
    follower = etcdctl_at(cluster, followers(cluster)[0])
    log = tmp_path / "keep-alive.out"
    stream = follower.keep_alive(lease_id, log)
    try:
        time.sleep(3 * ttl)
        assert kv.value("/lease/kept") == "v"
    finally:
        output = stop(stream, log)
    assert keep_alive_lines(output, lease_id, ttl) >= 3, output
    # Left alone now, it goes.
    wait_until(lambda: kv.value("/lease/kept") is None, ttl + EXPIRY_BOUND_S,
               "the key to be deleted once its keep-alive stopped")


# --- failover (last: it kills the shared cluster's leader) ------------------------------

def test_a_lease_kept_alive_every_third_of_its_ttl_survives_killing_the_leader(
        cluster: LocalCluster, kv: Etcdctl, tmp_path: Path) -> None:
    """Issue 12: a client that keeps a lease alive every TTL/3 never loses it because
    of a failover. etcdctl's client renews every TTL/3 against whichever member it
    reaches; the leader is killed (SIGKILL) mid-way; after more than a TTL under the new
    leader the key is still there.

    Beside it, a 60 s lease nobody keeps alive: the new leader neither restarts it
    (etcd #9395: it starts from the remaining TTL the old leader checkpointed through
    Raft, which checkpoints every 5 s once a lease's remaining moved 5 s) nor cuts it
    short (its remaining is at least what the client was promised)."""
    abandoned_id, _ = kv.grant(60)
    abandoned_at = time.monotonic()
    lease_id, ttl = kv.grant(6)
    kv.out("put", "--lease", f"{lease_id:016x}", "/lease/failover", "v")
    log = tmp_path / "keep-alive.out"
    stream = kv.keep_alive(lease_id, log)
    try:
        # Two checkpoint rounds pass: the abandoned lease's is <= 55 s by then.
        time.sleep(max(ttl / 2, abandoned_at + CHECKPOINTED_AFTER_S - time.monotonic()))
        old_leader = cluster.wait_leader()
        before_kill = keep_alive_lines(log.read_text(), lease_id, ttl)
        cluster.kill9(old_leader)
        new_leader = cluster.wait_leader(exclude=[old_leader])
        survivors = etcdctl_at(cluster, *cluster.running_ids())
        abandoned = survivors.time_to_live(abandoned_id)
        promised = 60 - (time.monotonic() - abandoned_at)
        assert abandoned is not None
        assert abandoned[1] <= 56, f"restarted by the new leader: {abandoned}"
        assert abandoned[1] >= promised - 1, f"cut short: {abandoned}, {promised:.1f}"
        time.sleep(ttl + 2)
        assert survivors.value("/lease/failover") == "v"
        answer = survivors.time_to_live(lease_id)
        assert answer is not None and answer[1] > 0, answer
        assert new_leader != old_leader
    finally:
        output = stop(stream, log)
    assert f"lease {lease_id:016x} expired or revoked" not in output, output
    # Renewals went on after the kill: the lease's TTL / 3 = 2 s apart, for > 8 s.
    assert keep_alive_lines(output, lease_id, ttl) - before_kill >= 3, output
