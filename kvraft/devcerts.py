"""Development certificates: a throw-away CA and the certificates a cluster needs
(`make certs`, `python -m kvraft.devcerts`; docs/security.md).

    python -m kvraft.devcerts --out certs --members 1,2,3 --host 127.0.0.1 --host localhost

writes into `certs/`:

    ca.crt, ca.key                     the development CA (keep ca.key away from nodes)
    member-ID.crt, member-ID.key       member ID's client-port certificate (--cert-file),
                                       with the client usage too (as etcd's), so the
                                       member may also use it as a client
    peer-ID.crt, peer-ID.key           member ID's peer certificate (--peer-cert-file),
                                       for both ends of a peer connection
    client.crt, client.key             a client certificate (--cert/--key), CN=client

Every server and peer certificate names the given hosts (SAN DNS names and IP
addresses) so that clients and peers can check the address they dial; a peer
certificate also names its member the way the peer port checks it (kvraft.tls,
"the naming rule"): SAN URI `kvraft://member/ID` and CN `member-ID`.

These are for development and tests: ECDSA P-256 keys written unencrypted, a CA key
next to the certificates. Production certificates come from the operator's own CA.
"""
from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kvraft.tls import peer_member_uri

CA_VALID_DAYS = 3650
CERT_VALID_DAYS = 825   # the longest validity browsers' rules allow a leaf; plenty here
# Certificates start being valid a little in the past, so that a clock slightly behind
# on another machine (or container) does not refuse a certificate made a second ago.
BACKDATE = datetime.timedelta(minutes=5)
DEFAULT_HOSTS = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class Issuer:
    """A CA that signs: its certificate and key (in memory) and where they are."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    cert_path: Path
    key_path: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "kvraft development"),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])


def _write_pair(out: Path, stem: str, cert: x509.Certificate,
                key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
    """Write STEM.crt and STEM.key (the key readable by its owner only); each file is
    written to a temporary name and renamed, so a node that re-reads the files while
    they are replaced (rotation) sees the old or the new one, never half of one."""
    out.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = out / f"{stem}.crt", out / f"{stem}.key"
    key_pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    _atomic_write(key_path, key_pem, 0o600)
    _atomic_write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert_path, key_path


def _atomic_write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def make_ca(out: str | Path, stem: str = "ca", common_name: str = "kvraft development CA"
            ) -> Issuer:
    """A self-signed CA, written as STEM.crt / STEM.key under `out`."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=CA_VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True,
            content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = _write_pair(Path(out), stem, cert, key)
    return Issuer(cert, key, cert_path, key_path)


def _alt_names(hosts: Iterable[str], uris: Iterable[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    names.extend(x509.UniformResourceIdentifier(u) for u in uris)
    return names


def make_cert(issuer: Issuer, out: str | Path, stem: str, *, common_name: str,
              hosts: Sequence[str] = (), uris: Sequence[str] = (), server: bool = True,
              client: bool = False, valid_days: int = CERT_VALID_DAYS) -> tuple[Path, Path]:
    """A leaf certificate signed by `issuer`, written as STEM.crt / STEM.key under
    `out`; `server` / `client` choose its extended key usages. Returns the paths."""
    assert server or client, "a certificate for neither a server nor a client"
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + \
             ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=False, crl_sign=False,
            content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            issuer.key.public_key()), critical=False)
    )
    alt_names = _alt_names(hosts, uris)
    if alt_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
    cert = builder.sign(issuer.key, hashes.SHA256())
    return _write_pair(Path(out), stem, cert, key)


def make_member_certs(issuer: Issuer, out: str | Path, member_id: int,
                      hosts: Sequence[str] = DEFAULT_HOSTS) -> None:
    """member-ID.{crt,key} (client port) and peer-ID.{crt,key} (peer port) for one
    member; the peer certificate names the member by the peer port's rule."""
    # Client authentication too: a member dials the leader's client port (lease
    # keep-alives, MemberPromote) with this certificate (server/tls.py).
    make_cert(issuer, out, f"member-{member_id}", common_name=f"member-{member_id}",
              hosts=hosts, server=True, client=True)
    make_cert(issuer, out, f"peer-{member_id}", common_name=f"member-{member_id}",
              hosts=hosts, uris=[peer_member_uri(member_id)], server=True, client=True)


def make_client_cert(issuer: Issuer, out: str | Path, stem: str = "client",
                     common_name: str = "client") -> tuple[Path, Path]:
    """A client certificate (its CN is the user when auth goes by certificates)."""
    return make_cert(issuer, out, stem, common_name=common_name, server=False, client=True)


def make_dev_certs(out: str | Path, members: Iterable[int], *,
                   hosts: Sequence[str] = DEFAULT_HOSTS,
                   member_hosts: dict[int, Sequence[str]] | None = None,
                   clients: Sequence[str] = ("client",),
                   common_name: str = "kvraft development CA") -> Issuer:
    """The whole set under `out`: the CA (named `common_name`), each member's two
    certificates (naming `hosts` plus that member's `member_hosts`), and a certificate
    per client name."""
    issuer = make_ca(out, common_name=common_name)
    for member_id in members:
        extra = (member_hosts or {}).get(member_id, ())
        make_member_certs(issuer, out, member_id, [*hosts, *extra])
    for name in clients:
        make_client_cert(issuer, out, name, name)
    return issuer


def _parse_members(text: str) -> list[int]:
    ids = []
    for item in text.split(","):
        item = item.strip()
        if not item.isdigit() or int(item) <= 0:
            raise argparse.ArgumentTypeError(f"bad member id {item!r}: expected 1,2,3")
        ids.append(int(item))
    return ids


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kvraft.devcerts",
        description="Make a development CA and certificates for a kvraft cluster.")
    parser.add_argument("--out", required=True, help="directory to write into")
    parser.add_argument("--members", type=_parse_members, default=[1, 2, 3],
                        help="member ids, comma-separated (default 1,2,3)")
    parser.add_argument("--host", action="append", default=None,
                        help="a host name or IP every server certificate names "
                        f"(repeat; default {', '.join(DEFAULT_HOSTS)})")
    parser.add_argument("--member-host", action="append", default=[], metavar="PATTERN",
                        help="a host name for each member, {id} replaced by its id and "
                        "{ordinal} by id-1 (repeat; e.g. kvraft{id} for the compose cluster, "
                        "kvraft-{ordinal}.kvraft-peer for the StatefulSet)")
    parser.add_argument("--client", action="append", default=None, metavar="NAME",
                        help="a client certificate NAME.crt with CN=NAME (repeat; "
                        "default: client)")
    args = parser.parse_args(argv)
    hosts = args.host or list(DEFAULT_HOSTS)
    member_hosts: dict[int, Sequence[str]] = {
        i: [p.replace("{id}", str(i)).replace("{ordinal}", str(i - 1))
            for p in args.member_host] for i in args.members}
    try:
        make_dev_certs(args.out, args.members, hosts=hosts, member_hosts=member_hosts,
                       clients=args.client or ["client"])
    except OSError as e:
        print(f"error: cannot write certificates to {args.out}: {e.strerror or e}",
              file=sys.stderr)
        return 1
    print(f"wrote a development CA and certificates for members "
          f"{','.join(map(str, args.members))} to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
