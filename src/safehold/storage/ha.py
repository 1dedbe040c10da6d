"""The HA event log and the last snapshot the monitor compared against."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from safehold.storage.rows import AnyRow
from safehold.storage.schema import ha_events, settings

SNAPSHOT_KEY = "ha.last_snapshot"


async def last_snapshot(conn: AsyncConnection) -> dict[str, Any] | None:
    """The snapshot, locked until the transaction ends (the monitor that compares and replaces it)."""
    q = select(settings.c.value).where(settings.c.key == SNAPSHOT_KEY).with_for_update()
    value = (await conn.execute(q)).scalar_one_or_none()
    return value if isinstance(value, dict) else None


async def read_snapshot(conn: AsyncConnection) -> dict[str, Any] | None:
    """The snapshot as it is now, without a lock (a reader; a replica can take no lock)."""
    value = (await conn.execute(select(settings.c.value).where(settings.c.key == SNAPSHOT_KEY))).scalar_one_or_none()
    return value if isinstance(value, dict) else None


async def save_snapshot(conn: AsyncConnection, snapshot: dict[str, Any]) -> None:
    stmt = pg_insert(settings).values(key=SNAPSHOT_KEY, value=snapshot)
    await conn.execute(stmt.on_conflict_do_update(index_elements=["key"], set_={"value": stmt.excluded.value}))


async def add_events(conn: AsyncConnection, reported_by: str,
                     events: Sequence[tuple[str, str, str] | tuple[str, str, str, Sequence[str]]]) -> None:
    """Log events: (kind, subject, message[, script arguments])."""
    if events:
        await conn.execute(insert(ha_events), [
            {"kind": e[0], "subject": e[1], "message": e[2], "reported_by": reported_by,
             "args": list(e[3]) if len(e) > 3 else []} for e in events])


async def recent_events(conn: AsyncConnection, limit: int = 100, offset: int = 0) -> list[AnyRow]:
    """The newest events first."""
    q = select(ha_events).order_by(ha_events.c.id.desc()).limit(limit).offset(offset)
    return list(await conn.execute(q))


async def count_events(conn: AsyncConnection) -> int:
    return int((await conn.execute(select(func.count()).select_from(ha_events))).scalar_one())
