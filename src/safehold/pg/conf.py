"""Pure helpers: render and parse the files of a PostgreSQL cluster.

Nothing here touches the file system or runs a process, so every function is
testable from plain values.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from safehold.pg.errors import PgError

#: File names inside PGDATA that Safehold owns.
MARKER_FILE = "safehold.marker"
CONF_FILE = "safehold.conf"
INCLUDE_LINE = f"include = '{CONF_FILE}'"
SERVER_CERT = "server.crt"
SERVER_KEY = "server.key"
ROOT_CERT = "root.crt"
LOG_DIR = "log"
STARTUP_LOG = "startup.log"
STANDBY_SIGNAL = "standby.signal"
#: The standby's password file for its replication connection (mode 0600).
REPLICATION_PASSFILE = "replication.pgpass"
#: The files `pg_basebackup -Ft -X stream` writes.
BASE_TAR = "base.tar"
WAL_TAR = "pg_wal.tar"
BACKUP_MANIFEST = "backup_manifest"

SettingValue = str | int | bool

_BASE_HBA = (
    "hostssl all all 127.0.0.1/32 scram-sha-256",
    "hostssl all all ::1/128 scram-sha-256",
)
_HBA_HEADER = (
    "# Written by Safehold; every change here is overwritten.\n"
    "# Only TLS connections with scram-sha-256 (or cert) are accepted.\n"
    "# TYPE  DATABASE  USER  ADDRESS  METHOD\n"
)
_HBA_METHODS = {"scram-sha-256", "cert", "reject"}
_ROLE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_APPLICATION_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,63}$")


# --- versions ---------------------------------------------------------------------


def parse_major_version(text: str) -> int:
    """Major version from `postgres --version` output, e.g. 'postgres (PostgreSQL) 17.10' -> 17."""
    m = re.search(r"\(PostgreSQL\)\s+(\d+)", text)
    if not m:
        raise PgError(f"cannot read a PostgreSQL version from {text.strip()[:80]!r}")
    return int(m.group(1))


def parse_pg_version_file(text: str) -> int:
    """Major version from a data directory's PG_VERSION ('17', or '9.6' -> 9)."""
    m = re.match(r"\s*(\d+)", text)
    if not m:
        raise PgError(f"PG_VERSION holds {text.strip()[:20]!r}, not a version")
    return int(m.group(1))


def configure_has_ssl(configure_output: str) -> bool:
    """Whether `pg_config --configure` output shows an OpenSSL build."""
    return "--with-openssl" in configure_output or "--with-ssl=openssl" in configure_output


# --- postmaster.pid ---------------------------------------------------------------


@dataclass(frozen=True)
class PidFile:
    """The lines of PGDATA/postmaster.pid that Safehold reads."""

    pid: int
    port: int | None
    status: str | None  # 'starting', 'ready', 'standby', 'stopping' (PG >= 10)


def parse_pid_file(text: str) -> PidFile | None:
    """Parse postmaster.pid; None when it is empty or being written."""
    lines = text.splitlines()
    if not lines or not lines[0].strip().lstrip("-").isdigit():
        return None
    pid = abs(int(lines[0].strip()))  # a negative pid marks a single-user backend
    port = int(lines[3]) if len(lines) > 3 and lines[3].strip().isdigit() else None
    status = lines[7].strip() or None if len(lines) > 7 else None
    return PidFile(pid=pid, port=port, status=status)


# --- postgresql.conf --------------------------------------------------------------


