"""TLS on the client port (SPEC §8): `kvraft serve --cert-file/--key-file` serves only
TLS; `--client-cert-auth` with `--trusted-ca-file` refuses any client without a
certificate that CA signed. Clients (`Client(cacert=, cert=, key=)`, the CLI's
--cacert/--cert/--key) name the cause of a refused handshake in one line.

Real processes, real TLS on loopback, certificates made by kvraft.devcerts."""
from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kvraft.client import Client, TLSError
from tests.cli.helpers import assert_one_error_line, run_kvraft
from tests.cluster.harness import LocalCluster

from .tlscluster import CertDir, tls_cluster

pytestmark = pytest.mark.cluster

CALL_TIMEOUT_S = 10.0


@pytest.fixture(scope="module")
def tls_node(certs: CertDir) -> Iterator[LocalCluster]:
    """One member serving TLS on its client port, any client allowed."""
    creds = grpc.ssl_channel_credentials(root_certificates=(certs.root / "ca.crt").read_bytes())
    with tls_cluster(1, lambda i: certs.client_port_flags(i), creds) as cluster:
        cluster.wait_leader()
        yield cluster


@pytest.fixture(scope="module")
def mtls_node(certs: CertDir) -> Iterator[LocalCluster]:
    """One member that requires a client certificate (--client-cert-auth)."""
    with tls_cluster(1, lambda i: certs.client_port_flags(i, client_cert_auth=True),
                     certs.channel_credentials()) as cluster:
        cluster.wait_leader()
        yield cluster


def test_client_with_cacert_writes_and_reads_over_tls(tls_node: LocalCluster,
                                                      certs: CertDir) -> None:
    with Client(tls_node.endpoints(), timeout=CALL_TIMEOUT_S,
                **certs.client_kwargs(with_cert=False)) as kv:
        kv.put("tls-key", "over tls")
        assert kv.get("tls-key") == b"over tls"
        assert kv.status().member_id == 1


def test_cli_put_and_get_with_cacert(tls_node: LocalCluster, certs: CertDir) -> None:
    endpoint = tls_node.endpoints()
    put = run_kvraft("put", "cli-tls", "v1", "--endpoints", endpoint, "--cacert", certs.ca)
    assert put.returncode == 0, put.stderr
    assert put.stdout == b"OK\n"
    got = run_kvraft("get", "cli-tls", "--endpoints", endpoint, "--cacert", certs.ca)
    assert got.returncode == 0, got.stderr
    assert got.stdout == b"v1\n"
    # The same through the environment (KVRAFT_CACERT), as every option reads it.
    env_got = run_kvraft("get", "cli-tls", "--endpoints", endpoint,
                         env={"KVRAFT_CACERT": certs.ca})
    assert env_got.stdout == b"v1\n", env_got.stderr


def test_every_service_of_the_port_is_behind_tls(tls_node: LocalCluster,
                                                 certs: CertDir) -> None:
    """Health (and so reflection, on the same server) answers over TLS, and a
    plaintext connection to the port gets nothing from any service."""
    address = tls_node.nodes[1].client_address
    creds = grpc.ssl_channel_credentials(root_certificates=(certs.root / "ca.crt").read_bytes())
    with grpc.secure_channel(address, creds) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="kvraft.KV"), timeout=CALL_TIMEOUT_S)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    with grpc.insecure_channel(address) as channel, pytest.raises(grpc.RpcError) as info:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_plaintext_client_is_told_the_port_may_serve_tls(tls_node: LocalCluster) -> None:
    result = run_kvraft("get", "cli-tls", "--endpoints", tls_node.endpoints(),
                        "--timeout", "1")
    line = assert_one_error_line(result, exit_code=3)
    assert "if it serves TLS, pass --cacert" in line


def test_a_server_certificate_from_another_ca_is_untrusted(tls_node: LocalCluster,
                                                           other_certs: CertDir) -> None:
    endpoint = tls_node.endpoints()
    with Client(endpoint, timeout=CALL_TIMEOUT_S, cacert=other_certs.ca) as kv, \
            pytest.raises(TLSError) as info:
        kv.get("tls-key")
    assert str(info.value) == (f"untrusted server certificate at {endpoint}: it is not "
                               f"signed by --cacert {other_certs.ca}")
    result = run_kvraft("get", "k", "--endpoints", endpoint, "--cacert", other_certs.ca)
    line = assert_one_error_line(result, exit_code=3)
    assert "untrusted server certificate" in line


