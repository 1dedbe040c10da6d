"""Database connections and migrations.

The web server and the CLI share one async code path (SQLAlchemy Core over
psycopg 3).  Migrations are Alembic revisions run with a synchronous
connection as the database owner.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import URL, create_engine, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from safehold.config import Settings
from safehold.errors import DatabaseError

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


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
        return f"DbTarget({self.user}@{self.host}:{self.port}/{self.dbname})"

    def sqlalchemy_url(self, *, driver: str = "postgresql+psycopg") -> URL:
        if self.url is not None:
            from sqlalchemy.engine import make_url

            return make_url(self.url).set(drivername=driver)
        query = {"sslmode": "verify-full", "application_name": "safehold"}
        if self.sslrootcert is not None:
            query["sslrootcert"] = str(self.sslrootcert)
        return URL.create(
            driver, username=self.user, password=self.password, host=self.host,
            port=self.port, database=self.dbname, query=query,
        )

    def libpq_env(self) -> dict[str, str]:
        """Environment for PostgreSQL client tools (pg_dump, psql): no password on a command line."""
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


def make_engine(target: DbTarget, *, pool_size: int = 10) -> AsyncEngine:
    # A fixed pool (no overflow connections opened and closed under load: each costs a TLS
    # handshake and a SCRAM exchange).  Pre-ping stays: after a database restart or failover a
    # stale connection is replaced instead of failing a request.
    return create_async_engine(
        target.sqlalchemy_url(), pool_size=pool_size, max_overflow=0, pool_timeout=10,
        pool_pre_ping=True, pool_recycle=1800,
    )


def schema_is_current(target: DbTarget) -> bool:
    """Whether the database's schema is at the newest revision (read only: nothing is written)."""
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    heads = set(ScriptDirectory.from_config(cfg).get_heads())
    engine = create_engine(target.sqlalchemy_url(), poolclass=None)
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
    engine = create_engine(target.sqlalchemy_url(), poolclass=None)
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
