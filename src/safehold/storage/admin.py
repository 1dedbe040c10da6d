"""Cluster-level administration of the bundled database (roles, databases), as its superuser."""

from __future__ import annotations

import psycopg
from psycopg import sql

from safehold.errors import DatabaseError
from safehold.storage.db import DbTarget


def _connect(target: DbTarget, dbname: str = "postgres") -> psycopg.Connection:
    params = {"host": target.host, "port": target.port, "user": target.user, "password": target.password,
              "dbname": dbname, "sslmode": "verify-full", "connect_timeout": 10}
    if target.sslrootcert is not None:
        params["sslrootcert"] = str(target.sslrootcert)
    try:
        return psycopg.connect(**params, autocommit=True)  # type: ignore[arg-type]
    except psycopg.OperationalError as exc:
        raise DatabaseError(f"cannot connect to the database as {target.user} "
                            f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None


def _set_password(conn: psycopg.Connection, role: str, password: str) -> None:
    """Send only a SCRAM verifier, so the password never appears in a statement or a server log."""
    verifier = conn.pgconn.encrypt_password(password.encode(), role.encode(), b"scram-sha-256").decode()
    conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(role), sql.Literal(verifier)))


def create_app_database(superuser: DbTarget, dbname: str, app_user: str, app_password: str) -> None:
    """Create the app's login role and database (idempotent)."""
    with _connect(superuser) as conn:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (app_user,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE")
                         .format(sql.Identifier(app_user)))
        _set_password(conn, app_user, app_password)
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {} ENCODING 'UTF8' TEMPLATE template0")
                         .format(sql.Identifier(dbname)))
    with _connect(superuser, dbname) as conn:
        conn.execute(sql.SQL("REVOKE ALL ON SCHEMA public FROM PUBLIC"))
        conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(dbname),
                                                                          sql.Identifier(app_user)))


def recreate_database(superuser: DbTarget, dbname: str) -> None:
    """Drop (closing its sessions) and create an empty database, for a restore."""
    with _connect(superuser) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))
        conn.execute(sql.SQL("CREATE DATABASE {} ENCODING 'UTF8' TEMPLATE template0")
                     .format(sql.Identifier(dbname)))
