"""TLS on a node's two ports (SPEC §8, docs/security.md): the checks of the flags at
start, the servers' credentials, and the peer channels' credentials.

Rotation without a restart. Both servers use gRPC's dynamic credentials: before each
new handshake gRPC asks `CertificateReloader.fetch` for a configuration, which looks at
the files' (inode, size, mtime) and, when they changed, reads and checks them and hands
gRPC the new ones; connections already open keep the certificates they started with.
A replaced file that does not load (half written, a key that does not match the
certificate) is logged once and the previous configuration is kept, so a botched
rotation leaves the node serving with its old certificates. The peer side's outbound
channels do the same through `PeerChannelCredentials`: a sender whose stream failed
opens its next channel with the files as they are then (transport.py).
"""
from __future__ import annotations

import logging
import os
import re
import ssl
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from kvraft.tls import read_pem

from .config import NodeConfig, ServeError

log = logging.getLogger("kvraft.server.tls")

_Signature = tuple[tuple[int, int, int], ...]


def _signature(paths: tuple[str, ...]) -> _Signature:
    """What tells that a file was replaced or rewritten: (inode, size, mtime_ns) each."""
    out = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            out.append((0, -1, 0))
            continue
        out.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


@dataclass(frozen=True)
class CertFiles:
    """A certificate, its key and (optionally) the CA bundle that verifies the other
    end, with the flags that named them (for the errors)."""

    cert: str
    key: str
    ca: str | None
    flags: tuple[str, str, str]  # e.g. ("--cert-file", "--key-file", "--trusted-ca-file")

    @property
    def paths(self) -> tuple[str, ...]:
        return (self.cert, self.key) if self.ca is None else (self.cert, self.key, self.ca)

    def load(self) -> tuple[bytes, bytes, bytes | None]:
        """(key, certificate chain, CA bundle) as PEM, checked: the certificate parses,
        the key is its key, the CA bundle parses. ValueError, one line, otherwise."""
        chain = read_pem(self.cert, self.flags[0])
        key = read_pem(self.key, self.flags[1])
        ca = read_pem(self.ca, self.flags[2]) if self.ca else None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(self.cert, self.key)
        except ssl.SSLError as e:
            raise ValueError(f"{self.flags[0]} {self.cert} and {self.flags[1]} {self.key}: "
                             f"{_ssl_reason(e)}") from None
        if ca is not None:
            try:
                context.load_verify_locations(cadata=ca.decode("ascii", "replace"))
            except ssl.SSLError as e:
                raise ValueError(f"{self.flags[2]} {self.ca}: {_ssl_reason(e)}") from None
        return key, chain, ca


def _ssl_reason(e: ssl.SSLError) -> str:
    text = f"{e.reason or ''} {e}".lower()
    if "key values mismatch" in text:
        return "the key does not belong to the certificate"
    if "no start line" in text or "does not contain a certificate" in text:
        return "holds no certificate"
    reason = re.sub(r"\s*\(_?ssl\.c:\d+\)", "", str(e.reason or e))
    return reason.lower().replace("_", " ")


def client_port_files(config: NodeConfig) -> CertFiles | None:
    if not config.cert_file:
        return None
    return CertFiles(config.cert_file, config.key_file or "", config.trusted_ca_file or None,
                     ("--cert-file", "--key-file", "--trusted-ca-file"))


def peer_port_files(config: NodeConfig) -> CertFiles | None:
    if not config.peer_cert_file:
        return None
    return CertFiles(config.peer_cert_file, config.peer_key_file or "",
                     config.peer_trusted_ca_file or "",
                     ("--peer-cert-file", "--peer-key-file", "--peer-trusted-ca-file"))


def validate_tls(config: NodeConfig) -> None:
    """The TLS flags go together and their files load; ServeError (one line) if not."""
    if config.key_file and not config.cert_file:
        raise ServeError("--key-file needs --cert-file")
    if config.cert_file and not config.key_file:
        raise ServeError("--cert-file needs --key-file")
    if config.trusted_ca_file and not config.cert_file:
        raise ServeError("--trusted-ca-file needs --cert-file and --key-file "
                         "(TLS on the client port)")
    if config.client_cert_auth and not config.trusted_ca_file:
        raise ServeError("--client-cert-auth needs --trusted-ca-file (the CA that signs "
                         "the clients' certificates)")
    peer = {"--peer-cert-file": config.peer_cert_file, "--peer-key-file": config.peer_key_file,
            "--peer-trusted-ca-file": config.peer_trusted_ca_file}
    given = [flag for flag, value in peer.items() if value]
    if given and len(given) < len(peer):
        missing = [flag for flag, value in peer.items() if not value]
        raise ServeError(f"{given[0]} needs {' and '.join(missing)}: TLS on the peer port "
                         "is always mutual")
    for files in (client_port_files(config), peer_port_files(config)):
        if files is not None:
            try:
                files.load()
            except ValueError as e:
                raise ServeError(str(e)) from None


