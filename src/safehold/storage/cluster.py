"""The cluster row (identity, key check value, generation) and the wrapped keyring."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from safehold.storage.db import DbTarget, connect
from safehold.storage.schema import cluster, keyring


@dataclass(frozen=True)
class ClusterRow:
    cluster_id: str
    key_check: bytes
    generation: int
    acting_primary: str | None = None  # set by promotion


@dataclass(frozen=True)
class WrappedKey:
    purpose: str
    version: int
    wrapped: bytes
    active: bool


async def get(conn: AsyncConnection) -> ClusterRow | None:
    row = (await conn.execute(select(cluster.c.cluster_id, cluster.c.key_check, cluster.c.generation,
                                     cluster.c.acting_primary))).first()
    return ClusterRow(row.cluster_id, bytes(row.key_check), row.generation, row.acting_primary) if row else None


async def create(conn: AsyncConnection, cluster_id: str, key_check: bytes) -> None:
    await conn.execute(insert(cluster).values(id=1, cluster_id=cluster_id, key_check=key_check))


async def ca_cert(conn: AsyncConnection) -> bytes | None:
    """The cluster CA's certificate (PEM), when it was kept."""
    value = (await conn.execute(select(cluster.c.ca_cert))).scalar_one_or_none()
    return value.encode() if value else None


async def keep_ca_cert(conn: AsyncConnection, pem: bytes) -> None:
    """Keep the CA's certificate (once: a kept one is never replaced)."""
    await conn.execute(update(cluster).where(cluster.c.id == 1, cluster.c.ca_cert.is_(None))
                       .values(ca_cert=pem.decode()))


async def set_key_check(conn: AsyncConnection, key_check: bytes) -> None:
    await conn.execute(update(cluster).where(cluster.c.id == 1).values(key_check=key_check))


async def keys(conn: AsyncConnection) -> list[WrappedKey]:
    rows = await conn.execute(
        select(keyring.c.purpose, keyring.c.version, keyring.c.wrapped, keyring.c.active).order_by(
            keyring.c.purpose, keyring.c.version
        )
    )
    return [WrappedKey(r.purpose, r.version, bytes(r.wrapped), r.active) for r in rows]


async def add_key(conn: AsyncConnection, purpose: str, version: int, wrapped: bytes, *, active: bool) -> None:
    if active:
        await conn.execute(update(keyring).where(keyring.c.purpose == purpose).values(active=False))
    await conn.execute(
        insert(keyring).values(purpose=purpose, version=version, wrapped=wrapped, active=active)
    )


async def rewrap_key(conn: AsyncConnection, purpose: str, version: int, wrapped: bytes) -> None:
    await conn.execute(
        update(keyring)
        .where(keyring.c.purpose == purpose, keyring.c.version == version)
        .values(wrapped=wrapped)
    )


async def database_read_only(conn: AsyncConnection) -> bool:
    """Whether the database refuses writes by default (fencing sets ``default_transaction_read_only``)."""
    value = (await conn.execute(text("SELECT current_setting('default_transaction_read_only')"))).scalar()
    return value == "on"


async def raise_generation(conn: AsyncConnection, acting_primary: str) -> int:
    """A promotion, in the caller's transaction: the next generation (returned), with ``acting_primary``
    as the server holding it from now on (the row is locked until the transaction ends)."""
    row = (await conn.execute(select(cluster.c.generation).where(cluster.c.id == 1).with_for_update())).one()
    generation = int(row.generation) + 1
    await conn.execute(update(cluster).where(cluster.c.id == 1).values(
        generation=generation, acting_primary=acting_primary, promoted_at=func.now()))
    return generation


# --- synchronously, on a connection of their own (the CLI's teardown) ---------------------------


def cluster_id(target: DbTarget) -> str | None:
    """The database's cluster id (None before the cluster row exists)."""
    with connect(target) as conn:
        row = conn.execute("SELECT cluster_id::text FROM cluster WHERE id = 1").fetchone()
    return str(row[0]) if row else None


def renew_identity(target: DbTarget, new_cluster_id: str) -> None:
    """A new cluster under ``new_cluster_id``: generation 1, no acting primary, never promoted."""
    with connect(target) as conn:
        conn.execute("UPDATE cluster SET cluster_id = %s::uuid, generation = 1, acting_primary = NULL, "
                     "promoted_at = NULL WHERE id = 1", (new_cluster_id,))
