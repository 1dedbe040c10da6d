"""Master key rotation: re-wrap the data keys, and optionally re-encrypt every secret."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from safehold.audit.chain import AuditEvent
from safehold.crypto.barrier import Secret
from safehold.crypto.envelope import Keyring, new_data_key
from safehold.crypto.keyfile import MasterKey, create_key_file
from safehold.domain import AuditAction, AuditResult
from safehold.errors import KeyFileError
from safehold.runtime import DATA, Runtime, check_key, wrap_label
from safehold.storage import cluster as cluster_store
from safehold.storage import vault as vault_store

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
