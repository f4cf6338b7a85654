"""`kvraft serve --read-mode lease` on a real 3-node cluster (thesis §6.4.1): linearizable
reads stay linearizable through leader and followers; the leader answers from its
lease while its followers are stopped (no round could complete); and a leader paused
with SIGSTOP, deposed meanwhile, serves no stale read when it resumes — neither
through a follower nor itself."""
from __future__ import annotations

import time

import grpc
import pytest

from kvraft.proto import kvraft_pb2 as pb

from .harness import LocalCluster, retry_unavailable

pytestmark = pytest.mark.cluster

LEASE_ARGS = ["--read-mode", "lease"]
# Attempts at catching the leader inside its lease with both followers stopped; each
# is a fresh lease (followers resumed in between), so a slow machine only costs tries.
LEASE_ATTEMPTS_MAX = 8


def test_linearizable_reads_in_lease_mode_see_every_acknowledged_write() -> None:
    with LocalCluster.start(3, extra_args=LEASE_ARGS) as cluster:
        leader = cluster.wait_leader()
        for i in range(20):
            writer = 1 + i % 3
            value = b"v%d" % i
            retry_unavailable(lambda w=writer, v=value: cluster.put(w, b"k", v))
            # Every member, right after the acknowledgement: the leader from its
            # lease, the followers with the index the leader gave them.
            for reader in cluster.nodes:
                got = retry_unavailable(lambda r=reader: cluster.get(r, b"k"))
                assert got == value, f"member {reader} read {got!r} after {value!r}"
        assert cluster.wait_leader() == leader


def test_lease_leader_answers_while_its_followers_are_stopped() -> None:
    # A safe-mode leader could not answer at all here (its heartbeat round needs a
    # follower); a lease holder answers until its lease ends. Slow ticks give a
    # 1.4 s lease (7 of 10 ticks of 0.2 s).
    with LocalCluster.start(3, tick_s=0.2, extra_args=LEASE_ARGS) as cluster:
        leader = cluster.wait_leader()
        retry_unavailable(lambda: cluster.put(leader, b"lease", b"held"))
        followers = [i for i in cluster.nodes if i != leader]
        outcomes = []
        for _ in range(LEASE_ATTEMPTS_MAX):
            time.sleep(0.5)  # a few heartbeats acknowledged: a fresh lease
            for node_id in followers:
                cluster.pause(node_id)
            try:
                value = cluster.get(leader, b"lease", timeout_s=1.0)
                outcomes.append(value)
            except grpc.RpcError as e:
                assert e.code() in (grpc.StatusCode.DEADLINE_EXCEEDED,
                                    grpc.StatusCode.UNAVAILABLE), e
                outcomes.append(None)
            finally:
                for node_id in followers:
                    cluster.resume(node_id)
            if outcomes[-1] is not None:
                break
            cluster.wait_leader()
        assert b"held" in outcomes, f"no read served from the lease: {outcomes}"
        assert set(outcomes) <= {b"held", None}


def test_paused_lease_leader_serves_no_stale_read_after_a_new_leader_wrote() -> None:
    # The pause is the lease's hazard: a leader stopped by SIGSTOP keeps its tick
    # clock where it was. Once resumed it must see its lease expired (node.py catches
    # its tick clock up before stepping anything) and confirm with a round, which
    # fails or shows the new leader's write.
    with LocalCluster.start(3, extra_args=LEASE_ARGS) as cluster:
        old = cluster.wait_leader()
        retry_unavailable(lambda: cluster.put(old, b"p", b"before"))
        assert retry_unavailable(lambda: cluster.get(old, b"p")) == b"before"
        rest = [i for i in cluster.nodes if i != old]
        cluster.pause(old)
        try:
            new = cluster.wait_leader(rest)
            retry_unavailable(lambda: cluster.put(new, b"p", b"after"))
            follower = next(i for i in rest if i != new)
            # Through a follower: it asks the leader it knows now for the index.
            assert retry_unavailable(lambda: cluster.get(follower, b"p")) == b"after"
            # And through the old leader, with the read already in its socket when it
            # wakes up still believing it leads.
            pending = cluster.kv(old).Get.future(pb.GetRequest(key=b"p"), timeout=10)
            time.sleep(0.2)
        finally:
            cluster.resume(old)
        try:
            r = pending.result()
            assert r.value == b"after", f"stale lease read from the old leader: {r.value!r}"
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.UNAVAILABLE, e
        for node_id in cluster.nodes:
            assert retry_unavailable(lambda n=node_id: cluster.get(n, b"p")) == b"after"
        # The mechanism ran: on waking, still leader, it caught its tick clock up.
        assert "tick clock" in cluster.log_tail(old, lines=400), cluster.log_tail(old)
        cluster.check_no_crash()