class CertificateReloader:
    """gRPC's certificate configuration fetcher for one server port (called by gRPC on
    its own threads before each handshake): a new configuration when the files changed
    and load, else None (keep the current one)."""

    def __init__(self, files: CertFiles, what: str) -> None:
        self.files = files
        self.what = what
        self._lock = threading.Lock()
        self._served = _signature(files.paths)   # the files as last handed to gRPC
        self._failed: _Signature | None = None   # the files as last refused (logged)
        self.reloads = 0                          # configurations handed over since start

    def initial(self) -> grpc.ServerCertificateConfiguration:
        key, chain, ca = self.files.load()
        return grpc.ssl_server_certificate_configuration([(key, chain)], root_certificates=ca)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        with self._lock:
            now = _signature(self.files.paths)
            if now == self._served or now == self._failed:
                return None
            try:
                key, chain, ca = self.files.load()
            except ValueError as e:
                self._failed = now
                log.warning("%s: keeping the current certificates: %s", self.what, e)
                return None
            # The files may have changed again while being read; the next handshake
            # sees that and reads them once more.
            self._served = now
            self.reloads += 1
            log.info("%s: certificates reloaded from %s", self.what, self.files.cert)
            return grpc.ssl_server_certificate_configuration([(key, chain)],
                                                             root_certificates=ca)


def server_credentials(files: CertFiles, require_client_cert: bool,
                       what: str) -> grpc.ServerCredentials:
    """Credentials for a server port that follow the files as they are replaced."""
    reloader = CertificateReloader(files, what)
    # grpc's documentation: the fetcher returns None to keep the current configuration;
    # types-grpcio's stub does not allow for None.
    return grpc.dynamic_ssl_server_credentials(
        reloader.initial(), reloader.fetch,  # type: ignore[arg-type]
        require_client_authentication=require_client_cert)


class PeerChannelCredentials:
    """The client side of the peer port: this member's peer certificate and the peer
    CA, read afresh whenever the files changed since the last channel was made."""

    def __init__(self, files: CertFiles) -> None:
        self.files = files
        self._signature: _Signature | None = None
        self._credentials: grpc.ChannelCredentials | None = None

    def changed_since(self, signature: _Signature | None) -> bool:
        return _signature(self.files.paths) != signature

    def current(self) -> tuple[grpc.ChannelCredentials, _Signature]:
        """Credentials for a new channel, and the files' signature they were read at.
        A replaced set that does not load keeps the previous credentials (logged)."""
        now = _signature(self.files.paths)
        if self._credentials is None or now != self._signature:
            try:
                key, chain, ca = self.files.load()
            except ValueError as e:
                if self._credentials is None:
                    raise
                log.warning("peer channels: keeping the current certificates: %s", e)
                self._signature = now
                return self._credentials, now
            self._credentials = grpc.ssl_channel_credentials(
                root_certificates=ca, private_key=key, certificate_chain=chain)
            self._signature = now
        return self._credentials, now


def peer_channel_credentials(config: NodeConfig) -> PeerChannelCredentials | None:
    """The outbound peer channels' credentials; None for a plaintext peer port."""
    files = peer_port_files(config)
    return PeerChannelCredentials(files) if files is not None else None


def member_channel(config: NodeConfig, peer_address: str,
                   options: Sequence[tuple[str, Any]] = ()) -> grpc.aio.Channel:
    """A channel from this member to another member's PEER port, for the etcd calls
    members make to each other (etcd/member_calls.py): plaintext when the peer port is,
    else mutual TLS with this member's peer certificate, as the Raft transport's
    channels (transport.py). The files are read for each new channel, so a rotation
    reaches the next one."""
    tls = peer_channel_credentials(config)
    if tls is None:
        return grpc.aio.insecure_channel(peer_address, options=options)
    credentials, _ = tls.current()
    return grpc.aio.secure_channel(peer_address, credentials, options=options)
