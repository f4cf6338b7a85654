"""Certificates rotate without a restart (SPEC §8): when a node's certificate files are
replaced, its next handshakes use the new ones — on the client port (the server's
certificate) and on the peer port (both ends: the server's certificate and trusted CA,
and the certificate its own outbound peer channels present when they reconnect).
Connections already open keep going."""
from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from kvraft.client import Client, TLSError
from tests.cluster.harness import wait_until

from .tlscluster import CertDir, tls_cluster

pytestmark = pytest.mark.cluster

CALL_TIMEOUT_S = 10.0
RELOAD_TIMEOUT_S = 10.0


def _install(source: CertDir, pairs: dict[str, str], target: Path) -> None:
    """Copy source files to target names, each with an atomic rename (as a deployment
    tool or Kubernetes' Secret update does), so a handshake never reads half a file."""
    target.mkdir(parents=True, exist_ok=True)
    for name, source_name in pairs.items():
        tmp = target / f".{name}.new"
        shutil.copyfile(source.root / source_name, tmp)
        os.replace(tmp, target / name)


def _ca_credentials(certs: CertDir) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(root_certificates=(certs.root / "ca.crt").read_bytes())


@pytest.fixture
def rotating_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "tls"


def test_a_new_server_certificate_is_used_by_new_client_connections(
        certs: CertDir, other_certs: CertDir, rotating_dir: Path) -> None:
    pairs = {"server.crt": "member-1.crt", "server.key": "member-1.key"}
    _install(certs, pairs, rotating_dir)
    flags = ["--cert-file", str(rotating_dir / "server.crt"),
             "--key-file", str(rotating_dir / "server.key")]
    with tls_cluster(1, lambda _: flags, _ca_credentials(certs)) as cluster:
        cluster.wait_leader()
        with Client(cluster.endpoints(), timeout=CALL_TIMEOUT_S, cacert=certs.ca) as before:
            before.put("rotation", "before")
            # The operator replaces the files with a certificate of a new CA.
            _install(other_certs, pairs, rotating_dir)

            def new_ca_works() -> bool:
                with Client(cluster.endpoints(), timeout=CALL_TIMEOUT_S,
                            cacert=other_certs.ca) as after:
                    try:
                        return after.get("rotation") == b"before"
                    except TLSError:
                        return False

            wait_until(new_ca_works, RELOAD_TIMEOUT_S, "a client of the new CA to connect")
            with Client(cluster.endpoints(), timeout=CALL_TIMEOUT_S, cacert=certs.ca) as old, \
                    pytest.raises(TLSError, match="untrusted server certificate"):
                old.get("rotation")
            # The connection made before the rotation goes on with the old certificate.
            before.put("rotation", "still connected")
            assert before.get("rotation") == b"still connected"
        assert "certificates reloaded" in cluster.log_tail(1, 100)


def test_a_half_replaced_pair_keeps_the_old_certificate(
        certs: CertDir, other_certs: CertDir, rotating_dir: Path) -> None:
    """A new certificate without its key yet (the key does not match) is not taken: the
    node keeps serving the old pair and says so in its log."""
    pairs = {"server.crt": "member-1.crt", "server.key": "member-1.key"}
    _install(certs, pairs, rotating_dir)
    flags = ["--cert-file", str(rotating_dir / "server.crt"),
             "--key-file", str(rotating_dir / "server.key")]
    with tls_cluster(1, lambda _: flags, _ca_credentials(certs)) as cluster:
        _install(other_certs, {"server.crt": "member-1.crt"}, rotating_dir)
        with Client(cluster.endpoints(), timeout=CALL_TIMEOUT_S, cacert=certs.ca) as kv:
            assert kv.status().member_id == 1  # a new connection, the old pair
        wait_until(lambda: "keeping the current certificates" in cluster.log_tail(1, 100),
                   RELOAD_TIMEOUT_S, "node 1 to log the refused pair")


def test_peer_certificates_rotate_to_a_new_ca_without_a_restart(
        tmp_path: Path, certs: CertDir, other_certs: CertDir) -> None:
    """Every member's peer files are replaced with a new CA's; then member 3 restarts
    and trusts only the new CA. It catches up only if members 1 and 2 — never
    restarted — present and trust the new certificates on the connections to it."""
    def files(i: int) -> dict[str, str]:
        return {"peer.crt": f"peer-{i}.crt", "peer.key": f"peer-{i}.key", "ca.crt": "ca.crt"}

    def flags(i: int) -> list[str]:
        d = tmp_path / f"peer-tls-{i}"
        return ["--peer-cert-file", str(d / "peer.crt"), "--peer-key-file", str(d / "peer.key"),
                "--peer-trusted-ca-file", str(d / "ca.crt")]

    for i in (1, 2, 3):
        _install(certs, files(i), tmp_path / f"peer-tls-{i}")
    with tls_cluster(3, flags, None) as cluster:
        leader = cluster.wait_leader()
        cluster.put(leader, b"peer-rotation", b"old CA")
        for i in (1, 2, 3):
            _install(other_certs, files(i), tmp_path / f"peer-tls-{i}")
        cluster.restart(3)
        leader = cluster.wait_leader(ids=[1, 2])
        cluster.put(leader, b"peer-rotation", b"new CA")
        index = cluster.status(leader).header.applied_index
        cluster.wait_applied(3, index)
        assert cluster.get(3, b"peer-rotation", serializable=True) == b"new CA"
        cluster.check_no_crash()
