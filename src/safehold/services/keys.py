"""Master key rotation: re-wrap the data keys, and optionally re-encrypt every secret.

A rotation keeps the old key file beside the new one (``safehold.key.old-<time>``): the database no longer
needs it, but every backup made before the rotation does (a backup holds the data keys wrapped by the key
that was current when it was made).  So this module also finds, among the key file and the copies kept
beside it, the one a database or a backup needs, and says so when the configured one is not it.
"""

from __future__ import annotations

import datetime as dt
import glob
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from safehold.audit.chain import AuditEvent
from safehold.config import CONFIG_NAME, ENV_PREFIX, Settings
from safehold.crypto.barrier import Secret
from safehold.crypto.envelope import Keyring, new_data_key
from safehold.crypto.keyfile import MasterKey, create_key_file, key_id_of, load_key_file
from safehold.domain import AuditAction, AuditResult
from safehold.errors import KeyFileError
from safehold.runtime import DATA, Runtime, check_key, wrap_label
from safehold.storage import cluster as cluster_store
from safehold.storage import vault as vault_store
from safehold.storage.db import AsyncConnection

#: the environment variable that overrides ``security.key_file``
KEY_FILE_ENV = f"{ENV_PREFIX}SECURITY__KEY_FILE"

BATCH = 500


@dataclass(frozen=True)
class RotationResult:
    key_file: Path
    old_key_file: Path | None
    new_key_id: str
    reencrypted: int
    data_key_version: int


async def rewrap(rt: Runtime, old: MasterKey, new: MasterKey) -> None:
    """Wrap every data key under the new master key and store the new check value (one transaction)."""
    async with rt.write() as conn:
        await check_key(conn, old)
        for k in await cluster_store.keys(conn):
            label = wrap_label(k.purpose, k.version)
            await cluster_store.rewrap_key(conn, k.purpose, k.version, new.wrap(old.unwrap(k.wrapped, label), label))
        await cluster_store.set_key_check(conn, new.check_value)
        await rt.append_audit(conn, AuditEvent(actor="cli", action=AuditAction.KEY_ROTATED,
                                               result=AuditResult.SUCCESS, target_type="key",
                                               target_name="master key", detail={"new_key_id": new.key_id}))


async def reencrypt(rt: Runtime, master: MasterKey, progress: Callable[[int, int], None]) -> tuple[int, int]:
    """A new data key becomes active and every secret is sealed again under it."""
    async with rt.write() as conn:
        versions = [k.version for k in await cluster_store.keys(conn) if k.purpose == DATA]
        version = max(versions) + 1
        data_key = new_data_key()
        await cluster_store.add_key(conn, DATA, version, master.wrap(data_key, wrap_label(DATA, version)),
                                    active=True)
        total = await vault_store.count_secrets(conn)
    new_ring = rt.keyring.with_key(version, data_key)
    done = 0
    for table, column in vault_store.SECRET_COLUMNS:
        after: str | None = None
        while True:
            async with rt.write() as conn:
                batch = await vault_store.secret_batch(conn, table.name, column.name, after, BATCH)
                for row_id, blob in batch:
                    aad = Secret.stored_in(table.name, column.name).aad(str(row_id))
                    if Keyring.version_of(blob) != version:
                        await vault_store.replace_secret(conn, table.name, column.name, row_id,
                                                         new_ring.seal(new_ring.open(blob, aad), aad))
            if not batch:
                break
            after = batch[-1][0]
            done += len(batch)
            progress(done, total)
    rt.keys = type(rt.keys)(new_ring, rt.keys.audit_key)
    return done, version


def install_new_key_file(current: Path, new_path: Path) -> Path:
    """Move the old key aside (kept, mode 0600) and put the new one in its place."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    old_copy = current.with_name(f"{current.name}.old-{stamp}")
    os.replace(current, old_copy)
    os.replace(new_path, current)
    return old_copy


def new_key_file_beside(current: Path) -> tuple[Path, MasterKey]:
    path = current.with_name(current.name + ".new")
    if path.exists():
        raise KeyFileError(f"{path} exists: an earlier rotation did not finish",
                           hint="if the database already uses it, move it over the key file; else delete it")
    return path, create_key_file(path)


def kept_key_files(key_file: Path) -> list[Path]:
    """The old key files 'safehold key rotate' kept beside ``key_file`` (``NAME.old-<time>``), newest first."""
    return sorted(key_file.parent.glob(f"{glob.escape(key_file.name)}.old-*"), reverse=True)


def find_key_file(check_value: bytes, key_file: Path) -> Path | None:
    """Which of ``key_file``, the old copies kept beside it and an unfinished rotation's ``NAME.new`` holds the
    master key whose check value is ``check_value`` (None: none of them)."""
    for path in (key_file, *kept_key_files(key_file), key_file.with_name(key_file.name + ".new")):
        try:
            if load_key_file(path).check_value == check_value:
                return path
        except (KeyFileError, OSError):
            continue
    return None


def key_file_from_env() -> bool:
    """Whether this process's key file comes from the environment rather than safehold.toml."""
    return bool(os.environ.get(KEY_FILE_ENV))


def database_key_mismatch(key_file: Path, master: MasterKey, needed: bytes, *, found: Path | None,
                          config: Path, from_env: bool) -> KeyFileError:
    """The refusal when the key file is not the one the database was encrypted with (pure): which key the
    database needs, the file beside the key file that holds it (``found``) if any, and how to name it."""
    needed_id = key_id_of(needed)
    source = f" (from {KEY_FILE_ENV})" if from_env else ""
    message = (f"the key file {key_file}{source} does not match this database: it holds master key "
               f"{master.key_id}, but this database needs master key {needed_id}")
    if found is not None:
        hint = (f"{found} holds key {needed_id}: name it as key_file in the [security] section of {config}, or "
                f"start with {KEY_FILE_ENV}={found}. (A backup restored with that key can be restored again under "
                f"this server's own key file: safehold restore BACKUP --data-dir DIR --key-file {found})")
    else:
        hint = (f"start with the key file of key {needed_id}: name it as key_file in the [security] section of "
                f"{config}, or set {KEY_FILE_ENV}. 'safehold key rotate' keeps the old key beside the key file "
                f"as {key_file.name}.old-<time>; a restored backup needs the key it was made with.")
    return KeyFileError(message, hint=hint)


async def check_key_file(conn: AsyncConnection, settings: Settings, master: MasterKey) -> None:
    """The runtime's key check, with a refusal that says which key the database needs and where it may be
    (before 'serve' starts its workers: a wrong key file there would only be logged by each worker)."""
    row = await cluster_store.get(conn)
    if row is not None and row.key_check != master.check_value:
        raise database_key_mismatch(settings.key_file, master, row.key_check,
                                    found=find_key_file(row.key_check, settings.key_file),
                                    config=settings.data_dir / CONFIG_NAME, from_env=key_file_from_env())
    await check_key(conn, master)


def rotation_notes(old_copy: Path, data_dir: Path) -> list[str]:
    """What 'safehold key rotate' tells the operator after the new key is in place (pure)."""
    return [
        "other servers of this cluster need the new key file at their next start",
        f"backups made before now still need the old key: safehold restore BACKUP --data-dir {data_dir} "
        f"--key-file {old_copy}",
        f"keep {old_copy} (and a copy of it away from this host) as long as you keep those backups",
    ]
