"""The server registry: one row per Safehold server of the cluster."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from safehold.storage.schema import servers


async def register(conn: AsyncConnection, **values: Any) -> None:
    stmt = pg_insert(servers).values(last_heartbeat=func.now(), **values)
    update = {k: stmt.excluded[k] for k in values if k != "id"}
    update["last_heartbeat"] = func.now()
    await conn.execute(stmt.on_conflict_do_update(index_elements=["id"], set_=update))


async def all_servers(conn: AsyncConnection) -> list[Row[Any]]:
    return list(await conn.execute(select(servers).order_by(servers.c.registered_at)))