def quote_setting(value: SettingValue) -> str:
    """A value as postgresql.conf wants it: on/off, bare integers, quoted strings."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int):
        return str(value)
    if "\n" in value or "\r" in value:
        raise PgError("a PostgreSQL setting cannot contain a line break")
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def safehold_settings(
    *, listen: str, port: int, tls: bool, tls_ca: bool
) -> dict[str, SettingValue]:
    """The settings Safehold puts in safehold.conf (paths relative to PGDATA)."""
    settings: dict[str, SettingValue] = {
        "listen_addresses": listen,
        "port": port,
        # No unix socket: a socket path under a deep data directory can exceed
        # the 107-byte limit, and every client connects over TCP anyway.
        "unix_socket_directories": "",
        "max_connections": 100,
        "shared_buffers": "64MB",
        "password_encryption": "scram-sha-256",
        "ssl": tls,
    }
    if tls:
        settings["ssl_cert_file"] = SERVER_CERT
        settings["ssl_key_file"] = SERVER_KEY
        if tls_ca:
            settings["ssl_ca_file"] = ROOT_CERT
        settings["ssl_min_protocol_version"] = "TLSv1.2"
    settings.update(
        {
            "logging_collector": True,
            "log_directory": LOG_DIR,
            "log_filename": "postgresql-%a.log",
            "log_rotation_age": "1d",
            "log_truncate_on_rotation": True,
            "wal_level": "replica",
            "max_wal_senders": 10,
            "max_replication_slots": 10,
            "wal_keep_size": "128MB",
            "hot_standby": True,
            # pg_rewind needs hint bits in WAL (implied by the data checksums
            # initdb turns on; explicit so a copied cluster keeps it).
            "wal_log_hints": True,
            # a replica hears from its primary at least every ~5 s even when nothing is written (the
            # sender's keepalives come at half this timeout): its data age stays truthful while idle,
            # and a dead link is noticed within 10 s
            "wal_sender_timeout": "10s",
            "wal_receiver_timeout": "10s",
        }
    )
    return settings


def render_conf(settings: Mapping[str, SettingValue]) -> str:
    """safehold.conf text for the given settings, in their order."""
    lines = ["# Written by Safehold from its configuration; every change here is overwritten."]
    for name, value in settings.items():
        if not re.fullmatch(r"[a-z_][a-z0-9_.]*", name):
            raise PgError(f"{name!r} is not a PostgreSQL setting name")
        lines.append(f"{name} = {quote_setting(value)}")
    return "\n".join(lines) + "\n"


def with_include(postgresql_conf: str) -> str:
    """postgresql.conf text that includes safehold.conf last (added once)."""
    if any(line.strip() == INCLUDE_LINE for line in postgresql_conf.splitlines()):
        return postgresql_conf
    sep = "" if postgresql_conf.endswith("\n") or not postgresql_conf else "\n"
    return f"{postgresql_conf}{sep}\n# Safehold's settings (listen, TLS, replication)\n{INCLUDE_LINE}\n"


# --- pg_hba.conf ------------------------------------------------------------------


def validate_hba_line(line: str) -> str:
    """Check one extra pg_hba.conf line; returns it stripped.

    Allowed: `hostssl` lines authenticating with scram-sha-256 or cert (or
    rejecting), and `hostnossl ... reject`. Never `trust`, `password`, `md5`,
    `local` or plain `host`.
    """
    text = line.strip()
    if "\n" in text or "\r" in text:
        raise PgError("a pg_hba.conf line cannot contain a line break")
    fields = text.split("#", 1)[0].split()
    if not fields:
        raise PgError("empty pg_hba.conf line")
    kind = fields[0]
    if kind not in ("hostssl", "hostnossl"):
        raise PgError(f"pg_hba.conf line type {kind!r} is not allowed (only hostssl)")
    method_index = 4
    if len(fields) > 4 and _looks_like_ipv4(fields[3]):
        method_index = 5  # 'address mask' form, e.g. 10.0.0.5 255.255.255.255
    if len(fields) <= method_index:
        raise PgError(f"pg_hba.conf line has no authentication method: {text!r}")
    method = fields[method_index]
    if method not in _HBA_METHODS:
        raise PgError(f"pg_hba.conf method {method!r} is not allowed")
    if kind == "hostnossl" and method != "reject":
        raise PgError("hostnossl lines may only reject")
    return text


def _looks_like_ipv4(text: str) -> bool:
    return bool(re.fullmatch(r"\d{1,3}(\.\d{1,3}){3}", text))


def extra_hba_rules(text: str) -> list[str]:
    """The rules of a pg_hba.conf text beyond Safehold's base lines (comments and blanks left out)."""
    rules = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [line for line in rules if line not in _BASE_HBA]


def render_hba(extra_lines: Iterable[str] = ()) -> str:
    """pg_hba.conf: the loopback base lines, then the validated extra lines."""
    extra = [validate_hba_line(line) for line in extra_lines]
    return _HBA_HEADER + "\n".join([*_BASE_HBA, *extra]) + "\n"


# --- marker -----------------------------------------------------------------------


def render_marker(*, major: int, superuser: str, created_at: str, version: str) -> str:
    return render_marker_fields(
        {
            "major": major,
            "superuser": superuser,
            "created_at": created_at,
            "safehold_version": version,
        }
    )


def render_marker_fields(fields: Mapping[str, Any]) -> str:
    """Marker text for arbitrary (JSON) fields; it always says Safehold created it."""
    return json.dumps({"created_by": "safehold", **fields}, indent=2) + "\n"


def parse_marker(text: str) -> dict[str, Any] | None:
    """The marker's fields, or None when it is not a Safehold marker."""
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("created_by") != "safehold":
        return None
    return data


def check_role_name(name: str) -> str:
    """Role names Safehold creates are plain lower-case identifiers (no quoting needed)."""
    if not _ROLE_NAME.fullmatch(name):
        raise PgError(
            f"{name!r} is not a valid role name",
            hint="use lower-case letters, digits and underscores, starting with a letter",
        )
    return name


def check_slot_name(name: str) -> str:
    """Replication slot names Safehold creates: lower-case identifiers, like role names."""
    if not _ROLE_NAME.fullmatch(name):
        raise PgError(
            f"{name!r} is not a valid replication slot name",
            hint="use lower-case letters, digits and underscores, starting with a letter",
        )
    return name


def check_application_name(name: str) -> str:
    """The name a standby reports to its primary (pg_stat_replication.application_name)."""
    if not _APPLICATION_NAME.fullmatch(name):
        raise PgError(
            f"{name!r} is not a valid application name",
            hint="use 1 to 63 letters, digits, '_', '.' or '-'",
        )
    return name


