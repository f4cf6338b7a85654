"""TLS shared by the client and the node (SPEC §8, docs/security.md).

The naming rule. A member's peer certificate names the member it speaks for, by its
id, in either of two ways (a certificate may carry both, as `make certs` writes them):

- a URI subject alternative name `kvraft://member/ID`, or
- the subject's common name `member-ID`.

The peer port accepts a batch from member ID only over a connection whose client
certificate, signed by --peer-trusted-ca-file, names ID (kvraft/server/peer_service.py),
so a certificate the CA signed for one member cannot pose as another. Ids rather than
host names: several members may share a host (tests, `make run`), and a member's
address may change while its id does not.

Client side: `ClientTLS` holds the --cacert/--cert/--key paths of a client, checks them
at once (one-line ValueError), and reads the files again for every new channel, so a
client made after the files were replaced uses the new ones. `handshake_failure` turns
gRPC's connection errors into one line that names the cause.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import grpc

PEER_URI_PREFIX = "kvraft://member/"
PEER_CN_PREFIX = "member-"
# A PEM file larger than this is not a certificate bundle anyone meant to pass.
PEM_FILE_BYTES_MAX = 1 << 20


def peer_member_uri(member_id: int) -> str:
    """The URI SAN that names member `member_id` in its peer certificate."""
    return f"{PEER_URI_PREFIX}{member_id}"


def _member_id(text: str, prefix: str) -> int | None:
    if not text.startswith(prefix):
        return None
    digits = text[len(prefix):]
    if not (digits.isascii() and digits.isdigit()) or digits.startswith("0"):
        return None
    return int(digits)


def member_ids_named(auth_context: Mapping[str, Iterable[bytes]]) -> set[int]:
    """The member ids a peer's certificate names (the naming rule above), from the
    gRPC auth context of a call over TLS; empty for a plaintext call or a certificate
    that names no member. gRPC lists a certificate's URI SANs as `peer_uri` and its
    subject's CN as `x509_common_name`."""
    ids: set[int] = set()
    for key, prefix in (("peer_uri", PEER_URI_PREFIX), ("x509_common_name", PEER_CN_PREFIX)):
        for raw in auth_context.get(key, ()):
            member_id = _member_id(raw.decode("utf-8", "replace"), prefix)
            if member_id is not None:
                ids.add(member_id)
    return ids


def read_pem(path: str, what: str) -> bytes:
    """The bytes of a PEM file, or ValueError naming `what` (the flag) in one line."""
    try:
        size = os.stat(path).st_size
        if size > PEM_FILE_BYTES_MAX:
            raise ValueError(f"{what} {path}: {size} bytes is too large for a PEM file")
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ValueError(f"{what} {path}: no such file") from None
    except IsADirectoryError:
        raise ValueError(f"{what} {path}: is a directory, not a file") from None
    except PermissionError:
        raise ValueError(f"{what} {path}: permission denied") from None
    except OSError as e:
        raise ValueError(f"{what} {path}: {(e.strerror or str(e)).lower()}") from None
    if b"-----BEGIN " not in data:
        raise ValueError(f"{what} {path}: not a PEM file (no -----BEGIN line)")
    return data


@dataclass(frozen=True)
class ClientTLS:
    """A client's TLS settings: the CA that signs the servers' certificates (None: the
    system's default roots) and, for --client-cert-auth servers, a certificate and key."""

    cacert: str | None = None
    cert: str | None = None
    key: str | None = None

    @classmethod
    def from_options(cls, cacert: str | None = None, cert: str | None = None,
                     key: str | None = None, *, names: tuple[str, str, str] = (
                         "cacert", "cert", "key")) -> ClientTLS | None:
        """None when no option is given (plaintext); else the checked settings.
        `names` are what the errors call the three options (--cacert ... on the CLI)."""
        if not (cacert or cert or key):
            return None
        if bool(cert) != bool(key):
            given, missing = (names[1], names[2]) if cert else (names[2], names[1])
            raise ValueError(f"{given} needs {missing}: a client certificate and its key "
                             "go together")
        tls = cls(cacert or None, cert or None, key or None)
        tls.credentials(names)  # every file readable and PEM, now rather than later
        return tls

    @property
    def has_client_cert(self) -> bool:
        return self.cert is not None

    def credentials(self, names: tuple[str, str, str] = ("cacert", "cert", "key")
                    ) -> grpc.ChannelCredentials:
        """Channel credentials read from the files now."""
        root = read_pem(self.cacert, names[0]) if self.cacert else None
        key = read_pem(self.key, names[2]) if self.key else None
        chain = read_pem(self.cert, names[1]) if self.cert else None
        return grpc.ssl_channel_credentials(root_certificates=root, private_key=key,
                                            certificate_chain=chain)


def handshake_failure(details: str, tls: ClientTLS | None, endpoint: str) -> str | None:
    """One line naming why a connection to `endpoint` failed during (or for want of) a
    TLS handshake, from gRPC's error details; None when the failure is not about TLS.

    gRPC reports every failed connection as UNAVAILABLE "failed to connect to all
    addresses; last error: ..." followed by the cause: the handshake's own error when
    this side refused (the server's certificate is untrusted or names another host),
    or "Socket closed" when the server hung up during the handshake — which a TLS
    server does to a client without the certificate it requires, and a TLS server
    does to a plaintext client too."""
    if tls is None:
        if "Socket closed" in details or "WRONG_VERSION_NUMBER" in details:
            return (f"{endpoint} closed the connection: if it serves TLS, pass --cacert "
                    "(and --cert/--key if it requires a client certificate)")
        return None
    if "CERTIFICATE_VERIFY_FAILED" in details:
        source = f"--cacert {tls.cacert}" if tls.cacert else "the system's CAs"
        return (f"untrusted server certificate at {endpoint}: it is not signed by "
                f"{source}")
    if ("Hostname Verification" in details or "not in peer certificate" in details
            or "Peer name" in details):
        return (f"the server certificate at {endpoint} does not name the host dialled "
                "(its subject alternative names must include it)")
    if "WRONG_VERSION_NUMBER" in details or "record layer failure" in details.lower():
        return f"{endpoint} does not speak TLS (a plaintext port? drop --cacert/--cert/--key)"
    if "Socket closed" in details or "Connection reset" in details:
        if not tls.has_client_cert:
            return (f"{endpoint} refused the TLS handshake: missing client certificate "
                    "(the server requires one: pass --cert and --key)")
        return (f"{endpoint} refused the TLS handshake: is the client certificate "
                f"{tls.cert} signed by a CA the server trusts (--trusted-ca-file)?")
    if "handshake" in details.lower() or "SSL_ERROR" in details:
        reason = details.rsplit("last error: ", 1)[-1]
        return f"TLS handshake with {endpoint} failed: {reason}"
    return None
