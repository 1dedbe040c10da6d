"""Audit streaming's state: each sink's delivery state and its cursor per server chain.

A cursor is the last seq of one server's chain that a sink has taken.  The records of one chain commit in
seq order (the chain head is locked by every append), so "every record of that chain after this seq" is
exactly what the sink has not taken yet; a global id would not do, since ids are drawn before commit and
commit out of order.  A cursor only moves forward.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from sqlalchemy import and_, case, func, literal, select, true, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from safehold.storage.schema import audit_heads, audit_sink_cursors, audit_sinks


async def start(conn: AsyncConnection, name: str, kind: str, *, from_beginning: bool) -> bool:
    """Create a sink's state, once.  A sink that starts "now" gets a cursor at every chain's head as
    committed at this moment (a record committed after it is the sink's); one that starts at the beginning
    gets none (every chain is delivered from seq 1).  Returns whether it was created now."""
    created = (await conn.execute(
        pg_insert(audit_sinks).values(name=name, kind=kind).on_conflict_do_nothing()
        .returning(audit_sinks.c.name))).first() is not None
    if created and not from_beginning:
        await conn.execute(pg_insert(audit_sink_cursors).from_select(
            ["sink", "server_id", "seq"],
            select(literal(name), audit_heads.c.server_id, audit_heads.c.seq)).on_conflict_do_nothing())
    return created


async def cursors(conn: AsyncConnection, name: str) -> dict[str, int]:
    """Server id -> the last seq of its chain the sink has taken (a chain not named: none yet)."""
    q = select(audit_sink_cursors.c.server_id, audit_sink_cursors.c.seq).where(audit_sink_cursors.c.sink == name)
    return {str(r.server_id): int(r.seq) for r in await conn.execute(q)}


async def heads(conn: AsyncConnection) -> dict[str, int]:
    """Server id -> the newest committed seq of its chain."""
    return {str(r.server_id): int(r.seq) for r in await conn.execute(select(audit_heads.c.server_id,
                                                                          audit_heads.c.seq))}


async def delivered(conn: AsyncConnection, name: str, moved: Mapping[str, int], count: int) -> None:
    """A delivery succeeded: the cursors move forward (never back) and the failure is cleared."""
    if moved:
        ins = pg_insert(audit_sink_cursors).values(
            [{"sink": name, "server_id": sid, "seq": seq} for sid, seq in sorted(moved.items())])
        await conn.execute(ins.on_conflict_do_update(
            index_elements=["sink", "server_id"],
            set_={"seq": func.greatest(audit_sink_cursors.c.seq, ins.excluded.seq), "updated_at": func.now()}))
    await conn.execute(update(audit_sinks).where(audit_sinks.c.name == name).values(
        attempted_at=func.now(), delivered_at=func.now(), delivered=audit_sinks.c.delivered + count,
        failures=0, failing_since=None, last_error=None))


async def failed(conn: AsyncConnection, name: str, error: str) -> None:
    """A delivery failed: why, and since when the sink fails."""
    await conn.execute(update(audit_sinks).where(audit_sinks.c.name == name).values(
        attempted_at=func.now(), failures=audit_sinks.c.failures + 1, last_error=error[:1000],
        failing_since=func.coalesce(audit_sinks.c.failing_since, func.now())))


@dataclass(frozen=True)
class SinkState:
    """What the database says of one sink: what every server's fail-closed check and the status read."""

    name: str
    kind: str
    lag: int  # committed records the sink has not taken yet, over every chain
    last_error: str | None
    failures: int
    failing_since: dt.datetime | None
    attempted_at: dt.datetime | None
    delivered_at: dt.datetime | None
    delivered: int


async def states(conn: AsyncConnection, names: Iterable[str] | None = None) -> dict[str, SinkState]:
    """The state of the sinks named (every sink known to the database if None), with their lag: one
    statement over the chain heads (one row per server) and the sinks' cursors."""
    behind = func.greatest(audit_heads.c.seq - func.coalesce(audit_sink_cursors.c.seq, 0), 0)
    lag = func.coalesce(func.sum(case((audit_heads.c.server_id.is_(None), 0), else_=behind)), 0)
    joined = audit_sinks.outerjoin(audit_heads, true()).outerjoin(
        audit_sink_cursors, and_(audit_sink_cursors.c.sink == audit_sinks.c.name,
                                 audit_sink_cursors.c.server_id == audit_heads.c.server_id))
    cols = (audit_sinks.c.name, audit_sinks.c.kind, audit_sinks.c.last_error, audit_sinks.c.failures,
            audit_sinks.c.failing_since, audit_sinks.c.attempted_at, audit_sinks.c.delivered_at,
            audit_sinks.c.delivered)
    q = select(*cols, lag.label("lag")).select_from(joined).group_by(*cols)
    if names is not None:
        q = q.where(audit_sinks.c.name.in_(list(names)))
    return {r.name: SinkState(r.name, r.kind, int(r.lag), r.last_error, int(r.failures), r.failing_since,
                              r.attempted_at, r.delivered_at, int(r.delivered)) for r in await conn.execute(q)}


async def chain_lags(conn: AsyncConnection, name: str) -> dict[str, tuple[int, int]]:
    """Server id -> (the sink's cursor, the chain's head) for every chain (the status's detail)."""
    q = select(audit_heads.c.server_id, audit_heads.c.seq, audit_sink_cursors.c.seq.label("cursor")).outerjoin(
        audit_sink_cursors, and_(audit_sink_cursors.c.sink == name,
                                 audit_sink_cursors.c.server_id == audit_heads.c.server_id))
    return {str(r.server_id): (int(r.cursor or 0), int(r.seq)) for r in await conn.execute(q)}
