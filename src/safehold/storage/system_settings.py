"""Server settings of the bundled database changed at run time (ALTER SYSTEM, then a reload), as its
superuser: ``synchronous_standby_names`` (synchronous mode) and ``default_transaction_read_only``
(fencing)."""

from __future__ import annotations

from psycopg import sql
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from safehold.storage.db import DbTarget, connect

SYNC_NAMES = "synchronous_standby_names"


async def current_setting(conn: AsyncConnection, name: str) -> str:
    """A setting's value as the session sees it ('' when empty)."""
    value = (await conn.execute(text("SELECT current_setting(:name)"), {"name": name})).scalar_one()
    return str(value or "")


async def set_sync_names(conn: AsyncConnection, value: str) -> None:
    """ALTER SYSTEM (postgresql.auto.conf, read after safehold.conf) and reload.  Neither waits for a
    synchronous standby: no transaction id, no commit record.  ``conn`` is an autocommit connection."""
    raw = await conn.get_raw_connection()
    driver = raw.driver_connection
    assert driver is not None  # a connection checked out of the pool is open
    if value:
        stmt = sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(SYNC_NAMES), sql.Literal(value))
    else:
        stmt = sql.SQL("ALTER SYSTEM RESET {}").format(sql.Identifier(SYNC_NAMES))
    await driver.execute(stmt)
    await driver.execute("SELECT pg_reload_conf()")


def reset_sync_names(superuser: DbTarget) -> None:
    """Synchronous replication off (the setting back to its default) and reload."""
    with connect(superuser, "postgres") as conn:
        conn.execute(sql.SQL("ALTER SYSTEM RESET synchronous_standby_names"))
        conn.execute("SELECT pg_reload_conf()")


def set_read_only(superuser: DbTarget, on: bool, *, timeout: float = 5) -> None:
    """Make the database refuse writes by default (or accept them again); with ``on``, the sessions of
    ``superuser.dbname`` are ended, so one already in a transaction commits nothing more."""
    with connect(superuser, "postgres", timeout=timeout) as conn:
        if on:
            conn.execute("ALTER SYSTEM SET default_transaction_read_only = on")
        else:
            conn.execute("ALTER SYSTEM RESET default_transaction_read_only")
        conn.execute("SELECT pg_reload_conf()")
        if on:
            # sessions already in a transaction keep it; end them so nothing more commits
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = "
                         "'client backend' AND pid <> pg_backend_pid() AND datname = %s", (superuser.dbname,))


def read_only_state(superuser: DbTarget, *, timeout: float = 5) -> tuple[bool, bool]:
    """(writes refused by default, in recovery) of the database."""
    with connect(superuser, "postgres", timeout=timeout) as conn:
        row = conn.execute("SELECT current_setting('default_transaction_read_only'), pg_is_in_recovery()"
                           ).fetchone()
    return (row is not None and row[0] == "on", row is not None and bool(row[1]))