def test_client_cert_auth_accepts_a_client_certificate_of_its_ca(
        mtls_node: LocalCluster, certs: CertDir) -> None:
    with Client(mtls_node.endpoints(), timeout=CALL_TIMEOUT_S, **certs.client_kwargs()) as kv:
        kv.put("mtls-key", "with a client certificate")
        assert kv.get("mtls-key") == b"with a client certificate"
    got = run_kvraft("get", "mtls-key", "--endpoints", mtls_node.endpoints(),
                     "--cacert", certs.ca, "--cert", certs.path("client.crt"),
                     "--key", certs.path("client.key"))
    assert got.stdout == b"with a client certificate\n", got.stderr


def test_client_cert_auth_refuses_a_client_without_a_certificate(
        mtls_node: LocalCluster, certs: CertDir) -> None:
    endpoint = mtls_node.endpoints()
    with Client(endpoint, timeout=CALL_TIMEOUT_S, cacert=certs.ca) as kv, \
            pytest.raises(TLSError) as info:
        kv.get("mtls-key")
    assert "missing client certificate" in str(info.value)
    result = run_kvraft("get", "mtls-key", "--endpoints", endpoint, "--cacert", certs.ca)
    line = assert_one_error_line(result, exit_code=3)
    assert line == (f"error: unavailable: {endpoint} refused the TLS handshake: missing "
                    "client certificate (the server requires one: pass --cert and --key)")


def test_client_cert_auth_refuses_a_certificate_from_another_ca(
        mtls_node: LocalCluster, certs: CertDir, other_certs: CertDir) -> None:
    with Client(mtls_node.endpoints(), timeout=CALL_TIMEOUT_S, cacert=certs.ca,
                cert=other_certs.path("client.crt"), key=other_certs.path("client.key")
                ) as kv, pytest.raises(TLSError) as info:
        kv.get("mtls-key")
    assert "refused the TLS handshake" in str(info.value)
    assert other_certs.path("client.crt") in str(info.value)


def test_client_tls_options_are_checked_before_connecting(certs: CertDir, tmp_path) -> None:
    missing = str(tmp_path / "missing.crt")
    with pytest.raises(ValueError, match=r"^cacert .*missing\.crt: no such file$"):
        Client("127.0.0.1:1", cacert=missing)
    with pytest.raises(ValueError, match="cert needs key"):
        Client("127.0.0.1:1", cacert=certs.ca, cert=certs.path("client.crt"))
    result = run_kvraft("get", "k", "--cacert", missing)
    assert assert_one_error_line(result, exit_code=2) == \
        f"error: --cacert {missing}: no such file"
    result = run_kvraft("get", "k", "--key", certs.path("client.key"))
    assert assert_one_error_line(result, exit_code=2) == \
        "error: --key needs --cert: a client certificate and its key go together"


def test_bench_loads_a_tls_port(tls_node: LocalCluster, certs: CertDir) -> None:
    """`kvraft bench --cacert`: the load generator's workers connect over TLS too."""
    import json

    result = run_kvraft("bench", "--endpoints", tls_node.endpoints(), "--cacert", certs.ca,
                        "--duration", "1", "--clients", "2", "--workers", "1", "--keys", "10",
                        "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ops"] > 0 and not report["errors"], report


def test_a_server_certificate_for_another_host_is_named_as_such(tmp_path) -> None:
    """The certificate is signed by the client's CA but names example.invalid only,
    not the 127.0.0.1 the client dials."""
    from concurrent import futures

    from grpc_health.v1 import health

    from kvraft import devcerts

    ca = devcerts.make_ca(tmp_path)
    cert, key = devcerts.make_cert(ca, tmp_path, "server", common_name="server",
                                   hosts=["example.invalid"])
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials(
        [(key.read_bytes(), cert.read_bytes())]))
    server.start()
    try:
        with Client(f"127.0.0.1:{port}", timeout=CALL_TIMEOUT_S,
                    cacert=str(ca.cert_path)) as kv, pytest.raises(TLSError) as info:
            kv.status()
        assert str(info.value) == (
            f"the server certificate at 127.0.0.1:{port} does not name the host dialled "
            "(its subject alternative names must include it)")
    finally:
        server.stop(0)
