"""The server registry: one row per Safehold server of the cluster."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from safehold.storage.rows import AnyRow
from safehold.storage.schema import servers


async def register(conn: AsyncConnection, **values: Any) -> None:
    stmt = pg_insert(servers).values(last_heartbeat=func.now(), **values)
    update: dict[str, Any] = {k: stmt.excluded[k] for k in values if k != "id"}
    update["last_heartbeat"] = func.now()
    await conn.execute(stmt.on_conflict_do_update(index_elements=["id"], set_=update))


async def all_servers(conn: AsyncConnection) -> list[AnyRow]:
    return list(await conn.execute(select(servers).order_by(servers.c.registered_at)))
