"""The server registry: one row per Safehold server of the cluster."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, NamedTuple

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from safehold.storage.db import DbTarget, connect
from safehold.storage.rows import AnyRow
from safehold.storage.schema import auth_tokens, servers


async def register(conn: AsyncConnection, **values: Any) -> None:
    stmt = pg_insert(servers).values(last_heartbeat=func.now(), **values)
    changes: dict[str, Any] = {k: stmt.excluded[k] for k in values if k != "id"}
    changes["last_heartbeat"] = func.now()
    await conn.execute(stmt.on_conflict_do_update(index_elements=["id"], set_=changes))


async def all_servers(conn: AsyncConnection) -> list[AnyRow]:
    return list(await conn.execute(select(servers).order_by(servers.c.registered_at)))


async def heartbeat(conn: AsyncConnection, server_id: str) -> None:
    await conn.execute(update(servers).where(servers.c.id == server_id).values(last_heartbeat=func.now()))


async def rename(conn: AsyncConnection, server_id: str, name: str) -> int:
    return (await conn.execute(update(servers).where(servers.c.id == server_id).values(name=name))).rowcount


async def session_counts(conn: AsyncConnection) -> dict[str, int]:
    """Active login sessions per server id."""
    q = (select(auth_tokens.c.server_id, func.count())
         .where(auth_tokens.c.kind == "session", auth_tokens.c.expires_at > func.now())
         .group_by(auth_tokens.c.server_id))
    return {r[0]: int(r[1]) for r in await conn.execute(q)}


async def set_role(conn: AsyncConnection, server_id: str, role: str) -> None:
    await conn.execute(update(servers).where(servers.c.id == server_id).values(role=role))


async def remove(conn: AsyncConnection, server_ids: Collection[str]) -> None:
    """Delete these servers' registry rows."""
    if server_ids:
        await conn.execute(delete(servers).where(servers.c.id.in_(list(server_ids))))


# --- synchronously, on a connection of their own (the CLI's teardown) ---------------------------


class RegistryEntry(NamedTuple):
    id: str
    name: str
    role: str
    url: str


def registry(target: DbTarget) -> list[RegistryEntry]:
    """Every registered server, oldest first."""
    with connect(target) as conn:
        rows = conn.execute("SELECT id::text, name, role, url FROM servers ORDER BY registered_at").fetchall()
    return [RegistryEntry(str(r[0]), str(r[1]), str(r[2]), str(r[3])) for r in rows]


def unregister(target: DbTarget, server_id: str) -> bool:
    """Delete one server's registry row; False when it was not listed."""
    with connect(target) as conn:
        return bool(conn.execute("DELETE FROM servers WHERE id = %s::uuid", (server_id,)).rowcount)


def keep_only(target: DbTarget, server_id: str, role: str) -> None:
    """Forget every other server and give this one ``role``, in one transaction."""
    with connect(target) as conn, conn.transaction():
        conn.execute("DELETE FROM servers WHERE id <> %s::uuid", (server_id,))
        conn.execute("UPDATE servers SET role = %s WHERE id = %s::uuid", (role, server_id))
