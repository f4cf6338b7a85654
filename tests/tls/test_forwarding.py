"""Members also dial each other's client port: a follower forwards etcd's lease
keep-alives (and MemberPromote) to the leader's. With TLS and --client-cert-auth on
the client ports, that forwarding must speak TLS too, verify the leader with
--trusted-ca-file and present the member's own certificate (server/tls.py,
client_port_channel) — else a keep-alive sent to a follower fails."""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from kvraft.proto import etcdserverpb_pb2 as etcdpb
from kvraft.proto import etcdserverpb_pb2_grpc as etcdpb_grpc
from tests.cluster.harness import LocalCluster

from .tlscluster import CertDir, tls_cluster

pytestmark = pytest.mark.cluster

CALL_TIMEOUT_S = 15.0


@pytest.fixture(scope="module")
def mtls3(certs: CertDir) -> Iterator[LocalCluster]:
    def flags(i: int) -> list[str]:
        return [*certs.client_port_flags(i, client_cert_auth=True), *certs.peer_flags(i)]

    with tls_cluster(3, flags, certs.channel_credentials()) as cluster:
        cluster.wait_leader()
        yield cluster


def test_a_keep_alive_sent_to_a_follower_reaches_the_leader_over_tls(
        mtls3: LocalCluster) -> None:
    leader = mtls3.wait_leader()
    follower = next(i for i in sorted(mtls3.nodes) if i != leader)
    to_leader = etcdpb_grpc.LeaseStub(mtls3.nodes[leader].grpc_channel())
    grant = to_leader.LeaseGrant(etcdpb.LeaseGrantRequest(TTL=30), timeout=CALL_TIMEOUT_S)
    assert grant.ID != 0 and grant.TTL == 30
    to_follower = etcdpb_grpc.LeaseStub(mtls3.nodes[follower].grpc_channel())
    answers = list(to_follower.LeaseKeepAlive(
        iter([etcdpb.LeaseKeepAliveRequest(ID=grant.ID)] * 3), timeout=CALL_TIMEOUT_S))
    assert [(a.ID, a.TTL) for a in answers] == [(grant.ID, 30)] * 3
    # The leader renewed them: the follower forwarded each one over its TLS channel.
    assert {a.header.member_id for a in answers} == {leader}
