"""The calls members make to each other ride the PEER port (server/etcd/member_calls.py),
so the client port's access check admits no call for a member mark in its metadata: on
a 3-node cluster with auth enabled and no --client-cert-auth, a client that forges the
mark is refused MemberPromote, HashKV and LeaseTimeToLive like any other call, while the
members' own forwarding (keep-alives and promote through a follower) and the leader's
corruption check still work."""
from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from kvraft.proto import etcdserverpb_pb2 as etcdpb
from kvraft.proto import etcdserverpb_pb2_grpc as etcdpb_grpc
from tests.cluster.harness import wait_until
from tests.etcd.conftest import ok

from .conftest import (
    ALICE_PASSWORD,
    ROOT_PASSWORD,
    RPC_TIMEOUT_S,
    AuthCluster,
    metadata,
    started_auth_cluster,
)

pytestmark = pytest.mark.cluster

# The marks a member's forwarded call carried on the client port before (etcd/lease.py
# and etcd/cluster.py FORWARDED_METADATA_KEY): spelled out, as a forger would.
LEASE_MARK = ("kvraft-lease-forwarded", "1")
MEMBER_MARK = ("kvraft-forwarded", "1")
# The leader's line after a corruption check round that compared every member.
ALL_AGREE = re.compile(r"corruption check at revision \d+: 3 members compared, all agree; "
                       r"0 skipped")
UNUSED_PEER_URL = "http://127.0.0.1:9"   # a learner that never starts


@pytest.fixture(scope="module")
def marked_cluster() -> Iterator[AuthCluster]:
    """3 members, auth enabled (tests/auth/conftest.py SETUP), plaintext ports, the
    corruption check every 200 ms."""
    with started_auth_cluster(extra_args=["--corrupt-check-time", "200ms"]) as auth:
        yield auth


def _leader(auth: AuthCluster, root: str) -> int:
    with grpc.insecure_channel(auth.endpoint(1)) as channel:
        return int(etcdpb_grpc.MaintenanceStub(channel).Status(
            etcdpb.StatusRequest(), timeout=RPC_TIMEOUT_S, metadata=metadata(root)).leader)


def _leader_and_follower(auth: AuthCluster) -> tuple[int, int]:
    leader = _leader(auth, auth.token("root", ROOT_PASSWORD))
    return leader, next(i for i in sorted(auth.cluster.nodes) if i != leader)


# (stub, method, request, mark): what a forged mark admitted without a user before.
FORGED: list[tuple[Callable[[grpc.Channel], Any], str, Any, tuple[str, str]]] = [
    (etcdpb_grpc.ClusterStub, "MemberPromote", etcdpb.MemberPromoteRequest(ID=0xDEAD),
     MEMBER_MARK),
    (etcdpb_grpc.MaintenanceStub, "HashKV", etcdpb.HashKVRequest(), MEMBER_MARK),
    (etcdpb_grpc.LeaseStub, "LeaseTimeToLive", etcdpb.LeaseTimeToLiveRequest(ID=1),
     LEASE_MARK),
]


@pytest.mark.parametrize(("stub", "method", "request_", "mark"), FORGED,
                         ids=[m for _, m, _, _ in FORGED])
