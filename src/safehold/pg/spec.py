"""Where one bundled PostgreSQL cluster lives and how it listens."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ClusterSpec:
    """Where a cluster lives and how it listens. TLS files are PEM, made by Safehold."""

    data_dir: Path  # PGDATA (Safehold uses <server data dir>/pg)
    port: int
    listen: str = "127.0.0.1"  # listen_addresses
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    superuser: str = "safehold_admin"
