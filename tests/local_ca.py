"""A throwaway certificate authority for tests that need real HTTPS on localhost.

Webhooks are HTTPS only (LSPS5), so a test endpoint must show a certificate the client
checks for real: this CA signs server certificates for the names the test uses, and the
client trusts the CA through its file (:attr:`LocalCa.cert_path`), as an operator would
point at a private CA. Nothing is trusted system-wide, and the keys live in the test's
temporary directory only.

The certificates carry what strict verifiers ask for (OpenSSL's X509_V_FLAG_X509_STRICT,
Python 3.13's default): a critical CA basic constraint and key usage on the CA, subject
and authority key identifiers, and the names in subjectAltName, never in the common name.
"""

from __future__ import annotations

import ipaddress
import itertools
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["IssuedCert", "LocalCa"]

_VALIDITY = timedelta(hours=2)
_CLOCK_SKEW = timedelta(minutes=5)
_serials = itertools.count(1)


@dataclass(frozen=True)
class IssuedCert:
    """A server certificate the CA issued, and its key, as PEM files."""

    cert_path: Path
    key_path: Path

    def server_context(self) -> ssl.SSLContext:
        """A TLS server context showing this certificate."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_path, self.key_path)
        return context


@dataclass(frozen=True)
class LocalCa:
    """A CA made for one test: :meth:`create` it in a directory, :meth:`issue` server
    certificates from it, and trust :attr:`cert_path` in the client."""

    directory: Path
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @classmethod
    def create(cls, directory: Path, name: str = "lndmailbox test CA") -> LocalCa:
        """A new CA whose certificate is written to ``directory / "ca.pem"``."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.now(UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        directory.mkdir(parents=True, exist_ok=True)
        ca = cls(directory, key, certificate)
        ca.cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        return ca

    @property
    def cert_path(self) -> Path:
        """The CA's certificate (PEM): what a client trusts."""
        return self.directory / "ca.pem"

    def client_context(self) -> ssl.SSLContext:
        """A TLS client context that trusts this CA and nothing else."""
        return ssl.create_default_context(cafile=self.cert_path)

    def issue(self, hostnames: Sequence[str] = ("localhost", "127.0.0.1")) -> ssl.SSLContext:
        """A TLS server context with a new certificate for ``hostnames`` (DNS names or IP
        addresses), signed by this CA."""
        return self.issue_files(hostnames).server_context()

    def issue_files(self, hostnames: Sequence[str] = ("localhost", "127.0.0.1")) -> IssuedCert:
        """A new server certificate for ``hostnames`` and its key, written as PEM files
        beside the CA's (for servers that take paths rather than a context)."""
        if not hostnames:
            raise ValueError("a server certificate names at least one host")
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(_names(hostnames)), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), False
            )
            .sign(self.key, hashes.SHA256())
        )
        serial = next(_serials)
        issued = IssuedCert(
            self.directory / f"server-{serial}.pem", self.directory / f"server-{serial}.key"
        )
        issued.cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        issued.key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return issued


def _names(hostnames: Sequence[str]) -> list[x509.GeneralName]:
    """Each host as an IP address entry when it is one, else as a DNS name."""
    names: list[x509.GeneralName] = []
    for host in hostnames:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names
