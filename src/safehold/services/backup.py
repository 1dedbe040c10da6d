"""Backups hold only ciphertext: a pg_dump of the vault database plus a manifest.

File format (a tar archive)::

    manifest.json   format, cluster id, key id and key check value, sha256 of the dump
    database.dump   pg_dump custom format

A restore checks the manifest and the dump's digest, and refuses a key file
that does not match the backup before it touches the database.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import io
import json
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from safehold import __version__
from safehold.audit.chain import AuditEvent
from safehold.config import Settings
from safehold.crypto.keyfile import MasterKey, key_id_of
from safehold.domain import AuditAction, AuditResult
from safehold.errors import ConfigError, KeyFileError, SafeholdError
from safehold.pg import PgManager
from safehold.pg.binaries import find_binaries
from safehold.pg.client import run_client
from safehold.pg.runas import write_file
from safehold.runtime import Runtime
from safehold.storage import admin
from safehold.storage import cluster as cluster_store
from safehold.storage.db import app_target, owner_target

FORMAT = "safehold-backup-1"


class BackupError(SafeholdError):
    pass


@dataclass(frozen=True)
class Manifest:
    cluster_id: str
    key_id: str
    key_check: str
    created_at: str
    version: str
    dump_sha256: str
    dump_size: int

    def to_json(self) -> bytes:
        return json.dumps({"format": FORMAT, **self.__dict__}, indent=2).encode()


def dump_database(settings: Settings) -> bytes:
    """A pg_dump (custom format) of the vault database, as this server's own login: works on a
    primary and on a secondary alike, and holds only what the database holds (ciphertext)."""
    target = app_target(settings)  # the database name travels in PGDATABASE, as the rest of the connection
    return run_client(find_binaries(settings.database.bin_dir), "pg_dump", ["--format=custom", "--no-password"],
                      env=target.libpq_env())


def create_backup(settings: Settings, key_check: bytes, cluster_id: str, out: Path) -> Manifest:
    """Write a backup file; ``key_check`` is the master key's check value (from the cluster row, so a
    running server that no longer holds the key can make scheduled backups)."""
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="safehold-backup-") as tmp:
        dump = dump_database(settings)
        manifest = Manifest(
            cluster_id=cluster_id, key_id=key_id_of(key_check), key_check=key_check.hex(),
            created_at=dt.datetime.now(dt.UTC).isoformat(), version=__version__,
            dump_sha256=hashlib.sha256(dump).hexdigest(), dump_size=len(dump),
        )
        part = Path(tmp) / "backup.tar"
        with tarfile.open(part, "w") as tar:
            for name, data in (("manifest.json", manifest.to_json()), ("database.dump", dump)):
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(data), 0o600, int(dt.datetime.now().timestamp())
                tar.addfile(info, io.BytesIO(data))
        # whole or not at all, 0600, through a new file renamed over ``out`` (a planted link is replaced, never
        # followed)
        write_file(out, part.read_bytes(), mode=0o600, owner=None)
    return manifest


def read_backup(path: Path) -> tuple[Manifest, bytes]:
    """Open and check a backup file; raises BackupError with a clear reason."""
    try:
        with tarfile.open(path, "r") as tar:
            members = {m.name: m for m in tar.getmembers()}
            if "manifest.json" not in members or "database.dump" not in members:
                raise BackupError(f"{path} is not a Safehold backup (missing manifest or dump)")
            raw = tar.extractfile(members["manifest.json"]).read()  # type: ignore[union-attr]
            dump = tar.extractfile(members["database.dump"]).read()  # type: ignore[union-attr]
    except FileNotFoundError:
        raise BackupError(f"backup file {path} not found") from None
    except (tarfile.TarError, EOFError, OSError):
        raise BackupError(f"{path} is damaged or not a Safehold backup") from None
    try:
        data = json.loads(raw)
        if data.pop("format", None) != FORMAT:
            raise ValueError
        manifest = Manifest(**data)
    except (ValueError, TypeError):
        raise BackupError(f"{path} has an unreadable manifest") from None
    if hashlib.sha256(dump).hexdigest() != manifest.dump_sha256 or len(dump) != manifest.dump_size:
        raise BackupError(f"{path} is damaged: the database dump does not match its checksum")
    return manifest, dump


def restore_backup(settings: Settings, pg: PgManager | None, master: MasterKey, path: Path) -> Manifest:
    """Replace the vault database with a backup's.  The bundled database (``pg``) is dropped and made again;
    an engine's database (no ``pg``) keeps existing and gets the backup's objects instead of its own, in one
    transaction, as this server's login (which owns them)."""
    manifest, dump = read_backup(path)
    if manifest.key_check != master.check_value.hex():
        raise KeyFileError(
            f"the key file does not match this backup (backup key id {manifest.key_id}, "
            f"key file id {master.key_id})",
            hint="restore needs the key file of the cluster the backup was taken from",
        )
    if pg is None:
        if settings.database.mode != "external":
            raise ConfigError("this server has no database of its own to restore into",
                              hint="restore on the server that runs the cluster's database (the primary)")
        target = app_target(settings)
        run_client(find_binaries(settings.database.bin_dir), "pg_restore",
                   ["--no-password", "--exit-on-error", "--single-transaction", "--clean", "--if-exists",
                    "--no-owner", "--no-privileges", f"--dbname={target.params().get('dbname', 'safehold')}"],
                   env=target.libpq_env(), input=dump)
        return manifest
    target = owner_target(settings)
    admin.recreate_database(owner_target(settings, dbname="postgres"), target.dbname)
    pg.run_tool("pg_restore", ["--no-password", "--exit-on-error", "--single-transaction",
                               f"--dbname={target.dbname}"], env=target.libpq_env(), input=dump)
    return manifest


async def make_backup(rt: Runtime, out: Path, *, actor: str) -> Manifest:
    """Back up and audit it (after the file is complete: a failed backup leaves no success record)."""
    async with rt.read() as conn:
        row = await cluster_store.get(conn)
    if row is None:
        raise BackupError("the database holds no Safehold cluster")
    manifest = await asyncio.to_thread(create_backup, rt.settings, row.key_check, row.cluster_id, out)
    await rt.record_audit(AuditEvent(actor=actor, action=AuditAction.BACKUP_CREATED, result=AuditResult.SUCCESS,
                                     target_type="backup", target_name=str(out)[:500],
                                     detail={"bytes": manifest.dump_size}))
    return manifest


async def scheduled_backup(rt: Runtime) -> Path:
    """The scheduled job (run by the schedules-lease holder): a new file in backup.directory, keeping
    the newest backup.keep files."""
    directory = rt.settings.path(rt.settings.backup.directory)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = directory / f"safehold-{stamp}.backup"
    await make_backup(rt, out, actor="scheduler")
    for old in sorted(directory.glob("safehold-*.backup"))[: -rt.settings.backup.keep]:
        old.unlink(missing_ok=True)
    return out
