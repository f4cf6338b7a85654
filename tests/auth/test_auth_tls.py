"""Auth over TLS with --client-cert-auth (SPEC §8): a call without a token is the user
its client certificate's CN names; a token still wins; keep-alives a follower forwards
to the leader still work (they ride the peer port, server/etcd/member_calls.py); etcdctl
with --cacert/--cert/--key works as the CN's user."""
from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from kvraft import devcerts
from kvraft.client import Client, KvraftError
from kvraft.proto import etcdserverpb_pb2 as etcdpb
from kvraft.proto import etcdserverpb_pb2_grpc as etcdpb_grpc
from tests.cluster.harness import LocalCluster, wait_until
from tests.etcd.conftest import ETCDCTL, etcdctl, failed, ok
from tests.tls.tlscluster import CertDir, tls_cluster

pytestmark = pytest.mark.cluster
CALL_TIMEOUT_S = 15.0
CORRUPT_CHECK_TIME = "200ms"
# The leader's line after a corruption check round that compared every member
# (kvraft/server/etcd/corrupt_check.py).
ALL_AGREE = re.compile(r"corruption check at revision \d+: 3 members compared, all agree; "
                       r"0 skipped")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertDir:
    out = tmp_path_factory.mktemp("auth-certs")
    devcerts.make_dev_certs(out, [1, 2, 3], clients=("client", "carol"))
    return CertDir(Path(out))


@pytest.fixture(scope="module")
def cn_cluster(certs: CertDir) -> Iterator[LocalCluster]:
    """3 members, TLS with client certificates on the client port, auth enabled:
    root (password), carol (no password: her certificate's CN) reads app/."""
    def flags(i: int) -> list[str]:
        return [*certs.client_port_flags(i, client_cert_auth=True),
                "--corrupt-check-time", CORRUPT_CHECK_TIME]

    with tls_cluster(3, flags, certs.channel_credentials()) as cluster:
        cluster.wait_leader()
        with Client(cluster.endpoints(), **certs.client_kwargs()) as admin:
            admin.auth.user_add("root", "root-pw")
            admin.auth.user_grant_role("root", "root")
            admin.auth.role_add("app-reader")
            admin.auth.role_grant_permission("app-reader", "read", b"app/", b"app0")
            admin.auth.user_add("carol", no_password=True)
            admin.auth.user_grant_role("carol", "app-reader")
            admin.put(b"app/x", b"1")
            admin.put(b"secret", b"2")
            admin.auth.enable()
        yield cluster


def carol(certs: CertDir, cluster: LocalCluster) -> Client:
    return Client(cluster.endpoints(), cacert=certs.ca, cert=certs.path("carol.crt"),
                  key=certs.path("carol.key"))


def test_the_client_certificates_cn_is_the_user(certs: CertDir,
                                                 cn_cluster: LocalCluster) -> None:
    with carol(certs, cn_cluster) as c:
        assert c.get(b"app/x") == b"1"
        for denied in (lambda: c.put(b"app/x", b"no"), lambda: c.get(b"secret")):
            with pytest.raises(KvraftError) as refused:
                denied()
            assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
    # the certificate "client" names no user: refused
    with Client(cn_cluster.endpoints(), **certs.client_kwargs()) as nobody, \
            pytest.raises(KvraftError) as refused:
        nobody.get(b"app/x")
    assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED


def test_a_token_wins_over_the_certificate(certs: CertDir, cn_cluster: LocalCluster) -> None:
    with Client(cn_cluster.endpoints(), cacert=certs.ca, cert=certs.path("carol.crt"),
                key=certs.path("carol.key"), user="root", password="root-pw") as root:
        root.put(b"app/x", b"1")                # carol may not; root may
        assert root.get(b"secret") == b"2"
    with Client(cn_cluster.endpoints(), cacert=certs.ca, cert=certs.path("carol.crt"),
                key=certs.path("carol.key"), user="carol", password="x") as pwless, \
            pytest.raises(KvraftError) as refused:
        pwless.get(b"app/x")                    # a user without a password never logs in
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_a_keep_alive_a_follower_forwards_is_admitted_by_the_leader(
        certs: CertDir, cn_cluster: LocalCluster) -> None:
    creds = grpc.ssl_channel_credentials(
        root_certificates=Path(certs.ca).read_bytes(),
        private_key=Path(certs.path("carol.key")).read_bytes(),
        certificate_chain=Path(certs.path("carol.crt")).read_bytes())
    # the harness's own certificate names no user now: ask as carol who leads
    with grpc.secure_channel(cn_cluster.nodes[1].client_address, creds) as channel:
        leader = etcdpb_grpc.MaintenanceStub(channel).Status(
            etcdpb.StatusRequest(), timeout=CALL_TIMEOUT_S).leader
    follower = next(i for i in sorted(cn_cluster.nodes) if i != leader)
    with grpc.secure_channel(cn_cluster.nodes[follower].client_address, creds) as channel:
        stub = etcdpb_grpc.LeaseStub(channel)
        grant = stub.LeaseGrant(etcdpb.LeaseGrantRequest(TTL=30), timeout=CALL_TIMEOUT_S)
        answers = stub.LeaseKeepAlive(iter([etcdpb.LeaseKeepAliveRequest(ID=grant.ID)]),
                                      timeout=CALL_TIMEOUT_S)
        answer = next(iter(answers))
    assert answer.ID == grant.ID and answer.TTL > 0


@pytest.mark.skipif(ETCDCTL is None, reason="etcdctl is not installed (Debian: etcd-client)")
def test_etcdctl_with_a_client_certificate_acts_as_its_cn(certs: CertDir,
                                                          cn_cluster: LocalCluster) -> None:
    tls = [f"--cacert={certs.ca}", f"--cert={certs.path('carol.crt')}",
           f"--key={certs.path('carol.key')}"]
    endpoints = ",".join(f"https://{n.client_address}" for n in cn_cluster.nodes.values())
    assert ok(etcdctl(endpoints, *tls, "get", "app/x")).split() == ["app/x", "1"]
    assert "etcdserver: permission denied" in failed(etcdctl(endpoints, *tls, "put", "app/x",
                                                             "2"))
    assert ok(etcdctl(endpoints, *tls, "--user=root:root-pw", "get", "secret")).split() == [
        "secret", "2"]


def test_the_corruption_check_reads_every_members_hashkv_over_tls_with_auth(
        cn_cluster: LocalCluster) -> None:
    """The leader's corruption check asks the others for HashKV over their peer ports
    (server/etcd/member_calls.py), not the client ports, which take only TLS clients
    with certificates and have auth enabled: every member is compared, none skipped."""
    # (the harness's own certificate names no user now: the leader is found by its log)
    starts = {i: len(n.log_path.read_bytes()) for i, n in cn_cluster.nodes.items()}

    def since() -> str:
        return "".join(n.log_path.read_bytes()[starts[i]:].decode(errors="replace")
                       for i, n in cn_cluster.nodes.items())

    wait_until(lambda: ALL_AGREE.search(since()), 30,
               "a corruption check round that compared every member",
               cn_cluster.all_log_tails)
    assert "corruption check skips" not in since()
