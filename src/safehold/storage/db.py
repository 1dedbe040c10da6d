"""Database connections and migrations.

The web server and the CLI share one async code path (SQLAlchemy Core over
psycopg 3).  Migrations are Alembic revisions run with a synchronous
connection as the database owner.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import psycopg
from psycopg import pq
from psycopg.conninfo import make_conninfo
from sqlalchemy import URL, create_engine, text
from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from safehold.config import Settings
from safehold.errors import DatabaseError
from safehold.storage import dburl

MIGRATIONS_DIR = Path(__file__).parent / "migrations"

#: The connection and engine types callers above storage name (AsyncConnection, AsyncEngine), and the
#: errors they tell apart (IntegrityError, DataError, SQLAlchemyError), are imported from here, so that
#: nothing above storage imports the driver.
__all__ = ["DB_ERRORS", "AsyncConnection", "AsyncEngine", "DataError", "DbTarget", "IntegrityError",
           "Reachable", "SQLAlchemyError", "app_target", "check_reachable", "connect", "database_time",
           "driver_reason", "grant_app_privileges", "make_engine", "owner_target", "ping", "ping_conninfo",
           "ping_server", "primary_target", "run_migrations", "schema_is_current"]

#: What a database call may raise below storage (the sync driver's and the async engine's errors):
#: callers above storage catch these without naming a driver.
DB_ERRORS: tuple[type[psycopg.Error], type[SQLAlchemyError]] = (psycopg.Error, SQLAlchemyError)


@dataclass(frozen=True)
class DbTarget:
    """Where to connect and as whom.  ``password`` is never logged or shown."""

    host: str
    port: int
    dbname: str
    user: str
    password: str
    sslrootcert: Path | None
    url: str | None = None  # an external database URL, used as is

    def __repr__(self) -> str:
        if self.url is not None:
            return f"DbTarget({dburl.describe(self.params())})"
        return f"DbTarget({self.user}@{self.host}:{self.port}/{self.dbname})"

    def params(self) -> dict[str, str]:
        """An external database's connection parameters, as its URL says (both multi-host forms)."""
        assert self.url is not None
        return dburl.conninfo(self.url)

    def hosts(self) -> list[tuple[str, int]]:
        """Each host with its port (an external database: every one its URL names)."""
        return dburl.hosts(self.params()) if self.url is not None else [(self.host, self.port)]

    def where(self) -> str:
        """Where it points, for messages (no password)."""
        return dburl.describe(self.params()) if self.url is not None else f"{self.host}:{self.port}"

    def sqlalchemy_url(self, *, driver: str = "postgresql+psycopg") -> URL:
        if self.url is not None:  # connections come from psycopg itself (see _engine_args)
            return URL.create(driver)
        query = {"sslmode": "verify-full", "application_name": "safehold"}
        if self.sslrootcert is not None:
            query["sslrootcert"] = str(self.sslrootcert)
        return URL.create(
            driver, username=self.user, password=self.password, host=self.host,
            port=self.port, database=self.dbname, query=query,
        )

    def libpq_env(self) -> dict[str, str]:
        """Environment for PostgreSQL client tools (pg_dump, psql): no password on a command line."""
        if self.url is not None:
            return dburl.libpq_env(self.params())
        env = {
            "PGHOST": self.host, "PGPORT": str(self.port), "PGDATABASE": self.dbname,
            "PGUSER": self.user, "PGPASSWORD": self.password, "PGSSLMODE": "verify-full",
        }
        if self.sslrootcert is not None:
            env["PGSSLROOTCERT"] = str(self.sslrootcert)
        return env


def app_target(settings: Settings) -> DbTarget:
    db = settings.database
    if db.mode == "external":
        if not db.url:
            raise DatabaseError("database.mode is 'external' but database.url is not set")
        return DbTarget("", 0, "", "", "", None, url=db.url)
    return DbTarget(
        host=db.host, port=db.port, dbname=db.name, user=db.user,
        password=settings.read_secret(db.password_file), sslrootcert=settings.path(settings.http.tls_ca),
    )


