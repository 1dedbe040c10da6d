"""Alert delivery: the cursor (the last ha_events id handed to the alert channels) and the events
after it.  The cursor lives in ``settings`` under ``alerts.cursor``."""

from __future__ import annotations

from sqlalchemy import func, literal, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from safehold.storage.rows import AnyRow
from safehold.storage.schema import ha_events, servers, settings

CURSOR_KEY = "alerts.cursor"


async def claim_cursor(conn: AsyncConnection) -> tuple[int, bool]:
    """The cursor, locked until the end of the transaction (two relays never hand out the same
    events); the first time, it is created at the newest event id so history is not replayed.
    Returns (cursor, created)."""
    newest = select(func.coalesce(func.max(ha_events.c.id), 0)).scalar_subquery()
    stmt = (pg_insert(settings).from_select(["key", "value"], select(literal(CURSOR_KEY), func.to_jsonb(newest)))
            .on_conflict_do_nothing(index_elements=["key"]).returning(settings.c.value))
    created = (await conn.execute(stmt)).scalar_one_or_none()
    if created is not None:
        return int(created), True
    q = select(settings.c.value).where(settings.c.key == CURSOR_KEY).with_for_update()
    value = (await conn.execute(q)).scalar_one()
    if isinstance(value, int) and not isinstance(value, bool):
        return value, False
    # not a number (edited by hand?): start again from the newest event rather than replay history
    newest_id = int((await conn.execute(select(func.coalesce(func.max(ha_events.c.id), 0)))).scalar_one())
    await set_cursor(conn, newest_id)
    return newest_id, True


async def set_cursor(conn: AsyncConnection, event_id: int) -> None:
    await conn.execute(update(settings).where(settings.c.key == CURSOR_KEY)
                       .values(value=event_id, updated_at=func.now()))


async def events_after(conn: AsyncConnection, event_id: int, limit: int) -> list[AnyRow]:
    """The events with an id greater than ``event_id``, oldest first."""
    q = select(ha_events).where(ha_events.c.id > event_id).order_by(ha_events.c.id).limit(limit)
    return list(await conn.execute(q))


async def server_names(conn: AsyncConnection) -> dict[str, str]:
    """Server id -> display name, to say who reported an event."""
    return {str(r.id): r.name for r in await conn.execute(select(servers.c.id, servers.c.name))}
