"""The audit log: chained appends and filtered reads."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, bindparam, func, insert, literal, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from safehold.audit.chain import (
    GENESIS,
    AuditEvent,
    ChainConflict,
    ChainedRecord,
    StoredRecord,
    extend,
)
from safehold.storage.rows import AnyRow
from safehold.storage.schema import audit_heads, audit_log, servers

PUBLIC_COLUMNS = [
    audit_log.c.id, audit_log.c.server_id, audit_log.c.server_role, audit_log.c.seq, audit_log.c.at,
    audit_log.c.actor, audit_log.c.source_ip, audit_log.c.action, audit_log.c.target_type,
    audit_log.c.target_id, audit_log.c.target_name, audit_log.c.result, audit_log.c.detail,
]


# the statements of every append, built once (building them per call costs more than running them)
_HEAD_LOCKED = (select(audit_heads.c.seq, audit_heads.c.mac).where(audit_heads.c.server_id == bindparam("server_id"))
                .with_for_update())
_ADD_RECORDS = insert(audit_log)
_MOVE_HEAD = (update(audit_heads).where(audit_heads.c.server_id == bindparam("head_of"))
              .values(seq=bindparam("new_seq"), mac=bindparam("new_mac")))


async def append(
    conn: AsyncConnection, key: bytes, server_id: str, server_role: str, events: Sequence[AuditEvent]
) -> list[ChainedRecord]:
    """Append events to this server's chain inside the caller's transaction.

    The chain head row is locked, so appends from several processes of one
    server (or a batch and a write transaction) are serialised.
    """
    if not events:
        return []
    head = (await conn.execute(_HEAD_LOCKED, {"server_id": server_id})).first()
    if head is None:  # this server's first record: create its head, then lock it
        await conn.execute(
            pg_insert(audit_heads).values(server_id=server_id, seq=0, mac=GENESIS).on_conflict_do_nothing()
        )
        head = (await conn.execute(_HEAD_LOCKED, {"server_id": server_id})).one()
    records = extend(key, server_id, server_role, head.seq, bytes(head.mac), events)
    await conn.execute(_ADD_RECORDS, [r.row() for r in records])
    await conn.execute(_MOVE_HEAD, {"head_of": server_id, "new_seq": records[-1].seq, "new_mac": records[-1].mac})
    return records


def _filters(
    *, action: str | None = None, actor: str | None = None, server: str | None = None,
    role: str | None = None, result: str | None = None, since: dt.datetime | None = None,
    until: dt.datetime | None = None, target_id: str | None = None,
) -> ColumnElement[bool]:
    cond: ColumnElement[bool] = literal(True)
    if action:
        cond = and_(cond, audit_log.c.action == action)
    if actor:
        cond = and_(cond, func.lower(audit_log.c.actor) == func.lower(actor))
    if server:
        cond = and_(cond, audit_log.c.server_id == server)
    if role:
        cond = and_(cond, audit_log.c.server_role == role)
    if result:
        cond = and_(cond, audit_log.c.result == result)
    if since:
        cond = and_(cond, audit_log.c.at >= since)
    if until:
        cond = and_(cond, audit_log.c.at < until)
    if target_id:
        cond = and_(cond, audit_log.c.target_id == target_id)
    return cond


async def search(conn: AsyncConnection, *, limit: int, offset: int, **filters: Any) -> tuple[list[AnyRow], int]:
    cond = _filters(**filters)
    total = (await conn.execute(select(func.count()).select_from(audit_log).where(cond))).scalar_one()
    rows = await conn.execute(
        _with_server_name().where(cond).order_by(audit_log.c.at.desc(), audit_log.c.id.desc())
        .limit(limit).offset(offset)
    )
    return list(rows), int(total)


def _with_server_name() -> Select[Any]:
    """Records with the display name of the server they happened on (as registered now)."""
    return select(*PUBLIC_COLUMNS, func.coalesce(servers.c.name, "").label("server_name")).outerjoin(
        servers, servers.c.id == audit_log.c.server_id
    )


async def export(conn: AsyncConnection, **filters: Any) -> list[AnyRow]:
    cond = _filters(**filters)
    return list(await conn.execute(_with_server_name().where(cond).order_by(audit_log.c.at, audit_log.c.id)))


async def chain_servers(conn: AsyncConnection) -> list[str]:
    q = select(audit_heads.c.server_id).union(select(audit_log.c.server_id).distinct())
    return sorted(r[0] for r in await conn.execute(q))


async def head(conn: AsyncConnection, server_id: str) -> tuple[int, bytes] | None:
    row = (
        await conn.execute(select(audit_heads.c.seq, audit_heads.c.mac).where(audit_heads.c.server_id == server_id))
    ).first()
    return (row.seq, bytes(row.mac)) if row else None


async def chain_page(conn: AsyncConnection, server_id: str, after_seq: int, limit: int) -> list[StoredRecord]:
    rows = await conn.execute(
        select(audit_log).where(audit_log.c.server_id == server_id, audit_log.c.seq > after_seq)
        .order_by(audit_log.c.seq).limit(limit)
    )
    out = []
    for r in rows:
        event = AuditEvent(
            actor=r.actor, action=r.action, result=r.result, source_ip=r.source_ip,
            target_type=r.target_type, target_id=r.target_id, target_name=r.target_name,
            detail=r.detail, at=r.at,
        )
        out.append(StoredRecord(r.id, ChainedRecord(r.server_id, r.server_role, r.seq, event,
                                                    bytes(r.prev_mac), bytes(r.mac))))
    return out


async def insert_shipped(conn: AsyncConnection, records: Sequence[ChainedRecord]) -> list[ChainedRecord]:
    """Store records chained elsewhere (a read-only server's spool), in the caller's transaction.

    A record already stored counts as stored only if it is the same record (same MAC), so shipping
    the same batch twice stores it once; a different record at that (server, seq), or a record that
    does not link to the stored one before it, raises :class:`ChainConflict` (nothing of the batch is
    stored, the spool keeps it pending).  The head only moves forward.  Returns the records stored now
    (not those stored before)."""
    stored_now: list[ChainedRecord] = []
    if not records:
        return stored_now
    by_server: dict[str, list[ChainedRecord]] = {}
    for r in records:
        by_server.setdefault(r.server_id, []).append(r)
    for server_id, batch in by_server.items():
        wanted = {r.seq for r in batch} | {r.seq - 1 for r in batch}
        stored = {row.seq: bytes(row.mac) for row in await conn.execute(
            select(audit_log.c.seq, audit_log.c.mac).where(audit_log.c.server_id == server_id,
                                                          audit_log.c.seq.in_(wanted)))}
        fresh = []
        for r in batch:
            have = stored.get(r.seq)
            if have is not None:
                if have != r.mac:
                    raise ChainConflict(server_id, r.seq, "the database holds a different record there")
                continue
            before = stored.get(r.seq - 1)
            if before is not None and before != r.prev_mac:
                raise ChainConflict(server_id, r.seq,
                                    f"it does not link to the record {r.seq - 1} the database holds")
            fresh.append(r)
            stored[r.seq] = r.mac
        if not fresh:
            continue
        stored_now.extend(fresh)
        await conn.execute(insert(audit_log), [r.row() for r in fresh])
        last = fresh[-1]
        head = pg_insert(audit_heads).values(server_id=server_id, seq=last.seq, mac=last.mac)
        await conn.execute(head.on_conflict_do_update(
            index_elements=["server_id"], set_={"seq": head.excluded.seq, "mac": head.excluded.mac},
            where=audit_heads.c.seq < head.excluded.seq))
    return stored_now


def shipper(engine: AsyncEngine) -> Callable[[Sequence[ChainedRecord]], Awaitable[None]]:
    """``send`` for :func:`safehold.audit.spool.ship`: each batch stored in one transaction on ``engine``."""

    async def send(records: Sequence[ChainedRecord]) -> None:
        async with engine.begin() as conn:
            await insert_shipped(conn, records)

    return send
