"""`kvraft serve`'s TLS flags are checked at start (SPEC §8): each mistake is one line
naming the flag and the file, exit 1, before the data directory is touched."""
from __future__ import annotations

from pathlib import Path

import pytest

from kvraft.server.config import NodeConfig, ServeError
from kvraft.server.tls import validate_tls
from tests.cli.helpers import assert_one_error_line, run_kvraft

from .tlscluster import CertDir


def _serve(tmp_path: Path, *flags: str) -> str:
    result = run_kvraft("serve", "--data-dir", str(tmp_path / "data"),
                        "--listen", "127.0.0.1:1", "--peer-listen", "127.0.0.1:2", *flags)
    line = assert_one_error_line(result, exit_code=1)
    assert not (tmp_path / "data").exists(), "the data dir was made before the check"
    return line


def test_serve_refuses_bad_tls_flags_in_one_line(tmp_path: Path, certs: CertDir,
                                                 other_certs: CertDir) -> None:
    c = certs.path
    missing = str(tmp_path / "missing.crt")
    cases = [
        (["--cert-file", c("member-1.crt")], "error: --cert-file needs --key-file"),
        (["--key-file", c("member-1.key")], "error: --key-file needs --cert-file"),
        (["--cert-file", missing, "--key-file", c("member-1.key")],
         f"error: --cert-file {missing}: no such file"),
        (["--cert-file", c("member-1.crt"), "--key-file", other_certs.path("member-1.key")],
         f"error: --cert-file {c('member-1.crt')} and --key-file "
         f"{other_certs.path('member-1.key')}: the key does not belong to the certificate"),
        (["--cert-file", c("member-1.crt"), "--key-file", c("member-1.key"),
          "--client-cert-auth"],
         "error: --client-cert-auth needs --trusted-ca-file (the CA that signs the "
         "clients' certificates)"),
        (["--cert-file", c("member-1.crt"), "--key-file", c("member-1.key"),
          "--trusted-ca-file", c("member-1.key")],
         f"error: --trusted-ca-file {c('member-1.key')}: holds no certificate"),
        (["--trusted-ca-file", c("ca.crt")],
         "error: --trusted-ca-file needs --cert-file and --key-file (TLS on the client port)"),
        (["--peer-cert-file", c("peer-1.crt"), "--peer-key-file", c("peer-1.key")],
         "error: --peer-cert-file needs --peer-trusted-ca-file: TLS on the peer port is "
         "always mutual"),
        (["--peer-cert-file", c("peer-1.crt"), "--peer-key-file", c("peer-1.key"),
          "--peer-trusted-ca-file", str(tmp_path)],
         f"error: --peer-trusted-ca-file {tmp_path}: is a directory, not a file"),
    ]
    for flags, expected in cases:
        assert _serve(tmp_path, *flags) == expected, flags


def test_serve_reads_the_tls_flags_from_the_environment(tmp_path: Path,
                                                        certs: CertDir) -> None:
    result = run_kvraft("serve", "--data-dir", str(tmp_path / "data"), "--listen",
                        "127.0.0.1:1", "--peer-listen", "127.0.0.1:2",
                        env={"KVRAFT_PEER_CERT_FILE": certs.path("peer-1.crt")})
    assert assert_one_error_line(result, exit_code=1) == (
        "error: --peer-cert-file needs --peer-key-file and --peer-trusted-ca-file: TLS "
        "on the peer port is always mutual")


def test_a_complete_tls_configuration_validates(certs: CertDir, tmp_path: Path) -> None:
    config = NodeConfig(
        node_id=1, data_dir=tmp_path, listen="127.0.0.1:1", peer_listen="127.0.0.1:2",
        initial_cluster={1: "127.0.0.1:2"},
        cert_file=certs.path("member-1.crt"), key_file=certs.path("member-1.key"),
        trusted_ca_file=certs.ca, client_cert_auth=True,
        peer_cert_file=certs.path("peer-1.crt"), peer_key_file=certs.path("peer-1.key"),
        peer_trusted_ca_file=certs.ca)
    config.validate()
    validate_tls(config)   # run_node's check of the files, after validate()
    config.peer_key_file = certs.path("peer-2.key")
    with pytest.raises(ServeError, match="the key does not belong to the certificate"):
        validate_tls(config)
