"""The cluster-wide settings (``cluster_settings``): one row per key ("alerts", "failover") with its JSON
value, its sealed secrets (ciphertext only; sealing is the caller's) and a version that counts the
changes, so that a change is a compare-and-set and a follower notices it by the version alone."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from safehold.storage.schema import cluster_settings

TABLE = cluster_settings.name
SECRETS_COLUMN = cluster_settings.c.secrets_enc.name


@dataclass(frozen=True)
class StoredSetting:
    key: str
    value: dict[str, Any]
    secrets_enc: bytes | None
    version: int
    updated_at: Any
    updated_by: str


async def get(conn: AsyncConnection, key: str, *, for_update: bool = False) -> StoredSetting | None:
    q = select(cluster_settings).where(cluster_settings.c.key == key)
    if for_update:
        q = q.with_for_update()
    r = (await conn.execute(q)).one_or_none()
    if r is None:
        return None
    return StoredSetting(r.key, dict(r.value), bytes(r.secrets_enc) if r.secrets_enc is not None else None,
                         int(r.version), r.updated_at, r.updated_by)


async def versions(conn: AsyncConnection) -> dict[str, int]:
    """The version of every stored key (a cheap check for a change)."""
    q = select(cluster_settings.c.key, cluster_settings.c.version)
    return {r.key: int(r.version) for r in await conn.execute(q)}


async def insert_if_absent(conn: AsyncConnection, key: str, value: dict[str, Any], secrets_enc: bytes | None,
                           by: str) -> bool:
    """Store ``key`` unless it is stored already; whether it was stored now."""
    stmt = (pg_insert(cluster_settings).values(key=key, value=value, secrets_enc=secrets_enc, updated_by=by)
            .on_conflict_do_nothing(index_elements=["key"]).returning(cluster_settings.c.key))
    return (await conn.execute(stmt)).scalar_one_or_none() is not None


async def put(conn: AsyncConnection, key: str, value: dict[str, Any], secrets_enc: bytes | None, by: str,
              *, expected_version: int | None) -> int | None:
    """Store ``value`` under ``key`` if its version is still ``expected_version`` (None: it is not stored
    yet); the new version, or None when another change came first."""
    if expected_version is None:
        return 1 if await insert_if_absent(conn, key, value, secrets_enc, by) else None
    stmt = (update(cluster_settings)
            .where(cluster_settings.c.key == key, cluster_settings.c.version == expected_version)
            .values(value=value, secrets_enc=secrets_enc, updated_by=by, version=cluster_settings.c.version + 1,
                    updated_at=func.clock_timestamp())
            .returning(cluster_settings.c.version))
    new = (await conn.execute(stmt)).scalar_one_or_none()
    return int(new) if new is not None else None
