"""Backups hold only ciphertext: a pg_dump of the vault database plus a manifest.

File format (a tar archive)::

    manifest.json   format, cluster id, key id and key check value, sha256 of the dump
    database.dump   pg_dump custom format

A restore checks the manifest and the dump's digest, and refuses a key file
that does not match the backup before it touches the database.  A backup needs
the master key that was current when it was made (its manifest names the key's
id): after 'safehold key rotate' that is the old key file, given to restore with
``--key-file``.  The restored data keys are then wrapped by the server's own key
file again (a rotation back to it), so the server — and every other server of
the cluster, which holds the same key file — starts as before.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import io
import json
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from safehold import __version__
from safehold.audit.chain import AuditEvent
from safehold.config import Settings
from safehold.crypto.keyfile import MasterKey, key_id_of, load_key_file
from safehold.domain import AuditAction, AuditResult
from safehold.errors import ConfigError, KeyFileError, SafeholdError
from safehold.pg import PgManager
from safehold.pg.binaries import find_binaries
from safehold.pg.client import run_client
from safehold.pg.runas import write_file
from safehold.runtime import Runtime
from safehold.services.keys import KEY_FILE_ENV, rewrap
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


def made_on(manifest: Manifest) -> str:
    """When the backup was made, in words (its manifest holds an ISO time in UTC)."""
    try:
        return dt.datetime.fromisoformat(manifest.created_at).astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    except ValueError:
        return manifest.created_at


def check_backup_key(manifest: Manifest, key: MasterKey, key_path: Path, *, backup: Path, data_dir: Path,
                     found: Path | None = None) -> None:
    """Refuse a key file that is not the one ``backup`` was made with (pure): the refusal names the key the
    backup needs and when it was made, and how to pass it (``found``: a file that holds it)."""
    if manifest.key_check == key.check_value.hex():
        return
    command = f"safehold restore {backup} --data-dir {data_dir} --key-file"
    if found is not None:
        hint = f"{found} holds key {manifest.key_id}: {command} {found}"
    else:
        hint = (f"pass the key file that was current on {made_on(manifest)}: {command} PATH "
                f"('safehold key rotate' keeps the old key beside the key file as NAME.old-<time>)")
    raise KeyFileError(f"the key file {key_path} (master key {key.key_id}) does not match {backup}, which was "
                       f"made on {made_on(manifest)} with master key {manifest.key_id}", hint=hint)


@dataclass(frozen=True)
class RestorePlan:
    """What a restore will do, checked before anything changes: the backup, the key it was made with, and the
    server's own key file (None when it cannot be read), under which the restored data keys are wrapped
    again when it is another key."""

    backup: Path
    manifest: Manifest
    backup_key: MasterKey
    backup_key_file: Path
    server_key: MasterKey | None
    server_key_file: Path
    server_key_problem: str | None = None
    key_from_env: bool = False

    @property
    def rewrap(self) -> bool:
        return self.server_key is not None and self.server_key.check_value != self.backup_key.check_value

    @property
    def start_key_file(self) -> Path:
        """The key file the server needs to start once the backup is restored."""
        return self.server_key_file if self.server_key is not None else self.backup_key_file


def plan_restore(settings: Settings, backup: Path, key_file: Path | None, *, key_from_env: bool = False,
                 find: Callable[[bytes, Path], Path | None] = lambda _check, _near: None) -> RestorePlan:
    """Read and check the backup and the keys (nothing changes).  ``key_file``: the key file the backup was
    made with (None: the server's own); ``find`` looks for the key the backup needs beside the server's key
    file, for the refusal's hint."""
    manifest, _ = read_backup(backup)
    server_key: MasterKey | None = None
    problem: str | None = None
    try:
        server_key = load_key_file(settings.key_file)
    except KeyFileError as exc:
        if key_file is None:
            raise KeyFileError(exc.message, hint="pass the key file the backup was made with: --key-file PATH "
                                                  f"(the backup needs master key {manifest.key_id})") from None
        problem = exc.message
    if key_file is None:
        assert server_key is not None
        backup_key, backup_key_file = server_key, settings.key_file
    else:
        backup_key_file = key_file.expanduser().resolve()
        backup_key = load_key_file(backup_key_file)
    if manifest.key_check != backup_key.check_value.hex():
        check_backup_key(manifest, backup_key, backup_key_file, backup=backup, data_dir=settings.data_dir,
                         found=find(bytes.fromhex(manifest.key_check), settings.key_file))
    return RestorePlan(backup=backup, manifest=manifest, backup_key=backup_key, backup_key_file=backup_key_file,
                       server_key=server_key, server_key_file=settings.key_file, server_key_problem=problem,
                       key_from_env=key_from_env)


def restored_notes(plan: RestorePlan) -> list[str]:
    """What restore tells the operator once the backup is in place: above all, which key file the server
    needs to start now (pure)."""
    lines = [f"restored the backup of {made_on(plan.manifest)} (made with master key {plan.manifest.key_id})"]
    if plan.rewrap:
        assert plan.server_key is not None
        lines.append(f"its data keys are now wrapped by this server's key file {plan.server_key_file} (key "
                     f"{plan.server_key.key_id}): the server starts with it, as before")
        lines.append(f"the backup file itself still needs {plan.backup_key_file} to be restored again: keep it")
    elif plan.server_key is None:
        lines.append(f"this server's key file {plan.server_key_file} cannot be used ({plan.server_key_problem})")
        lines.append(f"the server needs the key file {plan.backup_key_file} (key {plan.backup_key.key_id}) to "
                     f"start: name it as key_file in the [security] section of safehold.toml, or copy it to "
                     f"{plan.server_key_file} (mode 0600)")
    elif plan.key_from_env:
        lines.append(f"the server needs the key file {plan.backup_key_file} (key {plan.backup_key.key_id}) to "
                     f"start; it was given by {KEY_FILE_ENV}: set it for 'safehold serve' too, or name it as "
                     f"key_file in the [security] section of safehold.toml")
    else:
        lines.append(f"the server starts with its key file {plan.server_key_file} (key {plan.backup_key.key_id})")
    return lines


def restore_backup(settings: Settings, pg: PgManager | None, master: MasterKey, path: Path, *,
                   key_file: Path | None = None) -> Manifest:
    """Replace the vault database with a backup's.  The bundled database (``pg``) is dropped and made again;
    an engine's database (no ``pg``) keeps existing and gets the backup's objects instead of its own, in one
    transaction, as this server's login (which owns them).  ``master`` is the key the backup was made with
    (read from ``key_file``, default the server's own)."""
    manifest, dump = read_backup(path)
    check_backup_key(manifest, master, key_file or settings.key_file, backup=path, data_dir=settings.data_dir)
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


async def settle_restore(rt: Runtime, plan: RestorePlan, *, actor: str) -> None:
    """After the restore, on a runtime opened with the backup's key: audit it, then wrap the data keys by the
    server's own key file again when the backup was made with another (a rotation, audited as one)."""
    await rt.record_audit(AuditEvent(actor=actor, action=AuditAction.BACKUP_RESTORED, result=AuditResult.SUCCESS,
                                     target_type="backup", target_name=str(plan.backup)[:500],
                                     detail={"backup_created_at": plan.manifest.created_at,
                                             "key_id": plan.manifest.key_id}))
    if plan.rewrap:
        assert plan.server_key is not None
        await rewrap(rt, plan.backup_key, plan.server_key)


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
