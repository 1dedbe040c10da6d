"""The bundled database of a server: its manager, and 'make sure it runs' for the CLI."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from safehold.config import Settings
from safehold.errors import DatabaseError, SafeholdError
from safehold.pg import ClusterSpec, PgManager, find_binaries
from safehold.storage import system_settings
from safehold.storage.db import DB_ERRORS, owner_target, run_migrations, schema_is_current


def manager(settings: Settings) -> PgManager:
    db = settings.database
    spec = ClusterSpec(
        data_dir=settings.pg_data_dir, port=db.port, listen=db.host,
        tls_cert=settings.path(settings.http.tls_cert), tls_key=settings.path(settings.http.tls_key),
        tls_ca=settings.path(settings.http.tls_ca), superuser=db.superuser,
    )
    return PgManager(spec, find_binaries(db.bin_dir))


def is_bundled(settings: Settings) -> bool:
    return settings.database.mode == "bundled"


@contextlib.contextmanager
def database_running(settings: Settings) -> Iterator[PgManager | None]:
    """Start the bundled database for the duration of a command if it is not running already."""
    if not is_bundled(settings):
        yield None
        return
    pg = manager(settings)
    pg.check_data_dir()
    started = pg.start()
    try:
        pg.wait_ready()
        yield pg
    finally:
        if started:
            pg.stop()


def owns_schema(settings: Settings) -> bool:
    """Whether this server migrates the schema: not a secondary (the primary does) and not a
    read-only server (its replica cannot be written)."""
    from safehold.domain import ServerRole

    return settings.database.mode != "remote" and settings.server.role != ServerRole.READONLY


def migrate(settings: Settings) -> bool:
    """Bring the schema up to date; False when it was left alone because fencing set the database
    read-only (a fenced server never writes it; it starts fenced)."""
    if not owns_schema(settings):
        return True
    if database_read_only(settings):
        if not schema_is_current(owner_target(settings)):
            raise DatabaseError(
                "this server's database was fenced (set read-only) and its schema is older than this version of "
                "Safehold, so it cannot start on it",
                hint="rejoin the server to the acting primary ('safehold ha rejoin'), or start it with the "
                     "Safehold version it ran before")
        return False
    run_migrations(owner_target(settings), app_user=settings.database.user if is_bundled(settings) else None)
    return True


def database_read_only(settings: Settings) -> bool:
    """Whether the bundled database was set read-only by fencing (False when it cannot be asked)."""
    if settings.database.mode != "bundled":
        return False
    try:
        read_only, in_recovery = system_settings.read_only_state(owner_target(settings))
    except (SafeholdError, *DB_ERRORS, OSError):
        return False
    return read_only and not in_recovery