def primary_target(settings: Settings) -> DbTarget:
    """The cluster's writable database as a read-only server reaches it (to ship its audit spool), with
    this server's own login: an engine's read-write member (``database.primary_url``, else ``database.url``
    asking for a read-write session), or the bundled primary at ``ha.primary_db_host``/``port``."""
    db = settings.database
    if db.mode == "external":
        if not db.url:
            raise DatabaseError("database.mode is 'external' but database.url is not set")
        return DbTarget("", 0, "", "", "", None, url=db.primary_url or dburl.with_session_attrs(db.url, "read-write"))
    if not settings.ha.primary_db_host or not settings.ha.primary_db_port:
        raise DatabaseError("ha.primary_db_host/port are not set: the primary database is unknown")
    local = app_target(settings)
    return DbTarget(settings.ha.primary_db_host, settings.ha.primary_db_port, local.dbname, local.user, local.password,
                    local.sslrootcert)


def owner_target(settings: Settings, dbname: str | None = None) -> DbTarget:
    """The bundled database's superuser (migrations, backups).  External: the app login."""
    db = settings.database
    if db.mode == "external":
        return app_target(settings)
    return DbTarget(
        host=db.host, port=db.port, dbname=dbname or db.name, user=db.superuser,
        password=settings.read_secret(db.superuser_password_file),
        sslrootcert=settings.path(settings.http.tls_ca),
    )


def driver_reason(exc: BaseException) -> str:
    """Why a database call failed, in the driver's own first line (the host and the reason, never a
    password); SQLAlchemy's wrapper is looked through."""
    lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return lines[0][:300] if lines else "no answer"


def connect(target: DbTarget, dbname: str | None = None, *, timeout: float = 10) -> psycopg.Connection:
    """The one synchronous connection helper: an autocommit psycopg connection to ``target`` (its
    database, or ``dbname``), TLS verified against the cluster CA (verify-full), giving up after
    ``timeout`` seconds.  An external database is reached as its URL says.  A connection that cannot
    be made raises DatabaseError; statements raise the driver's errors (see DB_ERRORS)."""
    if target.url is not None:  # an external database, as its URL says
        params = {"connect_timeout": str(max(1, int(timeout))), **target.params()}
        if dbname is not None:
            params["dbname"] = dbname
        try:
            return psycopg.connect(make_conninfo("", **params), autocommit=True)
        except psycopg.Error as exc:
            raise DatabaseError(f"cannot connect to the database ({driver_reason(exc)})") from None
    bundled: dict[str, Any] = {"host": target.host, "port": target.port, "user": target.user,
                               "password": target.password, "dbname": dbname or target.dbname,
                               "sslmode": "verify-full", "connect_timeout": max(1, int(timeout))}
    if target.sslrootcert is not None:
        bundled["sslrootcert"] = str(target.sslrootcert)
    try:
        return psycopg.connect(**bundled, autocommit=True)
    except psycopg.OperationalError as exc:
        raise DatabaseError(f"cannot connect to the database as {target.user} ({driver_reason(exc)})") from None


def check_reachable(target: DbTarget, *, timeout: float = 10) -> None:
    """Connect and make one round trip; raises (DatabaseError or DB_ERRORS) when the database does not answer."""
    with connect(target, timeout=timeout) as conn:
        conn.execute("SELECT 1")


class Reachable(StrEnum):
    """What a database server said to a ping (libpq's ``PQping``, as ``pg_isready`` asks)."""

    ACCEPTING = "accepting"  # it would accept a connection
    REFUSING = "refusing"    # it answers but refuses connections (starting up, shutting down, recovering)
    SILENT = "silent"        # no answer (down, or unreachable)
    UNASKED = "unasked"      # the parameters are unusable: libpq did not try


def ping_conninfo(target: DbTarget, *, timeout: float) -> str:
    """The connection string :func:`ping_server` uses: where ``target`` points, with its TLS settings, and no
    password (a ping ends when the server asks for one)."""
    if target.url is not None:
        params = {k: v for k, v in target.params().items() if k not in ("password", "passfile", "sslpassword")}
    else:
        params = {"host": target.host, "port": str(target.port), "dbname": target.dbname, "user": target.user,
                  "sslmode": "verify-full"}
        if target.sslrootcert is not None:
            params["sslrootcert"] = str(target.sslrootcert)
    params["connect_timeout"] = str(max(2, int(timeout)))
    return make_conninfo("", **params)


