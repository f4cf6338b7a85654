"""etcdctl (Debian's etcd-client, 3.4) over TLS against kvraft's client port, with
--cacert/--cert/--key and a member started with --client-cert-auth (SPEC §8).

Until etcd's KV service is on the port, the test checks what TLS alone decides:
etcdctl's calls reach the server (answered UNIMPLEMENTED) with the cluster's CA and
its client certificate, and never reach it with another CA. Once the port serves
etcdserverpb.KV (it says so in its health service), a put and a get must work."""
from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.cluster.harness import LocalCluster

from .tlscluster import CertDir, tls_cluster

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(shutil.which("etcdctl") is None, reason="etcdctl is not installed"),
]

ETCDCTL_TIMEOUT_S = 30.0


@pytest.fixture(scope="module")
def mtls_node(certs: CertDir) -> Iterator[LocalCluster]:
    with tls_cluster(1, lambda i: certs.client_port_flags(i, client_cert_auth=True),
                     certs.channel_credentials()) as cluster:
        cluster.wait_leader()
        yield cluster


def _serves_etcd_kv(cluster: LocalCluster) -> bool:
    stub = cluster.nodes[1].stub(health_pb2_grpc.HealthStub)
    try:
        stub.Check(health_pb2.HealthCheckRequest(service="etcdserverpb.KV"), timeout=5)
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.NOT_FOUND:
            return False
        raise
    return True


def _etcdctl(cluster: LocalCluster, ca: CertDir, client: CertDir, *args: str
             ) -> subprocess.CompletedProcess[str]:
    command = ["etcdctl", f"--endpoints=https://{cluster.nodes[1].client_address}",
               f"--cacert={ca.ca}", f"--cert={client.path('client.crt')}",
               f"--key={client.path('client.key')}", "--dial-timeout=2s",
               "--command-timeout=4s", *args]
    return subprocess.run(command, capture_output=True, text=True, check=False,
                          timeout=ETCDCTL_TIMEOUT_S,
                          env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"})


def test_etcdctl_talks_tls_with_cacert_cert_and_key(mtls_node: LocalCluster,
                                                   certs: CertDir) -> None:
    if _serves_etcd_kv(mtls_node):
        put = _etcdctl(mtls_node, certs, certs, "put", "etcdctl-tls", "v")
        assert put.returncode == 0 and put.stdout.strip() == "OK", put.stderr
        got = _etcdctl(mtls_node, certs, certs, "get", "etcdctl-tls", "--print-value-only")
        assert got.returncode == 0 and got.stdout.strip() == "v", got.stderr
    else:
        result = _etcdctl(mtls_node, certs, certs, "get", "etcdctl-tls")
        assert "code = Unimplemented" in result.stderr, result.stderr


def test_etcdctl_with_another_ca_does_not_get_through(mtls_node: LocalCluster,
                                                      certs: CertDir,
                                                      other_certs: CertDir) -> None:
    result = _etcdctl(mtls_node, other_certs, certs, "get", "etcdctl-tls")
    assert result.returncode != 0
    assert "Unimplemented" not in result.stderr and "context deadline exceeded" in \
        result.stderr, result.stderr
    # Its client certificate signed by another CA: refused by the member.
    result = _etcdctl(mtls_node, certs, other_certs, "get", "etcdctl-tls")
    assert result.returncode != 0
    assert "Unimplemented" not in result.stderr, result.stderr
