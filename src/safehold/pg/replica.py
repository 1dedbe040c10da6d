"""Streaming replication: base backup and its safe extraction, standby setup, pg_rewind, promote.

Patroni's `postgresql/rewind.py` and the clone step of its `bootstrap.py` are
the model. A standby's settings live in Safehold's marker file and are written
into safehold.conf by `Bootstrap.apply_settings`, never by ALTER SYSTEM.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import safehold
from safehold.pg import conf
from safehold.pg.bootstrap import Bootstrap
from safehold.pg.errors import DataDirVersionMismatch, NotSafeholdDataDir, PgError
from safehold.pg.hba import Hba
from safehold.pg.process import Postmaster
from safehold.pg.runas import ServiceUser, ensure_traversable, make_dir
from safehold.pg.tools import DIR_MODE, FILE_MODE, ToolRunner

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BaseBackup:
    """What `PgManager.base_backup` wrote: the tar files `install_standby` takes.

    They hold a copy of the primary's whole data directory, its private TLS key
    included: keep them private and remove them once the standby is installed.
    """

    out_dir: Path
    base_tar: Path
    wal_tar: Path
    manifest: Path | None
    start_lsn: str | None
    end_lsn: str | None


#: Called with (bytes done, estimated total bytes) while a base backup runs.
ProgressCallback = Callable[[int, int], None]

#: Files of the primary that a standby must not take over from a base backup:
#: read (the marker) or dropped instead of extracted.
_NOT_FROM_BACKUP = (
    conf.MARKER_FILE,
    conf.STANDBY_SIGNAL,
    conf.REPLICATION_PASSFILE,
    "postmaster.pid",
    "postmaster.opts",
)
#: Settings a standby takes from safehold.conf only (an ALTER SYSTEM copy would win).
_STANDBY_ONLY_SETTINGS = ("primary_conninfo", "primary_slot_name")


class Replica:
    """Streaming replication of one cluster: copy a primary, become or stop being a standby.

    A new standby is made from a base backup (`base_backup` on the new server,
    then `install_standby`); an old primary rejoins in place (`rewind`, then
    `make_standby`); a standby becomes the primary with `promote`.
    """

    def __init__(
        self, tools: ToolRunner, bootstrap: Bootstrap, hba: Hba, postmaster: Postmaster
    ) -> None:
        self._tools = tools
        self._bootstrap = bootstrap
        self._hba = hba
        self._postmaster = postmaster

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
        """Copy a running primary into `out_dir` as base.tar and pg_wal.tar, for a standby.

        Runs `pg_basebackup -Ft -X stream -c fast --slot=<slot>` as the service
        user, over TLS verify-full against `sslrootcert` (copied where the
        service user can read it), the password in a temporary password file.
        The WAL the primary writes meanwhile is streamed alongside through the
        slot (which must exist), so the primary keeps taking writes. `out_dir`
        must be missing or empty; it ends up owned by the service user (0700).
        """
        conf.check_role_name(user)
        conf.check_slot_name(slot)
        out_dir = Path(out_dir)
        pgpass = conf.render_pgpass(host=host, port=port, user=user, password=password)
        try:
            ca = Path(sslrootcert).read_bytes()
        except OSError as exc:
            raise PgError(f"cannot read the CA certificate {sslrootcert}: {exc.strerror}") from exc
        try:
            leftover = out_dir.is_dir() and any(out_dir.iterdir())
        except OSError as exc:
            raise PgError(f"cannot read {out_dir}: {exc.strerror}") from exc
        if leftover:
            raise PgError(
                f"the base backup directory {out_dir} is not empty",
                hint="give pg_basebackup a new or empty directory",
            )
        svc = self._tools.service_user
        make_dir(out_dir, mode=DIR_MODE, owner=svc)
        if svc is not None:
            ensure_traversable(out_dir.parent, svc)
        points: dict[str, str] = {}

        def on_line(line: str) -> None:
            point = conf.parse_basebackup_wal_point(line)
            if point is not None:
                points[point[0]] = point[1]
            elif progress is not None:
                done = conf.parse_basebackup_progress(line)
                if done is not None:
                    progress(*done)

        with self._tools.private_files({"root.crt": ca, "pgpass": pgpass.encode()}) as private:
            conninfo = conf.render_conninfo(
                {
                    "host": host,
                    "port": str(port),
                    "user": user,
                    "sslmode": "verify-full",
                    "sslrootcert": str(private / "root.crt"),
                    "connect_timeout": "10",
                }
            )
            args = [
                "-D", str(out_dir),
                "-d", conninfo,
                "--format=tar",
                "--wal-method=stream",
                "--checkpoint=fast",
                f"--slot={slot}",
                "--label=safehold standby",
                "--no-password",
                "--verbose",
            ]  # fmt: skip
            if progress is not None:
                args.append("--progress")
            env = {"PGPASSFILE": str(private / "pgpass")}
            self._tools.run_streaming("pg_basebackup", args, env=env, timeout=timeout, on_line=on_line)
        backup = BaseBackup(
            out_dir=out_dir,
            base_tar=out_dir / conf.BASE_TAR,
            wal_tar=out_dir / conf.WAL_TAR,
            manifest=(out_dir / conf.BACKUP_MANIFEST)
            if (out_dir / conf.BACKUP_MANIFEST).is_file()
            else None,
            start_lsn=points.get("start"),
            end_lsn=points.get("end"),
        )
        for tar in (backup.base_tar, backup.wal_tar):
            if not tar.is_file():
                raise PgError(f"pg_basebackup finished but wrote no {tar.name} in {out_dir}")
        log.info(
            "base backup of %s:%d through slot %s in %s (WAL %s to %s)",
            host,
            port,
            slot,
            out_dir,
            backup.start_lsn,
            backup.end_lsn,
        )
        return backup

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
        """Make this (empty) data directory a hot standby of a primary, from a base backup.

        The tars are extracted safely (regular files and directories only, no
        absolute or '..' paths) into PGDATA owned by the service user.
        standby.signal is written first, so even a half-installed directory
        never starts as a second primary. safehold.conf gets primary_conninfo
        (TLS verify-full against the CA copy in PGDATA, the password in a 0600
        password file in PGDATA, never in the configuration) and
        primary_slot_name; this spec's port, listen address and TLS files
        replace the primary's, and pg_hba.conf is reset to the base lines.
        The marker records the standby and its primary.
        """
        spec = self._tools.spec
        if spec.tls_ca is None:
            raise PgError(
                "a standby verifies its primary against the cluster CA: ClusterSpec.tls_ca is not set"
            )
        self._bootstrap.tls_sources()  # fail before touching anything
        primary = {
            "host": primary_host,
            "port": primary_port,
            "user": user,
            "slot": slot,
            "application_name": application_name,
        }
        self._bootstrap.standby_conninfo(primary)  # validates every field
        conf.check_slot_name(slot)
        pgpass = conf.render_pgpass(
            host=primary_host, port=primary_port, user=user, password=password
        )
        for tar in (base_tar, wal_tar):
            if not Path(tar).is_file():
                raise PgError(f"base backup file {tar} not found")
        self._bootstrap.require_empty_data_dir()
        self._bootstrap.prepare_data_dir()
        try:
            self._tools.write(conf.STANDBY_SIGNAL, b"")
            kept = self._extract(Path(base_tar), self._tools.data_dir)
            self._extract(Path(wal_tar), self._tools.path("pg_wal"))
            fields = self._backup_marker(kept.get(conf.MARKER_FILE))
            self._forget_primary_files()
            self._tools.write(conf.REPLICATION_PASSFILE, pgpass.encode())
            fields.update(
                {
                    "standby": True,
                    "primary": primary,
                    "standby_since": datetime.now(UTC).isoformat(timespec="seconds"),
                    "safehold_version": safehold.__version__,
                }
            )
            fields.pop("promoted_at", None)
            self._tools.write(conf.MARKER_FILE, conf.render_marker_fields(fields).encode())
            self._bootstrap.apply_settings()
            self._hba.write([])
        except BaseException:
            self._bootstrap.clear_data_dir()
            raise
        log.info(
            "installed a standby of %s:%d (slot %s) in %s",
            primary_host,
            primary_port,
            slot,
            self._tools.data_dir,
        )

    def rewind(self, *, host: str, port: int, user: str, password: str, timeout: float = 600) -> str:
        """Rewind this stopped cluster (an old primary) onto the timeline of a running source
        (`pg_rewind --source-server`, TLS verify-full against the cluster CA); returns pg_rewind's
        output.  Raises PgError when it cannot (then a fresh base backup is the way)."""
        if self._postmaster.alive_pid() is not None:
            raise PgError(f"the cluster in {self._tools.data_dir} is running; stop it before rewinding it")
        conninfo = conf.render_conninfo({
            "host": host, "port": str(port), "user": conf.check_role_name(user), "dbname": "postgres",
            "sslmode": "verify-full", "sslrootcert": str(self._tools.tool_sslrootcert()),
        })
        pgpass = conf.render_pgpass(host=host, port=port, user=user, password=password).encode()
        with self._tools.private_files({"pgpass": pgpass}) as tmp:
            proc = self._tools.run_tool("pg_rewind", ["--target-pgdata", str(self._tools.data_dir), "--source-server",
                                               conninfo, "--progress"],
                                 env={"PGPASSFILE": str(tmp / "pgpass")}, timeout=timeout)
        return (proc.stdout + proc.stderr).decode(errors="replace")

    def make_standby(self, *, primary_host: str, primary_port: int, user: str, password: str, slot: str,
                     application_name: str) -> None:
        """Turn this stopped cluster (rewound, or a cleanly stopped old primary) into a hot standby of
        a primary, in place: standby.signal, the replication password file, this spec's settings
        (port, TLS) and base hba lines, and the marker naming its primary."""
        if self._postmaster.alive_pid() is not None:
            raise PgError(f"the cluster in {self._tools.data_dir} is running; stop it first")
        primary = {"host": primary_host, "port": primary_port, "user": user, "slot": slot,
                   "application_name": application_name}
        self._bootstrap.standby_conninfo(primary)
        conf.check_slot_name(slot)
        self._tools.write(conf.STANDBY_SIGNAL, b"")
        self._tools.write(conf.REPLICATION_PASSFILE,
                    conf.render_pgpass(host=primary_host, port=primary_port, user=user, password=password).encode())
        auto = self._tools.path("postgresql.auto.conf")
        if auto.is_file():
            text = auto.read_text()
            kept = conf.without_settings(text, (*_STANDBY_ONLY_SETTINGS, "default_transaction_read_only",
                                                "synchronous_standby_names"))
            if kept != text:
                self._tools.write(auto.name, kept.encode())
        try:
            fields = self._bootstrap.marker_fields()
        except NotSafeholdDataDir:
            fields = {}
        fields.update({"standby": True, "primary": primary,
                       "standby_since": datetime.now(UTC).isoformat(timespec="seconds"),
                       "safehold_version": safehold.__version__})
        fields.pop("promoted_at", None)
        self._tools.write(conf.MARKER_FILE, conf.render_marker_fields(fields).encode())
        shutil.rmtree(self._tools.path("pg_replslot"), ignore_errors=True)  # an old primary's slots hold WAL for nobody
        make_dir(self._tools.path("pg_replslot"), mode=DIR_MODE, owner=self._tools.service_user)
        self._bootstrap.apply_settings()
        self._hba.write([])

    def checkpoint_lsn(self) -> str:
        """The latest checkpoint location of a stopped cluster (`pg_controldata`): after a clean
        shutdown, the end of everything it wrote."""
        out = self._tools.run_tool("pg_controldata", ["-D", str(self._tools.data_dir)]).stdout.decode(errors="replace")
        for line in out.splitlines():
            if line.startswith("Latest checkpoint location:"):
                return line.split(":", 1)[1].strip()
        raise PgError("pg_controldata shows no latest checkpoint location")

    def promote(self, *, timeout: float = 60) -> None:
        """Turn the running standby into a primary (`pg_ctl promote -w`).

        Afterwards the marker says so, the replication password file is gone
        and safehold.conf no longer names a primary.
        """
        if not self._bootstrap.is_standby():
            raise PgError(f"the cluster in {self._tools.data_dir} is not a standby; nothing to promote")
        if self._postmaster.alive_pid() is None:
            raise PgError(
                f"the standby in {self._tools.data_dir} is not running",
                hint="start it, then promote it",
            )
        self._tools.run_tool(
            "pg_ctl",
            [
                "promote",
                "-D",
                str(self._tools.data_dir),
                "-w",
                "-t",
                str(max(1, math.ceil(timeout))),
                "-s",
            ],
            timeout=timeout + 30,
        )
        fields = self._bootstrap.marker_fields()
        fields.pop("primary", None)
        fields["standby"] = False
        fields["promoted_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        self._tools.write(conf.MARKER_FILE, conf.render_marker_fields(fields).encode())
        self._tools.path(conf.REPLICATION_PASSFILE).unlink(missing_ok=True)
        self._bootstrap.apply_settings()
        self._postmaster.reload()
        log.warning("promoted the standby in %s to a primary", self._tools.data_dir)

    def _backup_marker(self, text: bytes | None) -> dict[str, Any]:
        """The primary's marker fields from the backup; checks it is a Safehold cluster
        of these binaries' major version."""
        fields = conf.parse_marker(text.decode(errors="replace")) if text is not None else None
        if fields is None:
            raise PgError(
                "the base backup is not of a Safehold cluster (it has no Safehold marker)"
            )
        version_file = self._tools.path("PG_VERSION")
        if not version_file.is_file():
            raise PgError("the base backup has no PG_VERSION: it is incomplete")
        major = conf.parse_pg_version_file(version_file.read_text())
        if major != self._tools.binaries.major:
            raise DataDirVersionMismatch(
                self._tools.data_dir, major, self._tools.binaries.bin_dir, self._tools.binaries.major
            )
        fields.pop("created_by", None)
        return fields

    def _forget_primary_files(self) -> None:
        """Drop what the standby must not take over from the primary's copy: its logs and
        any ALTER SYSTEM primary_conninfo (postgresql.auto.conf is read after safehold.conf)."""
        shutil.rmtree(self._tools.path(conf.LOG_DIR), ignore_errors=True)
        auto = self._tools.path("postgresql.auto.conf")
        if auto.is_file():
            text = auto.read_text()
            kept = conf.without_settings(text, _STANDBY_ONLY_SETTINGS)
            if kept != text:
                self._tools.write(auto.name, kept.encode())

    def _extract(self, archive: Path, dest: Path) -> dict[str, bytes]:
        """Extract an uncompressed tar of pg_basebackup's into `dest`, safely.

        Only regular files (0600) and directories (0700), owned by the service
        user, created fresh (O_EXCL, never following a link). Top-level files
        named in _NOT_FROM_BACKUP are not written; their content is returned.
        Durability is PostgreSQL's job: starting from a backup, it fsyncs the
        whole data directory before recovery.
        """
        user = self._tools.service_user
        made: set[Path] = set()

        def make_parents(rel: str) -> None:
            here = dest
            for part in rel.split("/"):
                here = here / part
                if here not in made:
                    make_dir(here, mode=DIR_MODE, owner=user)
                    made.add(here)

        make_parents("")
        kept: dict[str, bytes] = {}
        try:
            tar = tarfile.open(archive, mode="r:")
        except (OSError, tarfile.TarError) as exc:
            raise PgError(f"cannot read the base backup file {archive}: {exc}") from exc
        with tar:
            try:
                for member in tar:
                    rel = conf.archive_member_path(member.name)
                    if rel is None:
                        continue
                    parent, _, name = rel.rpartition("/")
                    if member.isdir():
                        make_parents(rel)
                    elif member.isfile():
                        source = tar.extractfile(member)
                        assert source is not None  # a regular file always has content
                        if dest == self._tools.data_dir and not parent and name in _NOT_FROM_BACKUP:
                            kept[name] = source.read(64 * 1024)
                            continue
                        if parent:
                            make_parents(parent)
                        self._extract_file(source, dest / rel, user)
                    elif member.issym() or member.islnk():
                        raise PgError(
                            f"{archive.name} holds a link {member.name!r}: tablespaces and "
                            "symlinked directories are not supported"
                        )
                    else:
                        raise PgError(f"{archive.name} holds a special file {member.name!r}")
            except tarfile.TarError as exc:
                raise PgError(f"the base backup file {archive} is damaged: {exc}") from exc
        return kept

    @staticmethod
    def _extract_file(source: Any, target: Path, user: ServiceUser | None) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(target, flags, FILE_MODE)
        except FileExistsError:
            raise PgError(f"the base backup holds {target.name} twice") from None
        with os.fdopen(fd, "wb") as out:
            if user is not None:
                os.fchown(out.fileno(), user.uid, user.gid)
            shutil.copyfileobj(source, out, 1024 * 1024)