def ping_server(conninfo: str) -> Reachable:
    """Whether the database server accepts connections now, as ``pg_isready`` asks: no session begins and no
    password is sent (so nothing is logged on the server), but a server that refuses connections (shutting
    down, starting up) is told apart from one that accepts them, which a pooled connection cannot tell.
    Blocks up to the string's ``connect_timeout``: call it in a thread."""
    answer = pq.Ping(pq.PGconn.ping(conninfo.encode()))
    return {pq.Ping.OK: Reachable.ACCEPTING, pq.Ping.REJECT: Reachable.REFUSING,
            pq.Ping.NO_RESPONSE: Reachable.SILENT}.get(answer, Reachable.UNASKED)


def make_engine(target: DbTarget | URL, *, pool_size: int = 10, pooled: bool = True, autocommit: bool = False,
                connect_timeout: float | None = None, application_name: str | None = None,
                options: str | None = None, connect_args: Mapping[str, Any] | None = None) -> AsyncEngine:
    """The one async engine factory (SQLAlchemy Core over psycopg 3, TLS verify-full as
    :meth:`DbTarget.sqlalchemy_url` says).  ``pooled=False``: every connection is a session of its
    own that closing really ends (advisory locks); ``options``: server settings for every session
    (``-c name=value``)."""
    args: dict[str, Any] = dict(connect_args or {})
    if connect_timeout is not None:
        args["connect_timeout"] = max(1, int(connect_timeout))
    if application_name is not None:
        args["application_name"] = application_name[:63]
    if options is not None:
        args["options"] = options
    url = target.sqlalchemy_url() if isinstance(target, DbTarget) else target
    extra: dict[str, Any] = {"connect_args": args} if args else {}
    if isinstance(target, DbTarget) and target.url is not None:
        # libpq reads the URL (every host of an HA engine, target_session_attrs); SQLAlchemy's URL cannot
        info = make_conninfo("", **{**target.params(), **{k: str(v) for k, v in args.items()}})
        extra = {"async_creator": lambda: psycopg.AsyncConnection.connect(info)}
    if autocommit:
        extra["isolation_level"] = "AUTOCOMMIT"
    if not pooled:
        return create_async_engine(url, poolclass=NullPool, **extra)
    # A fixed pool (no overflow connections opened and closed under load: each costs a TLS
    # handshake and a SCRAM exchange).  Pre-ping stays: after a database restart or failover a
    # stale connection is replaced instead of failing a request.
    return create_async_engine(
        url, pool_size=pool_size, max_overflow=0, pool_timeout=10,
        pool_pre_ping=True, pool_recycle=1800, **extra,
    )


async def ping(conn: AsyncConnection) -> None:
    """A round trip to the database (raises when it does not answer)."""
    await conn.execute(text("SELECT 1"))


async def database_time(conn: AsyncConnection) -> dt.datetime:
    """The database's clock (the start of the current transaction)."""
    value: dt.datetime = (await conn.execute(text("SELECT now()"))).scalar_one()
    return value


def _sync_engine(target: DbTarget) -> Any:
    """A plain engine for Alembic (an external database: connections from psycopg, as its URL says)."""
    if target.url is not None:
        info = make_conninfo("", **target.params())
        return create_engine(target.sqlalchemy_url(), creator=lambda: psycopg.connect(info))
    return create_engine(target.sqlalchemy_url(), poolclass=None)


def schema_is_current(target: DbTarget) -> bool:
    """Whether the database's schema is at the newest revision (read only: nothing is written)."""
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    heads = set(ScriptDirectory.from_config(cfg).get_heads())
    engine = _sync_engine(target)
    try:
        with engine.connect() as conn:
            return set(MigrationContext.configure(conn).get_current_heads()) == heads
    finally:
        engine.dispose()


def run_migrations(target: DbTarget, app_user: str | None = None) -> None:
    """Bring the schema to the newest revision; grant the app login what it needs."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    engine = _sync_engine(target)
    try:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
            if app_user and app_user != target.user:
                grant_app_privileges(conn, app_user)
    finally:
        engine.dispose()


def grant_app_privileges(conn, app_user: str) -> None:  # type: ignore[no-untyped-def]
    """The app login may read and write the vault, but only append to the audit log."""
    q = conn.dialect.identifier_preparer.quote(app_user)
    conn.execute(text(f"GRANT USAGE ON SCHEMA public TO {q}"))
    conn.execute(text(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {q}"))
    conn.execute(text(f"REVOKE UPDATE, DELETE, TRUNCATE ON audit_log FROM {q}"))
    conn.execute(text(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {q}"))
