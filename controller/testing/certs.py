"""A throwaway certificate authority for the local control plane.

Owns the key material a test control plane needs: a serving CA and the API server's serving
certificate (SANs localhost and 127.0.0.1), the service-account signing key pair, and a client
CA that issues user certificates (CN = user name, O = groups). Everything is ECDSA P-256, keys
are written as PKCS#8 PEM with mode 0600. It does not start processes or write kubeconfigs;
`controller.testing.controlplane` does.
"""

from __future__ import annotations

import datetime
import ipaddress
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# A week is far longer than any test session, and short enough that a leaked key is harmless.
CERT_VALIDITY = datetime.timedelta(days=7)
ORGANIZATION = "localmodel-controller-test"


@dataclass(frozen=True)
class CertKeyPair:
    """A PEM certificate and its PEM (PKCS#8) private key."""

    cert_pem: bytes
    key_pem: bytes

    def write(self, directory: Path, name: str) -> tuple[Path, Path]:
        """Write `<name>.crt` and `<name>.key` (mode 0600) into `directory`; return both paths."""
        directory.mkdir(parents=True, exist_ok=True)
        cert_path = directory / f"{name}.crt"
        key_path = directory / f"{name}.key"
        cert_path.write_bytes(self.cert_pem)
        key_path.touch(mode=0o600, exist_ok=True)
        key_path.chmod(0o600)
        key_path.write_bytes(self.key_pem)
        return cert_path, key_path


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )


def _name(common_name: str, organizations: Sequence[str]) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organizations]
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


class TinyCA:
    """A self-signed CA that issues serving and client certificates.

    Serial numbers count up from 1 per CA, which is all a throwaway CA needs.
    """

    def __init__(self, *, common_name: str) -> None:
        self._key = _new_key()
        self._serials = itertools.count(1)
        self._subject = _name(common_name, [ORGANIZATION])
        now = datetime.datetime.now(datetime.UTC)
        self._cert = (
            _base_builder(
                subject=self._subject,
                issuer=self._subject,
                key=self._key,
                serial=next(self._serials),
                now=now,
                ca=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False
            )
            .sign(self._key, hashes.SHA256())
        )

    @property
    def pair(self) -> CertKeyPair:
        """The CA's own certificate and key (the key signs service-account tokens, for one)."""
        return CertKeyPair(self._cert.public_bytes(serialization.Encoding.PEM), _key_pem(self._key))

    @property
    def cert_pem(self) -> bytes:
        return self._cert.public_bytes(serialization.Encoding.PEM)

    def issue_serving_cert(self, *, hosts: Sequence[str]) -> CertKeyPair:
        """Issue a server certificate valid for `hosts` (DNS names and IP addresses)."""
        alt_names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                alt_names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                alt_names.append(x509.DNSName(host))
        return self._issue(
            subject=_name(hosts[0] if hosts else "localhost", [ORGANIZATION]),
            usage=ExtendedKeyUsageOID.SERVER_AUTH,
            alt_names=alt_names,
        )

    def issue_client_cert(self, *, user: str, groups: Sequence[str] = ()) -> CertKeyPair:
        """Issue a client certificate; Kubernetes reads the user from CN and groups from O."""
        return self._issue(
            subject=_name(user, groups), usage=ExtendedKeyUsageOID.CLIENT_AUTH, alt_names=[]
        )

    def _issue(
        self,
        *,
        subject: x509.Name,
        usage: x509.ObjectIdentifier,
        alt_names: list[x509.GeneralName],
    ) -> CertKeyPair:
        key = _new_key()
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            _base_builder(
                subject=subject,
                issuer=self._subject,
                key=key,
                serial=next(self._serials),
                now=now,
                ca=False,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
        )
        if alt_names:
            builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        return CertKeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


@dataclass(frozen=True)
class ControlPlaneCerts:
    """Paths of the files a control plane needs, plus the client CA to issue more users."""

    serving_ca: Path
    serving_cert: Path
    serving_key: Path
    service_account_public: Path
    service_account_private: Path
    client_ca: Path
    client_ca_authority: TinyCA

    def write_client_cert(
        self, directory: Path, *, user: str, groups: Sequence[str] = ()
    ) -> tuple[Path, Path]:
        """Issue a client certificate for `user` in `groups`; write `user-<user>.crt/.key`."""
        pair = self.client_ca_authority.issue_client_cert(user=user, groups=groups)
        return pair.write(directory, f"user-{_file_safe(user)}")


def _file_safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def write_control_plane_certs(directory: Path) -> ControlPlaneCerts:
    """Create the three CAs and the serving certificate; write them as PEM files in `directory`.

    Files: serving-ca.crt, apiserver.crt/.key, sa-signer.crt/.key (the CA certificate serves as
    the public key file kube-apiserver verifies tokens with), client-ca.crt. Existing files of
    the same names are overwritten.
    """
    directory.mkdir(parents=True, exist_ok=True)
    serving_ca = TinyCA(common_name="localmodel-test-serving-ca")
    serving_ca_path = directory / "serving-ca.crt"
    serving_ca_path.write_bytes(serving_ca.cert_pem)
    serving_cert, serving_key = serving_ca.issue_serving_cert(
        hosts=["localhost", "127.0.0.1"]
    ).write(directory, "apiserver")

    sa_signer = TinyCA(common_name="localmodel-test-sa-signer")
    sa_public, sa_private = sa_signer.pair.write(directory, "sa-signer")

    client_ca = TinyCA(common_name="localmodel-test-client-ca")
    client_ca_path = directory / "client-ca.crt"
    client_ca_path.write_bytes(client_ca.cert_pem)

    return ControlPlaneCerts(
        serving_ca=serving_ca_path,
        serving_cert=serving_cert,
        serving_key=serving_key,
        service_account_public=sa_public,
        service_account_private=sa_private,
        client_ca=client_ca_path,
        client_ca_authority=client_ca,
    )


def _base_builder(
    *,
    subject: x509.Name,
    issuer: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    serial: int,
    now: datetime.datetime,
    ca: bool,
) -> x509.CertificateBuilder:
    """What every certificate here shares: validity, basic constraints and key usage."""
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + CERT_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
