"""TLS certificates Safehold makes for itself: a cluster CA and server certificates.

The same CA signs the HTTPS certificate of every app server and the TLS
certificate of every bundled PostgreSQL, so peers and replicas verify each
other with ``verify-full`` against one pinned CA.  Peers are also pinned by
certificate fingerprint (:func:`fingerprint`).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from safehold.files import write_private


@dataclass(frozen=True)
class TlsPaths:
    ca_cert: Path
    ca_key: Path
    cert: Path
    key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Safehold"), x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    )


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_ca(common_name: str, *, days: int = 3650) -> tuple[bytes, bytes]:
    """A self-signed CA; returns (cert PEM, key PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def make_server_cert(
    ca_cert_pem: bytes, ca_key_pem: bytes, names: list[str], *, days: int = 825
) -> tuple[bytes, bytes]:
    """A server certificate for DNS names and IP addresses, signed by the CA."""
    if not names:
        raise ValueError("a server certificate needs at least one name")
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for n in dict.fromkeys(names):
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(names[0]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def fingerprint(cert_pem: bytes) -> str:
    """SHA-256 fingerprint as ``AB:CD:…``, the form operators compare by eye."""
    digest = x509.load_pem_x509_certificate(cert_pem).fingerprint(hashes.SHA256())
    return ":".join(f"{b:02X}" for b in digest)


def _write(path: Path, data: bytes, mode: int) -> None:
    write_private(path, data, mode, replace=True)  # a fresh file: never an old file's (wider) permissions


def write_tls_bundle(directory: Path, names: list[str], *, cluster_name: str = "Safehold") -> TlsPaths:
    """Create (once) a CA and a server certificate in ``directory``; keys are mode 0600."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = TlsPaths(
        ca_cert=directory / "ca.crt", ca_key=directory / "ca.key",
        cert=directory / "server.crt", key=directory / "server.key",
    )
    new_ca = not paths.ca_cert.exists()
    if new_ca:
        ca_pem, ca_key_pem = make_ca(f"{cluster_name} cluster CA")
        _write(paths.ca_key, ca_key_pem, 0o600)
        _write(paths.ca_cert, ca_pem, 0o644)
    if new_ca or not paths.cert.exists():
        cert_pem, key_pem = make_server_cert(paths.ca_cert.read_bytes(), paths.ca_key.read_bytes(), names)
        _write(paths.key, key_pem, 0o600)
        _write(paths.cert, cert_pem, 0o644)
    return paths
