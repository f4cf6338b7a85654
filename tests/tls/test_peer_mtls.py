"""Mutual TLS on the peer port (SPEC §8): a peer without a certificate signed by
--peer-trusted-ca-file is refused at the handshake, before it can send anything; a
certificate signed for one member cannot speak for another (kvraft.tls, the naming
rule: SAN URI kvraft://member/ID or CN member-ID); batches from another cluster or
from a non-member are dropped and counted in kvraft_peer_refused_messages{reason}.

Real `kvraft serve` processes on loopback; the refusals are also driven by hand, with
a gRPC client on the peer port presenting chosen certificates."""
from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest

from kvraft.client import Client
from kvraft.proto import eraftpb_pb2 as eraftpb
from kvraft.proto import peer_pb2, peer_pb2_grpc
from kvraft.server.config import cluster_id_for
from tests.cluster.harness import ClusterError, LocalCluster, wait_until

from .tlscluster import CertDir, metric_value, tls_cluster

pytestmark = pytest.mark.cluster

CALL_TIMEOUT_S = 10.0
REFUSED = "kvraft_peer_refused_messages_total"
# How long a member that must stay cut off is watched: many election timeouts at the
# test tick (0.05 s x 10-20 ticks).
CUT_OFF_WATCH_S = 3.0


@pytest.fixture(scope="module")
def mtls3(certs: CertDir) -> Iterator[LocalCluster]:
    with tls_cluster(3, lambda i: certs.peer_flags(i), None) as cluster:
        cluster.wait_leader()
        yield cluster


def _peer_channel(address: str, certs: CertDir, stem: str | None, ca: CertDir) -> grpc.Channel:
    """A channel to a peer port presenting certs' `stem`.crt (None: no certificate),
    verifying the server with `ca`'s CA."""
    root = (ca.root / "ca.crt").read_bytes()
    if stem is None:
        creds = grpc.ssl_channel_credentials(root_certificates=root)
    else:
        creds = grpc.ssl_channel_credentials(
            root_certificates=root, private_key=(certs.root / f"{stem}.key").read_bytes(),
            certificate_chain=(certs.root / f"{stem}.crt").read_bytes())
    return grpc.secure_channel(address, creds)


def _send(channel: grpc.Channel, cluster_id: int, from_id: int, messages: int) -> None:
    batch = peer_pb2.MessageBatch(cluster_id=cluster_id, from_id=from_id,
                                  from_address="127.0.0.1:1")
    for _ in range(messages):
        batch.messages.append(eraftpb.Message(msg_type=eraftpb.MsgHeartbeat, to=1,
                                              from_=from_id))
    peer_pb2_grpc.PeerStub(channel).Send(iter([batch]), timeout=CALL_TIMEOUT_S)


def _refused(cluster: LocalCluster, node_id: int, reason: str) -> float:
    return metric_value(cluster.metrics_text(node_id), REFUSED, f'reason="{reason}"')


def test_a_three_member_cluster_replicates_over_mutual_tls(mtls3: LocalCluster) -> None:
    with Client(mtls3.endpoints(), timeout=CALL_TIMEOUT_S) as kv:
        kv.put("peer-tls", "replicated")
        index = kv.status().applied_index
    for node_id in mtls3.nodes:
        mtls3.wait_applied(node_id, index)
        assert mtls3.get(node_id, b"peer-tls", serializable=True) == b"replicated"
    # No member refused another's traffic (this runs first, before the refusals below).
    for node_id in mtls3.nodes:
        for reason in ("identity", "cluster", "non_member", "replaced"):
            assert _refused(mtls3, node_id, reason) == 0, (node_id, reason)


def test_a_certificate_for_member_2_cannot_speak_for_member_3(
        mtls3: LocalCluster, certs: CertDir) -> None:
    cluster_id = cluster_id_for(mtls3.initial_cluster)
    before = _refused(mtls3, 1, "identity")
    with _peer_channel(mtls3.nodes[1].peer_address, certs, "peer-2", certs) as channel, \
            pytest.raises(grpc.RpcError) as info:
        _send(channel, cluster_id, from_id=3, messages=2)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert info.value.details() == ("the peer certificate names member 2, not member 3 "
                                    "(expected SAN URI kvraft://member/3 or CN member-3)")
    assert _refused(mtls3, 1, "identity") == before + 2


def test_a_certificate_that_names_no_member_is_refused(
        mtls3: LocalCluster, certs: CertDir) -> None:
    """The client certificate (CN=client) is signed by the peer CA, but names no member."""
    cluster_id = cluster_id_for(mtls3.initial_cluster)
    with _peer_channel(mtls3.nodes[2].peer_address, certs, "client", certs) as channel, \
            pytest.raises(grpc.RpcError) as info:
        _send(channel, cluster_id, from_id=1, messages=1)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert info.value.details().startswith("the peer certificate names no member, not member 1")


