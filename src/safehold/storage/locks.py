"""Session-level PostgreSQL advisory locks (the schedules lease, ha.lease): taken on a session of its
own, held until released or until the session ends, and whose holder every session can see."""

from __future__ import annotations

from typing import NamedTuple

from sqlalchemy import URL, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from safehold.storage.db import DbTarget, make_engine

_HOLDER_SQL = text(
    "SELECT l.pid, a.application_name, l.pid = pg_backend_pid() AS mine FROM pg_locks l "
    "LEFT JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted "
    "AND l.classid::bigint = :ns AND l.objid::bigint = :key AND l.objsubid = 2 LIMIT 1")
_LOCK_SQL = text("SELECT pg_try_advisory_lock(CAST(:ns AS int), CAST(:key AS int)) AS ok, pg_backend_pid() AS pid")
_UNLOCK_SQL = text("SELECT pg_advisory_unlock(CAST(:ns AS int), CAST(:key AS int)) AS ok")


class LockHolder(NamedTuple):
    pid: int  # its database backend
    application_name: str
    mine: bool  # held by the asking session


class Taken(NamedTuple):
    ok: bool
    pid: int  # the asking session's backend


def session_engine(url: URL | DbTarget, *, application_name: str, timeout: float) -> AsyncEngine:
    """Unpooled autocommit sessions for holding a lock: closing one really ends the session (and the
    lock with it), and the server gives up on a vanished holder (freeing the lock) within ~11 s."""
    return make_engine(
        url, pooled=False, autocommit=True, connect_timeout=timeout, application_name=application_name,
        options="-c tcp_keepalives_idle=5 -c tcp_keepalives_interval=2 -c tcp_keepalives_count=3",
        connect_args={"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 3},
    )


async def holder(conn: AsyncConnection, namespace: int, key: int) -> LockHolder | None:
    """Who holds the lock (namespace, key); None when it is free."""
    row = (await conn.execute(_HOLDER_SQL, {"ns": namespace, "key": key})).first()
    if row is None:
        return None
    return LockHolder(int(row.pid), row.application_name or "", bool(row.mine))


async def try_lock(conn: AsyncConnection, namespace: int, key: int) -> Taken:
    """Take the lock for this session if it is free (never waits)."""
    row = (await conn.execute(_LOCK_SQL, {"ns": namespace, "key": key})).one()
    return Taken(bool(row.ok), int(row.pid))


async def unlock(conn: AsyncConnection, namespace: int, key: int) -> bool:
    """Release the lock held by this session; False when it held none."""
    return bool((await conn.execute(_UNLOCK_SQL, {"ns": namespace, "key": key})).one().ok)
