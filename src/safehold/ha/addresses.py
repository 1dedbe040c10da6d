"""Where a new server is, as the primary's database sees it: its addresses, the pg_hba.conf lines that
let it in, the names a certificate is valid for, and which hosts are loopback."""

from __future__ import annotations

import ipaddress
import socket

from cryptography import x509

from safehold.errors import ConfigError
from safehold.pg import conf

READONLY_HINT = ("give the read-only server's IP address as the primary's database sees it, "
                 "or a DNS name that resolves on the primary")


def resolve_addresses(host: str, *, hint: str = READONLY_HINT) -> list[str]:
    """The IP addresses of `host` (itself when it is one), for pg_hba.conf lines.

    A DNS name that does not resolve is refused (with `hint`): the primary must know which address
    the new server connects from."""
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise ConfigError(f"cannot resolve {host!r} to an IP address", hint=hint) from None
    addresses = list(dict.fromkeys(str(ipaddress.ip_address(str(i[4][0]).split("%")[0])) for i in infos))
    if not addresses:
        raise ConfigError(f"{host!r} resolves to no IP address")
    return addresses


def is_loopback_host(host: str) -> bool:
    """Whether `host` can only be reached from this machine: ``localhost`` or a loopback address
    (where a database listens, or where a new server is told to reach it)."""
    if host == "localhost":
        return True
    return is_loopback_address(host)


def is_loopback_address(text: str) -> bool:
    """Whether `text` is a loopback IP address (a name, ``localhost`` included, is not)."""
    try:
        return ipaddress.ip_address(text).is_loopback
    except ValueError:
        return False


def login_hba_lines(dbname: str, role: str, addresses: list[str]) -> list[str]:
    """The pg_hba.conf lines letting the login `role` into `dbname` over TLS from each address."""
    lines = []
    for address in addresses:
        ip = ipaddress.ip_address(address)
        prefix = 32 if ip.version == 4 else 128
        lines.append(conf.validate_hba_line(
            f"hostssl {conf.check_role_name(dbname)} {conf.check_role_name(role)} {ip}/{prefix} scram-sha-256"))
    return lines


def certificate_names(pem: bytes) -> set[str]:
    """The DNS names and IP addresses a certificate is valid for (its subject alternative names);
    raises ValueError when `pem` is no certificate."""
    cert = x509.load_pem_x509_certificate(pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {*san.get_values_for_type(x509.DNSName),
            *(str(ip) for ip in san.get_values_for_type(x509.IPAddress))}


def dns_name(host: str) -> str:
    """`host` when it is a DNS name, else (an IP address) empty: what the servers registry lists."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host
    return ""