def test_a_non_member_and_another_cluster_are_dropped_and_counted(
        mtls3: LocalCluster, certs: CertDir) -> None:
    cluster_id = cluster_id_for(mtls3.initial_cluster)
    non_member_before = _refused(mtls3, 1, "non_member")
    cluster_before = _refused(mtls3, 1, "cluster")
    # Member 4's certificate is genuine, but 4 is not a member of this cluster.
    with _peer_channel(mtls3.nodes[1].peer_address, certs, "peer-4", certs) as channel, \
            pytest.raises(grpc.RpcError) as info:
        _send(channel, cluster_id, from_id=4, messages=3)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert info.value.details() == "node 4 is not a member"
    # Member 2's own certificate, with another cluster's id.
    with _peer_channel(mtls3.nodes[1].peer_address, certs, "peer-2", certs) as channel, \
            pytest.raises(grpc.RpcError) as info:
        _send(channel, cluster_id ^ 1, from_id=2, messages=1)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "is not this node's cluster" in info.value.details()
    assert _refused(mtls3, 1, "non_member") == non_member_before + 3
    assert _refused(mtls3, 1, "cluster") == cluster_before + 1


@pytest.mark.parametrize("how", ["certificate of another CA", "no certificate", "plaintext"])
def test_a_peer_without_a_certificate_of_the_peer_ca_is_refused_at_the_handshake(
        mtls3: LocalCluster, certs: CertDir, other_certs: CertDir, how: str) -> None:
    address = mtls3.nodes[1].peer_address
    if how == "plaintext":
        channel = grpc.insecure_channel(address)
    elif how == "no certificate":
        channel = _peer_channel(address, certs, None, certs)
    else:  # member 2's name, signed by an unrelated CA
        channel = _peer_channel(address, other_certs, "peer-2", certs)
    before = {r: _refused(mtls3, 1, r) for r in ("identity", "cluster", "non_member")}
    with channel, pytest.raises(grpc.RpcError) as info:
        _send(channel, cluster_id_for(mtls3.initial_cluster), from_id=2, messages=1)
    # Refused before the call: the service never saw it, so nothing was counted there.
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert info.value.details().startswith("failed to connect to all addresses")
    assert {r: _refused(mtls3, 1, r) for r in before} == before


def test_a_member_with_a_peer_certificate_of_another_ca_is_cut_off(
        certs: CertDir, other_certs: CertDir) -> None:
    """Member 3 trusts the cluster's CA but presents a certificate another CA signed:
    members 1 and 2 refuse its handshakes and it never joins in; 1 and 2 go on."""
    def flags(i: int) -> list[str]:
        return other_certs.peer_flags(i, trusted_ca=certs.ca) if i == 3 else certs.peer_flags(i)

    with tls_cluster(3, flags, None) as cluster:
        leader = cluster.wait_leader(ids=[1, 2])
        cluster.put(leader, b"k", b"without member 3")
        deadline = time.monotonic() + CUT_OFF_WATCH_S
        while time.monotonic() < deadline:
            status = cluster.status(3)
            assert status.header.leader_id == 0, "member 3 heard from a leader"
            assert cluster.get(3, b"k", serializable=True) is None
            time.sleep(0.2)
        # The members dial 3 too, and refuse the certificate its server presents.
        wait_until(lambda: "CERTIFICATE_VERIFY_FAILED" in cluster.log_tail(leader, 200),
                   10.0, "the leader to log the refused certificate of member 3")


def test_a_member_using_member_2s_certificate_is_refused_as_member_3(
        certs: CertDir) -> None:
    """Member 3 runs with member 2's (genuine) peer certificate: what it sends as 3 is
    refused, so it cannot vote or acknowledge — with member 2 down, 1 and 3 are no
    majority."""
    def flags(i: int) -> list[str]:
        return certs.peer_flags(2) if i == 3 else certs.peer_flags(i)

    with tls_cluster(3, flags, None) as cluster:
        leader = cluster.wait_leader(ids=[1, 2])
        cluster.put(leader, b"k", b"v")
        wait_until(lambda: _refused(cluster, leader, "identity") > 0, 10.0,
                   "the leader to count member 3's refused messages")
        wait_until(lambda: "the peer certificate names member 2, not member 3"
                   in cluster.log_tail(3, 200), 10.0, "member 3 to log the refusal")
        cluster.kill9(2)
        if leader == 2:
            with pytest.raises(ClusterError):
                cluster.wait_leader(ids=[1, 3], timeout_s=CUT_OFF_WATCH_S)
        else:
            with pytest.raises(grpc.RpcError) as info:
                cluster.put(leader, b"k", b"needs a majority", timeout_s=CUT_OFF_WATCH_S)
            assert info.value.code() in (grpc.StatusCode.UNAVAILABLE,
                                         grpc.StatusCode.DEADLINE_EXCEEDED)
