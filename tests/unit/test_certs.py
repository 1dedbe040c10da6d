"""The cluster CA and server certificates Safehold makes for itself."""

from __future__ import annotations

import hashlib
import ipaddress
import re
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from safehold.crypto.certs import fingerprint, make_ca, make_server_cert, write_tls_bundle

NAMES = ["vault1.example.com", "vault1", "10.0.0.5", "127.0.0.1", "::1", "localhost"]


@pytest.fixture(scope="module")
def ca() -> tuple[bytes, bytes]:
    return make_ca("Test cluster CA")


@pytest.fixture(scope="module")
def server(ca: tuple[bytes, bytes]) -> tuple[bytes, bytes]:
    return make_server_cert(ca[0], ca[1], NAMES)


def load(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def sans(cert: x509.Certificate) -> x509.SubjectAlternativeName:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


def test_ca_is_a_self_signed_ca(ca: tuple[bytes, bytes]) -> None:
    cert = load(ca[0])
    assert cert.subject == cert.issuer
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Test cluster CA"
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    cert.verify_directly_issued_by(cert)


def test_ca_key_matches_ca_cert(ca: tuple[bytes, bytes]) -> None:
    key = serialization.load_pem_private_key(ca[1], password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.public_key() == load(ca[0]).public_key()


def test_server_cert_sans_hold_dns_names_and_ip_addresses(server: tuple[bytes, bytes]) -> None:
    names = sans(load(server[0]))
    assert names.get_values_for_type(x509.DNSName) == ["vault1.example.com", "vault1", "localhost"]
    assert names.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.0.0.5"),
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]


def test_duplicate_names_appear_once(ca: tuple[bytes, bytes]) -> None:
    cert, _ = make_server_cert(ca[0], ca[1], ["a.example", "127.0.0.1", "a.example", "127.0.0.1"])
    names = sans(load(cert))
    assert names.get_values_for_type(x509.DNSName) == ["a.example"]
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]


def test_server_cert_is_signed_by_the_ca(ca: tuple[bytes, bytes], server: tuple[bytes, bytes]) -> None:
    cert = load(server[0])
    cert.verify_directly_issued_by(load(ca[0]))
    assert cert.issuer == load(ca[0]).subject
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == NAMES[0]


def test_server_cert_is_not_signed_by_another_ca(server: tuple[bytes, bytes]) -> None:
    other = load(make_ca("Test cluster CA")[0])  # same name, different key
    with pytest.raises(InvalidSignature):
        load(server[0]).verify_directly_issued_by(other)


@pytest.mark.parametrize("name", NAMES)
def test_server_cert_verifies_like_verify_full(
    ca: tuple[bytes, bytes], server: tuple[bytes, bytes], name: str
) -> None:
    """What a TLS client does: chain to the pinned CA and match the host name or IP."""
    try:
        subject: x509.DNSName | x509.IPAddress = x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        subject = x509.DNSName(name)
    verifier = PolicyBuilder().store(Store([load(ca[0])])).build_server_verifier(subject)
    chain = verifier.verify(load(server[0]), [])
    assert chain[-1] == load(ca[0])


def test_server_cert_does_not_verify_for_another_name_or_ca(
    ca: tuple[bytes, bytes], server: tuple[bytes, bytes]
) -> None:
    store = Store([load(ca[0])])
    for subject in (x509.DNSName("vault2.example.com"), x509.IPAddress(ipaddress.ip_address("10.0.0.6"))):
        with pytest.raises(VerificationError):
            PolicyBuilder().store(store).build_server_verifier(subject).verify(load(server[0]), [])
    other = Store([load(make_ca("Other CA")[0])])
    with pytest.raises(VerificationError):
        PolicyBuilder().store(other).build_server_verifier(x509.DNSName("vault1")).verify(
            load(server[0]), []
        )


def test_server_cert_is_for_servers_and_clients_not_a_ca(server: tuple[bytes, bytes]) -> None:
    cert = load(server[0])
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in usages
    assert ExtendedKeyUsageOID.CLIENT_AUTH in usages


def test_server_key_matches_server_cert(server: tuple[bytes, bytes]) -> None:
    key = serialization.load_pem_private_key(server[1], password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.public_key() == load(server[0]).public_key()


def test_fingerprint_is_sha256_of_der_as_colon_separated_upper_hex(server: tuple[bytes, bytes]) -> None:
    fp = fingerprint(server[0])
    assert re.fullmatch(r"[0-9A-F]{2}(:[0-9A-F]{2}){31}", fp)
    der = load(server[0]).public_bytes(serialization.Encoding.DER)
    assert fp.replace(":", "") == hashlib.sha256(der).hexdigest().upper()


def test_fingerprints_differ_between_certificates(
    ca: tuple[bytes, bytes], server: tuple[bytes, bytes]
) -> None:
    assert fingerprint(ca[0]) != fingerprint(server[0])
    assert fingerprint(server[0]) == fingerprint(server[0])


# --- write_tls_bundle -------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_write_tls_bundle_writes_keys_0600_and_a_verifiable_chain(tmp_path: Path) -> None:
    paths = write_tls_bundle(tmp_path / "tls", ["db1", "127.0.0.1"], cluster_name="Acme")

    assert paths.ca_cert == tmp_path / "tls" / "ca.crt"
    assert paths.key == tmp_path / "tls" / "server.key"
    assert mode(paths.ca_key) == 0o600
    assert mode(paths.key) == 0o600
    assert mode(paths.ca_cert) == 0o644
    assert mode(paths.cert) == 0o644
    ca_cert = load(paths.ca_cert.read_bytes())
    assert ca_cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Acme cluster CA"
    load(paths.cert.read_bytes()).verify_directly_issued_by(ca_cert)
    assert sans(load(paths.cert.read_bytes())).get_values_for_type(x509.DNSName) == ["db1"]


def test_write_tls_bundle_is_idempotent(tmp_path: Path) -> None:
    first = write_tls_bundle(tmp_path, ["db1"])
    before = {p: p.read_bytes() for p in (first.ca_cert, first.ca_key, first.cert, first.key)}

    second = write_tls_bundle(tmp_path, ["db1"])

    assert second == first
    assert {p: p.read_bytes() for p in before} == before
    assert mode(second.key) == mode(second.ca_key) == 0o600


def test_write_tls_bundle_reuses_the_ca_for_a_new_server_cert(tmp_path: Path) -> None:
    paths = write_tls_bundle(tmp_path, ["db1"])
    ca_before = paths.ca_cert.read_bytes()
    paths.cert.unlink()

    write_tls_bundle(tmp_path, ["db2"])

    assert paths.ca_cert.read_bytes() == ca_before
    cert = load(paths.cert.read_bytes())
    cert.verify_directly_issued_by(load(ca_before))
    assert sans(cert).get_values_for_type(x509.DNSName) == ["db2"]
    assert mode(paths.key) == 0o600
