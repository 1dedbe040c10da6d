"""Errors raised by the bundled PostgreSQL manager.

Messages name paths, ports and versions only; they never carry a password.
"""

from __future__ import annotations

from pathlib import Path

from safehold.errors import SafeholdError


class PgError(SafeholdError):
    """A PostgreSQL tool or the cluster failed."""


class BinariesMissing(PgError):
    """No usable PostgreSQL binaries were found."""


class PortInUse(PgError):
    """The port the cluster should listen on is taken by another process."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(
            f"port {port} on {host} is already in use",
            hint=(
                "stop the process listening there (see `ss -ltnp`) or choose another "
                "port with database.port"
            ),
        )
        self.host = host
        self.port = port


class DataDirVersionMismatch(PgError):
    """The data directory was created by another PostgreSQL major version."""

    def __init__(self, data_dir: Path, data_major: int, bin_dir: Path, bin_major: int) -> None:
        super().__init__(
            f"data directory {data_dir} was created by PostgreSQL {data_major}, "
            f"but the binaries in {bin_dir} are PostgreSQL {bin_major}",
            hint=(
                f"point database.bin_dir at PostgreSQL {data_major} binaries, or upgrade the "
                f"cluster to {bin_major} (pg_upgrade, or a Safehold backup and restore)"
            ),
        )
        self.data_dir = data_dir
        self.data_major = data_major
        self.bin_major = bin_major


class NotSafeholdDataDir(PgError):
    """The data directory holds something Safehold did not create."""

    def __init__(self, data_dir: Path, reason: str) -> None:
        super().__init__(
            f"{data_dir} is not a Safehold PostgreSQL data directory: {reason}",
            hint=(
                "Safehold only manages clusters it created; point the server's data "
                "directory somewhere empty, or move this directory away if it is left over"
            ),
        )
        self.data_dir = data_dir


class StartFailed(PgError):
    """PostgreSQL did not start; the message carries the tail of its log."""


class TlsUnsupported(PgError):
    """TLS was asked for but the binaries were built without SSL support."""
