"""Members make etcd calls to each other on the PEER port: a follower forwards etcd's
lease keep-alives (and MemberPromote) to the leader's, the leader asks for HashKV
(server/etcd/member_calls.py). With peer mutual TLS that forwarding presents the
member's peer certificate (server/tls.py, member_channel) — else a keep-alive sent to a
follower fails — and the peer port serves these calls only to a certificate that names
a current member."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
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
    to_leader = mtls3.nodes[leader].stub(etcdpb_grpc.LeaseStub)
    grant = to_leader.LeaseGrant(etcdpb.LeaseGrantRequest(TTL=30), timeout=CALL_TIMEOUT_S)
    assert grant.ID != 0 and grant.TTL == 30
    to_follower = mtls3.nodes[follower].stub(etcdpb_grpc.LeaseStub)
    answers = list(to_follower.LeaseKeepAlive(
        iter([etcdpb.LeaseKeepAliveRequest(ID=grant.ID)] * 3), timeout=CALL_TIMEOUT_S))
    assert [(a.ID, a.TTL) for a in answers] == [(grant.ID, 30)] * 3
    # The leader renewed them: the follower forwarded each one over its TLS channel.
    assert {a.header.member_id for a in answers} == {leader}


def _peer_port_hash_kv(node_address: str, credentials: grpc.ChannelCredentials
                       ) -> etcdpb.HashKVResponse:
    with grpc.secure_channel(node_address, credentials) as channel:
        response: etcdpb.HashKVResponse = etcdpb_grpc.MaintenanceStub(channel).HashKV(
            etcdpb.HashKVRequest(), timeout=CALL_TIMEOUT_S)
    return response


def _peer_credentials(certs: CertDir, name: str) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=Path(certs.ca).read_bytes(),
        private_key=Path(certs.path(f"{name}.key")).read_bytes(),
        certificate_chain=Path(certs.path(f"{name}.crt")).read_bytes())


def test_the_peer_port_serves_member_calls_to_current_members_only(
        certs: CertDir, mtls3: LocalCluster) -> None:
    node = mtls3.nodes[1]
    # member 2's peer certificate: a member's call, answered by member 1
    assert _peer_port_hash_kv(node.peer_address,
                              _peer_credentials(certs, "peer-2")).header.member_id == 1
    # the same CA's client certificate, and the peer certificate of member 4 (no member
    # of this cluster): refused
    for name in ("client", "peer-4"):
        with pytest.raises(grpc.RpcError) as refused:
            _peer_port_hash_kv(node.peer_address, _peer_credentials(certs, name))
        assert (refused.value.code(), refused.value.details()) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "the peer certificate names no current member"), name
