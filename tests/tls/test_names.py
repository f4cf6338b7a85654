"""The naming rule that binds a peer certificate to a member (kvraft.tls), and the
certificates kvraft.devcerts (`make certs`) writes."""
from __future__ import annotations

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kvraft.tls import member_ids_named, peer_member_uri

from .tlscluster import CertDir


def test_a_certificate_names_members_by_uri_san_or_common_name() -> None:
    cases = [
        ({"peer_uri": [b"kvraft://member/3"], "x509_common_name": [b"member-3"]}, {3}),
        ({"peer_uri": [b"kvraft://member/7"]}, {7}),
        ({"x509_common_name": [b"member-12"]}, {12}),
        ({"x509_common_name": [b"client"]}, set()),
        # Not ids: a leading zero, a sign, trailing text, another scheme.
        ({"peer_uri": [b"kvraft://member/03", b"kvraft://member/+3",
                       b"kvraft://member/3/x", b"spiffe://member/3"]}, set()),
        ({"x509_common_name": [b"member-"], "peer_dns": [b"member-4"]}, set()),
        ({}, set()),
    ]
    for context, expected in cases:
        assert member_ids_named(context) == expected, context


def test_devcerts_peer_certificates_name_their_member_and_the_hosts(certs: CertDir) -> None:
    cert = x509.load_pem_x509_certificate((certs.root / "peer-2.crt").read_bytes())
    ca = x509.load_pem_x509_certificate((certs.root / "ca.crt").read_bytes())
    assert cert.issuer == ca.subject
    cert.verify_directly_issued_by(ca)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [peer_member_uri(2)]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "member-2"
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usages) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    # A member's client-port certificate: a server's, and a client's too (as etcd's
    # member certificates), though the members' own calls ride the peer port.
    member = x509.load_pem_x509_certificate((certs.root / "member-2.crt").read_bytes())
    member_usages = member.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(member_usages) == {ExtendedKeyUsageOID.SERVER_AUTH,
                                  ExtendedKeyUsageOID.CLIENT_AUTH}
    client = x509.load_pem_x509_certificate((certs.root / "client.crt").read_bytes())
    client_usages = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(client_usages) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert (certs.root / "peer-2.key").stat().st_mode & 0o077 == 0  # owner only


def test_devcerts_command_line_writes_member_host_names(tmp_path) -> None:
    from kvraft import devcerts

    assert devcerts.main(["--out", str(tmp_path), "--members", "1,2",
                          "--member-host", "kvraft{id}", "--client", "root"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([
        "ca.crt", "ca.key", "member-1.crt", "member-1.key", "member-2.crt", "member-2.key",
        "peer-1.crt", "peer-1.key", "peer-2.crt", "peer-2.key", "root.crt", "root.key"])
    cert = x509.load_pem_x509_certificate((tmp_path / "member-2.crt").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "kvraft2"]