def replication_hba_line(role: str, address: str) -> str:
    """The pg_hba.conf line letting `role` stream WAL from one host: TLS and scram only."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise PgError(
            f"{address!r} is not an IP address",
            hint="give the standby's address as seen by the primary, e.g. 10.0.0.5",
        ) from None
    prefix = 32 if ip.version == 4 else 128
    return validate_hba_line(
        f"hostssl replication {check_role_name(role)} {ip}/{prefix} scram-sha-256"
    )


# --- standby ----------------------------------------------------------------------


def render_pgpass(*, host: str, port: int, user: str, password: str) -> str:
    """One libpq password file line; ':' and '\\' escaped. The database is '*' (it is
    'replication' for a walreceiver)."""

    def esc(value: str) -> str:
        if any(c in value for c in "\r\n\0"):
            raise PgError("a password file field cannot contain a line break or NUL")
        return value.replace("\\", "\\\\").replace(":", "\\:")

    if not password:
        raise PgError("the replication password must not be empty")
    return f"{esc(host)}:{port}:*:{esc(user)}:{esc(password)}\n"


def primary_conninfo(
    *,
    host: str,
    port: int,
    user: str,
    application_name: str,
    sslrootcert: str,
    passfile: str,
) -> str:
    """A standby's primary_conninfo: TLS verify-full against the CA, the password in a file."""
    if not host or any(c in host for c in " \t\r\n\0'\\"):
        raise PgError(f"{host!r} is not a host name or address")
    if not 0 < port < 65536:
        raise PgError(f"{port} is not a TCP port")
    return render_conninfo(
        {
            "host": host,
            "port": str(port),
            "user": check_role_name(user),
            "application_name": check_application_name(application_name),
            "sslmode": "verify-full",
            "sslrootcert": sslrootcert,
            "passfile": passfile,
            "connect_timeout": "10",
        }
    )


def standby_settings(*, conninfo: str, slot: str) -> dict[str, SettingValue]:
    """What safehold.conf adds on a streaming standby (after the common settings)."""
    return {
        "primary_conninfo": conninfo,
        "primary_slot_name": check_slot_name(slot),
        "hot_standby": True,
        # The primary keeps the rows the standby's queries still read: fewer
        # cancelled reads on the standby, at the price of some bloat on the primary.
        "hot_standby_feedback": True,
    }


def without_settings(conf_text: str, names: Iterable[str]) -> str:
    """conf text with the lines that set any of `names` removed (e.g. from postgresql.auto.conf)."""
    wanted = set(names)
    kept = []
    for line in conf_text.splitlines(keepends=True):
        m = re.match(r"\s*([A-Za-z_][A-Za-z0-9_.]*)\s*(=|\s)", line)
        if m and m.group(1).lower() in wanted:
            continue
        kept.append(line)
    return "".join(kept)


def archive_member_path(name: str) -> str | None:
    """The relative path a tar member may be extracted to; None for the archive root.

    Refuses absolute paths, '..' components, backslashes and NUL, so nothing
    lands outside the target directory.
    """
    if not name or "\0" in name or "\\" in name:
        raise PgError(f"unsafe path {name!r} in the archive")
    if name.startswith("/"):
        raise PgError(f"absolute path {name!r} in the archive")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise PgError(f"path {name!r} in the archive leaves the target directory")
    return "/".join(parts) or None


_PROGRESS = re.compile(r"(\d+)/(\d+) kB")
_WAL_POINT = re.compile(r"write-ahead log (start|end) point: ([0-9A-Fa-f]+/[0-9A-Fa-f]+)")


def parse_basebackup_progress(line: str) -> tuple[int, int] | None:
    """(done, estimated total) bytes from a `pg_basebackup --progress` line."""
    m = _PROGRESS.search(line)
    if not m:
        return None
    return int(m.group(1)) * 1024, int(m.group(2)) * 1024


def parse_basebackup_wal_point(line: str) -> tuple[str, str] | None:
    """('start' | 'end', LSN) from a `pg_basebackup --verbose` line."""
    m = _WAL_POINT.search(line)
    return (m.group(1), m.group(2)) if m else None


def connect_host(listen: str) -> str:
    """The address a local client should use to reach a server listening on `listen`."""
    first = listen.split(",")[0].strip()
    if first in ("*", "0.0.0.0", ""):  # noqa: S104 - mapping a wildcard to loopback
        return "127.0.0.1"
    if first == "::":
        return "::1"
    return first


def render_conninfo(params: Mapping[str, str]) -> str:
    """A libpq conninfo string: key='value' pairs, quotes and backslashes escaped."""
    parts = []
    for key, value in params.items():
        escaped = value.replace("\\", "\\\\").replace("'", "\\'")
        parts.append(f"{key}='{escaped}'")
    return " ".join(parts)


def tail_lines(text: str, n: int = 20) -> list[str]:
    return text.splitlines()[-n:]
