"""Create, configure, start and stop one bundled PostgreSQL cluster: the facade.

`PgManager` is what the rest of Safehold holds. The work is done by its parts,
one module each (Patroni's `postgresql/` package is the model):

- `tools.ToolRunner`: runs PostgreSQL's tools and writes files as the service user;
- `process.Postmaster`: the pid file, pg_ctl start / stop / reload, a crash, readiness;
- `hba.Hba`: pg_hba.conf edits under a file lock;
- `bootstrap.Bootstrap`: the data directory, initdb, TLS files, safehold.conf, the marker;
- `replica.Replica`: base backup, standby setup, pg_rewind, promote.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from safehold.pg.binaries import Binaries
from safehold.pg.bootstrap import Bootstrap
from safehold.pg.hba import Hba
from safehold.pg.process import PgStatus, Postmaster
from safehold.pg.replica import BaseBackup, ProgressCallback, Replica
from safehold.pg.runas import ServiceUser
from safehold.pg.spec import ClusterSpec
from safehold.pg.tools import ToolRunner


class PgManager:
    """One cluster: its data directory, its settings and its postmaster.

    When the process runs as root, every PostgreSQL tool runs as an unprivileged
    service user (see `safehold.pg.runas`); otherwise as the current user.
    Construction has no side effects: the user is resolved (and created) on
    first use. Each method hands the work to the part that owns it (see the
    module's docstring); the documentation of each step is there.
    """

    def __init__(
        self, spec: ClusterSpec, binaries: Binaries, *, service_user: str | None = "auto"
    ) -> None:
        self._tools = ToolRunner(spec, binaries, service_user=service_user)
        self._postmaster = Postmaster(self._tools)
        self._hba = Hba(self._tools, self._postmaster)
        self._bootstrap = Bootstrap(self._tools, self._hba)
        self._replica = Replica(self._tools, self._bootstrap, self._hba, self._postmaster)

    # --- who runs PostgreSQL ------------------------------------------------------

    @property
    def spec(self) -> ClusterSpec:
        return self._tools.spec

    @property
    def binaries(self) -> Binaries:
        return self._tools.binaries

    @property
    def data_dir(self) -> Path:
        return self._tools.data_dir

    @property
    def service_user(self) -> ServiceUser | None:
        """The user PostgreSQL runs as; None when it is this process's own user."""
        return self._tools.service_user

    def run_tool(
        self,
        name: str,
        args: list[str],
        *,
        env: dict[str, str] | None = None,
        input: bytes | None = None,
        timeout: float | None = None,
        cwd: Path | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run a bundled tool (pg_dump, psql, pg_basebackup, pg_rewind…) as the service user.

        Passwords go in `env` (PGPASSWORD), never in `args`. Raises PgError with
        the tail of stderr on a non-zero exit.
        """
        return self._tools.run_tool(name, args, env=env, input=input, timeout=timeout, cwd=cwd)

    # --- the data directory and its configuration -----------------------------------

    def is_initialized(self) -> bool:
        """Whether Safehold created a cluster here (its marker file is present)."""
        return self._bootstrap.is_initialized()

    def check_data_dir(self) -> None:
        """Raise unless the data directory holds a Safehold cluster these binaries can run."""
        self._bootstrap.check_data_dir()

    def prepare_data_dir(self) -> None:
        """Create the data directory (mode 0700) owned by the service user."""
        self._bootstrap.prepare_data_dir()

    def initdb(self, superuser_password: str) -> None:
        """Create a Safehold cluster in an empty (or missing) data directory."""
        self._bootstrap.initdb(superuser_password)

    def apply_settings(self) -> None:
        """Write safehold.conf and the TLS files from the spec (done at initdb and each start)."""
        self._bootstrap.apply_settings()

    def marker_fields(self) -> dict[str, Any]:
        """The marker's fields (a standby's primary among them), or NotSafeholdDataDir."""
        return self._bootstrap.marker_fields()

    # --- pg_hba.conf --------------------------------------------------------------------

    def write_hba(self, extra_lines: list[str]) -> None:
        """Rewrite pg_hba.conf: the TLS loopback lines, then `extra_lines`; reload if running."""
        self._hba.write(extra_lines)

    def extra_hba_lines(self) -> list[str]:
        """The lines of pg_hba.conf beyond Safehold's base lines, in order."""
        return self._hba.extra_lines()

    def add_hba_lines(self, lines: list[str]) -> list[str]:
        """Add `lines` (those not present yet) and reload; returns the ones added."""
        return self._hba.add(lines)

    def remove_hba_lines(self, lines: list[str]) -> None:
        """Remove exactly `lines`, keeping whatever else was added meanwhile."""
        self._hba.remove(lines)

    # --- the postmaster ---------------------------------------------------------------

    def status(self) -> PgStatus:
        return self._postmaster.status()

    def start(self, *, timeout: float = 30) -> bool:
        """Start the server detached; False if it was already running.

        The postmaster runs in its own session, so it outlives this process.
        """
        self._bootstrap.check_data_dir()
        if self._postmaster.alive_pid() is not None:
            return False
        self._postmaster.prepare_to_start()
        self._bootstrap.apply_settings()
        self._postmaster.launch(timeout=timeout)
        return True

    def stop(self, *, mode: str = "fast", timeout: float = 30) -> bool:
        """Stop the server and wait for it; False if it was not running."""
        return self._postmaster.stop(mode=mode, timeout=timeout)

    def kill(self) -> None:
        """SIGKILL the postmaster and its children, as a crash would."""
        self._postmaster.kill()

    def reload(self) -> None:
        """Make the running server re-read its configuration and pg_hba.conf."""
        self._postmaster.reload()

    def wait_ready(self, timeout: float = 30) -> None:
        """Poll pg_isready until the server accepts connections, or raise PgError."""
        self._postmaster.wait_ready(timeout)

    def conninfo(self, *, user: str, dbname: str = "postgres") -> dict[str, str]:
        """Connection parameters (psycopg keywords) for a TLS verify-full connection
        from this process (the CA path is the one in the spec)."""
        return self._postmaster.conninfo(user=user, dbname=dbname)

    def tool_conninfo(self, *, user: str, dbname: str = "postgres") -> str:
        """A conninfo string for tools run through `run_tool`, i.e. as the service user."""
        return self._postmaster.tool_conninfo(user=user, dbname=dbname)

    def tool_sslrootcert(self) -> Path:
        """The CA (or self-signed certificate) copy inside PGDATA, readable by the service user."""
        return self._tools.tool_sslrootcert()

    # --- streaming replication --------------------------------------------------------

    def is_standby(self) -> bool:
        """Whether the cluster starts (or runs) as a standby: standby.signal is present."""
        return self._bootstrap.is_standby()

    def base_backup(
        self,
        out_dir: Path,
        *,
        host: str,
        port: int,
        user: str,
        password: str,
        slot: str,
        sslrootcert: Path,
        progress: ProgressCallback | None = None,
        timeout: float | None = None,
    ) -> BaseBackup:
        """Copy a running primary into `out_dir` as base.tar and pg_wal.tar, for a standby."""
        return self._replica.base_backup(
            out_dir,
            host=host,
            port=port,
            user=user,
            password=password,
            slot=slot,
            sslrootcert=sslrootcert,
            progress=progress,
            timeout=timeout,
        )

    def install_standby(
        self,
        base_tar: Path,
        wal_tar: Path,
        *,
        primary_host: str,
        primary_port: int,
        user: str,
        password: str,
        slot: str,
        application_name: str,
    ) -> None:
        """Make this (empty) data directory a hot standby of a primary, from a base backup."""
        self._replica.install_standby(
            base_tar,
            wal_tar,
            primary_host=primary_host,
            primary_port=primary_port,
            user=user,
            password=password,
            slot=slot,
            application_name=application_name,
        )

    def rewind(
        self, *, host: str, port: int, user: str, password: str, timeout: float = 600
    ) -> str:
        """Rewind this stopped cluster onto the timeline of a running source; pg_rewind's output."""
        return self._replica.rewind(
            host=host, port=port, user=user, password=password, timeout=timeout
        )

    def make_standby(
        self,
        *,
        primary_host: str,
        primary_port: int,
        user: str,
        password: str,
        slot: str,
        application_name: str,
    ) -> None:
        """Turn this stopped cluster into a hot standby of a primary, in place."""
        self._replica.make_standby(
            primary_host=primary_host,
            primary_port=primary_port,
            user=user,
            password=password,
            slot=slot,
            application_name=application_name,
        )

    def checkpoint_lsn(self) -> str:
        """The latest checkpoint location of a stopped cluster (`pg_controldata`)."""
        return self._replica.checkpoint_lsn()

    def promote(self, *, timeout: float = 60) -> None:
        """Turn the running standby into a primary (`pg_ctl promote -w`)."""
        self._replica.promote(timeout=timeout)
