"""The bundled PostgreSQL: find the binaries, create, configure, start and stop a cluster.

Only this package runs PostgreSQL tools. When Safehold runs as root they run
as an unprivileged service user (see `runas`).
"""

from safehold.pg.binaries import Binaries, find_binaries
from safehold.pg.errors import (
    BinariesMissing,
    DataDirVersionMismatch,
    NotSafeholdDataDir,
    PgError,
    PortInUse,
    StartFailed,
    TlsUnsupported,
)
from safehold.pg.manager import PgManager
from safehold.pg.process import PgStatus, port_in_use
from safehold.pg.replica import BaseBackup, ProgressCallback
from safehold.pg.runas import ServiceUser, ensure_traversable
from safehold.pg.spec import ClusterSpec

__all__ = [
    "BaseBackup",
    "Binaries",
    "BinariesMissing",
    "ClusterSpec",
    "DataDirVersionMismatch",
    "NotSafeholdDataDir",
    "PgError",
    "PgManager",
    "PgStatus",
    "PortInUse",
    "ProgressCallback",
    "ServiceUser",
    "StartFailed",
    "TlsUnsupported",
    "ensure_traversable",
    "find_binaries",
    "port_in_use",
]