def test_a_forged_member_mark_on_the_client_port_admits_no_one(
        marked_cluster: AuthCluster, stub: Callable[[grpc.Channel], Any], method: str,
        request_: Any, mark: tuple[str, str]) -> None:
    root = marked_cluster.token("root", ROOT_PASSWORD)
    leader = _leader(marked_cluster, root)
    with grpc.insecure_channel(marked_cluster.endpoint(leader)) as channel:
        call = getattr(stub(channel), method)
        # no user at all: etcd's answer to a call without a token
        with pytest.raises(grpc.RpcError) as refused:
            call(request_, timeout=RPC_TIMEOUT_S, metadata=(mark,))
        assert (refused.value.code(), refused.value.details()) == (
            grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: user name is empty")
        if method == "LeaseTimeToLive":
            return    # any user may ask it: the mark only stood in for the user
        # a user without root: the mark does not stand in for root either
        alice = marked_cluster.token("alice", ALICE_PASSWORD, leader)
        with pytest.raises(grpc.RpcError) as refused:
            call(request_, timeout=RPC_TIMEOUT_S, metadata=(mark, *metadata(alice)))
        assert (refused.value.code(), refused.value.details()) == (
            grpc.StatusCode.PERMISSION_DENIED, "etcdserver: permission denied")


def test_keep_alives_and_time_to_live_through_a_follower_reach_the_leader(
        marked_cluster: AuthCluster) -> None:
    leader, follower = _leader_and_follower(marked_cluster)
    alice = metadata(marked_cluster.token("alice", ALICE_PASSWORD, follower))
    with grpc.insecure_channel(marked_cluster.endpoint(follower)) as channel:
        stub = etcdpb_grpc.LeaseStub(channel)
        grant = stub.LeaseGrant(etcdpb.LeaseGrantRequest(TTL=30), timeout=RPC_TIMEOUT_S,
                                metadata=alice)
        answers = list(stub.LeaseKeepAlive(
            iter([etcdpb.LeaseKeepAliveRequest(ID=grant.ID)] * 3), timeout=RPC_TIMEOUT_S,
            metadata=alice))
        ttl = stub.LeaseTimeToLive(etcdpb.LeaseTimeToLiveRequest(ID=grant.ID),
                                   timeout=RPC_TIMEOUT_S, metadata=alice)
    # renewed by the leader (its header), forwarded by the follower over the peer port
    assert [(a.ID, a.TTL) for a in answers] == [(grant.ID, 30)] * 3
    assert {a.header.member_id for a in answers} == {leader}
    assert (ttl.header.member_id, ttl.grantedTTL) == (leader, 30) and ttl.TTL > 0
    # and etcdctl, as an operator would
    out = ok(marked_cluster.etcdctl("lease", "keep-alive", "--once", f"{grant.ID:x}",
                                    node_id=follower))
    assert f"lease {grant.ID:016x} keepalived with TTL(30)" in out


def test_member_promote_through_a_follower_is_answered_by_the_leader(
        marked_cluster: AuthCluster) -> None:
    """A follower cannot judge a learner's progress: it asks the leader, whose answer
    (not in sync: the learner never started) comes back through the follower."""
    _, follower = _leader_and_follower(marked_cluster)
    token = metadata(marked_cluster.token("root", ROOT_PASSWORD, follower))
    with grpc.insecure_channel(marked_cluster.endpoint(follower)) as channel:
        stub = etcdpb_grpc.ClusterStub(channel)
        added = stub.MemberAdd(etcdpb.MemberAddRequest(peerURLs=[UNUSED_PEER_URL],
                                                       isLearner=True),
                               timeout=RPC_TIMEOUT_S, metadata=token)
        try:
            with pytest.raises(grpc.RpcError) as refused:
                stub.MemberPromote(etcdpb.MemberPromoteRequest(ID=added.member.ID),
                                   timeout=RPC_TIMEOUT_S, metadata=token)
        finally:
            stub.MemberRemove(etcdpb.MemberRemoveRequest(ID=added.member.ID),
                              timeout=RPC_TIMEOUT_S, metadata=token)
    assert (refused.value.code(), refused.value.details()) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "etcdserver: can only promote a learner member which is in sync with leader")


def test_the_corruption_check_compares_every_member_with_auth(
        marked_cluster: AuthCluster) -> None:
    nodes = marked_cluster.cluster.nodes
    starts = {i: len(n.log_path.read_bytes()) for i, n in nodes.items()}

    def since() -> str:
        return "".join(n.log_path.read_bytes()[starts[i]:].decode(errors="replace")
                       for i, n in nodes.items())

    wait_until(lambda: ALL_AGREE.search(since()), 30,
               "a corruption check round that compared every member",
               marked_cluster.cluster.all_log_tails)
    assert "corruption check skips" not in since()
