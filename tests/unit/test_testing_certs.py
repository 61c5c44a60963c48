"""The throwaway CA: certificate subjects, SANs, usages and files."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from controller.testing.certs import TinyCA, write_control_plane_certs


def test_serving_cert_covers_localhost_and_loopback_ip(tmp_path: Path) -> None:
    certs = write_control_plane_certs(tmp_path)

    cert = x509.load_pem_x509_certificate(certs.serving_cert.read_bytes())
    ca = x509.load_pem_x509_certificate(certs.serving_ca.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value

    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert cert.issuer == ca.subject
    cert.verify_directly_issued_by(ca)
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.SERVER_AUTH]


def test_client_cert_carries_user_and_groups() -> None:
    ca = TinyCA(common_name="test-ca")

    pair = ca.issue_client_cert(user="alice", groups=["system:masters", "devs"])

    cert = x509.load_pem_x509_certificate(pair.cert_pem)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "alice"
    groups = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    assert groups == ["system:masters", "devs"]
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_keys_are_p256_and_private(tmp_path: Path) -> None:
    certs = write_control_plane_certs(tmp_path)

    cert = x509.load_pem_x509_certificate(certs.service_account_public.read_bytes())

    public_key = cert.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert isinstance(public_key.curve, ec.SECP256R1)
    assert certs.service_account_private.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert certs.service_account_private.stat().st_mode & 0o077 == 0
    assert certs.serving_key.stat().st_mode & 0o077 == 0


def test_write_client_cert_files(tmp_path: Path) -> None:
    certs = write_control_plane_certs(tmp_path)

    cert_path, key_path = certs.write_client_cert(tmp_path, user="system:admin", groups=["g"])

    assert cert_path.name == "user-system_admin.crt"
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    ca = x509.load_pem_x509_certificate(certs.client_ca.read_bytes())
    cert.verify_directly_issued_by(ca)
    assert key_path.stat().st_mode & 0o077 == 0
