"""Cluster-level administration of the bundled database (roles, databases), as its superuser."""

from __future__ import annotations

import re
import time

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql

from safehold.errors import DatabaseError, InvalidInput
from safehold.storage.db import DbTarget, connect
from safehold.storage.replication import SLOTS_SQL, Slot, slot_from_row

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def _connect(target: DbTarget, dbname: str = "postgres") -> psycopg.Connection:
    return connect(target, dbname)  # the one connect helper; cluster-level work goes to "postgres"


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


# --- streaming replication ----------------------------------------------------------------


def _check_name(kind: str, name: str) -> str:
    """Role and slot names are lower-case identifiers: never quoted, never case-folded."""
    if not isinstance(name, str) or not _IDENTIFIER.fullmatch(name):
        raise InvalidInput(f"{name!r} is not a valid {kind} name", field=kind.replace(" ", "_"),
                           hint="use 1 to 63 lower-case letters, digits and underscores, "
                                "starting with a letter or underscore")
    if name.startswith("pg_"):
        raise InvalidInput(f"{kind} names starting with 'pg_' are reserved by PostgreSQL",
                           field=kind.replace(" ", "_"))
    return name


def _replication_role(conn: psycopg.Connection, role: str) -> bool:
    """Whether `role` exists; refuses one that is not a plain replication role, so these
    functions never change the password of, or drop, the superuser or the app login."""
    row = conn.execute("SELECT rolsuper, rolreplication FROM pg_roles WHERE rolname = %s",
                       (role,)).fetchone()
    if row is None:
        return False
    if row[0] or not row[1]:
        raise DatabaseError(f"role {role} exists and is not a replication role; leaving it alone",
                            hint="choose another name for the replication role")
    return True


def create_replication_role(superuser: DbTarget, role: str, password: str) -> None:
    """Create the LOGIN REPLICATION role a standby connects as (idempotent); (re)sets its
    password, sent only as a SCRAM verifier."""
    _check_name("replication role", role)
    if not password:
        raise InvalidInput("the replication password must not be empty", field="password")
    with _connect(superuser) as conn:
        if not _replication_role(conn, role):
            try:
                conn.execute(sql.SQL("CREATE ROLE {} LOGIN REPLICATION NOSUPERUSER NOCREATEDB "
                                     "NOCREATEROLE NOINHERIT NOBYPASSRLS").format(sql.Identifier(role)))
            except pg_errors.DuplicateObject:  # created meanwhile by someone else
                _replication_role(conn, role)
        conn.execute(sql.SQL("ALTER ROLE {} LOGIN REPLICATION").format(sql.Identifier(role)))
        _set_password(conn, role, password)
        # what pg_rewind reads from its source, so an old primary can be rewound against this
        # cluster over its replica's own role (no superuser needed there)
        for fn in REWIND_FUNCTIONS:
            conn.execute(sql.SQL("GRANT EXECUTE ON FUNCTION {} TO {}").format(sql.SQL(fn), sql.Identifier(role)))


#: The functions pg_rewind calls on its source server (PostgreSQL documentation, pg_rewind "Notes").
REWIND_FUNCTIONS = (
    "pg_catalog.pg_ls_dir(text, boolean, boolean)",
    "pg_catalog.pg_stat_file(text, boolean)",
    "pg_catalog.pg_read_binary_file(text)",
    "pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean)",
)


def drop_replication_role(superuser: DbTarget, role: str) -> bool:
    """Drop the replication role, ending its sessions (WAL senders) first; False if it did
    not exist."""
    _check_name("replication role", role)
    with _connect(superuser) as conn:
        if not _replication_role(conn, role):
            return False
        conn.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(sql.Identifier(role)))
        conn.execute("SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
                     "WHERE usename = %s AND pid <> pg_backend_pid()", (role,))
        for fn in REWIND_FUNCTIONS:  # the grants create_replication_role gave it
            conn.execute(sql.SQL("REVOKE EXECUTE ON FUNCTION {} FROM {}").format(sql.SQL(fn), sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
        return True


def create_slot(superuser: DbTarget, slot: str) -> bool:
    """Create a physical replication slot reserving WAL from now on; False if it existed."""
    _check_name("replication slot", slot)
    with _connect(superuser) as conn:
        row = conn.execute("SELECT slot_type FROM pg_replication_slots WHERE slot_name = %s",
                           (slot,)).fetchone()
        if row is not None:
            if row[0] != "physical":
                raise DatabaseError(f"replication slot {slot} exists and is {row[0]}, not physical")
            return False
        try:
            conn.execute("SELECT pg_create_physical_replication_slot(%s, true)", (slot,))
        except pg_errors.DuplicateObject:
            return False
        except pg_errors.ConfigurationLimitExceeded as exc:
            raise DatabaseError(f"cannot create replication slot {slot}: every slot is in use",
                                hint="drop unused slots (see list_slots) or raise "
                                     "max_replication_slots") from exc
        return True


def drop_slot(superuser: DbTarget, slot: str, *, timeout: float = 30) -> bool:
    """Drop a replication slot, terminating the WAL sender using it first; False if it did
    not exist.

    A standby that still may connect takes the slot again after a few seconds:
    drop its role (or its pg_hba line) first, or it wins the race until `timeout`.
    """
    _check_name("replication slot", slot)
    deadline = time.monotonic() + timeout
    with _connect(superuser) as conn:
        while True:
            row = conn.execute("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s",
                               (slot,)).fetchone()
            if row is None:
                return False
            if row[0] is not None:
                conn.execute("SELECT pg_terminate_backend(%s, 5000)", (row[0],))
            try:
                conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
                return True
            except pg_errors.UndefinedObject:
                return False
            except pg_errors.ObjectInUse:
                if time.monotonic() > deadline:
                    raise DatabaseError(f"replication slot {slot} is still in use after "
                                        f"{timeout:g}s", hint="stop the standby using it, or drop "
                                        "its replication role first") from None
                time.sleep(0.1)


def list_slots(superuser: DbTarget) -> list[Slot]:
    """Every replication slot of the cluster, by name."""
    with _connect(superuser) as conn:
        return [slot_from_row(row) for row in conn.execute(SLOTS_SQL).fetchall()]


def grant_monitoring(superuser: DbTarget, role: str) -> None:
    """Let `role` (e.g. the app login) see replication positions and WAL receiver details
    (pg_monitor); without it storage.replication reads NULLs. Granted on the primary, it
    reaches the replicas with the rest of the catalog."""
    _check_name("role", role)
    with _connect(superuser) as conn:
        conn.execute(sql.SQL("GRANT pg_monitor TO {}").format(sql.Identifier(role)))


def wait_replication_allowed(host: str, port: int, role: str, password: str, sslrootcert: str,
                             timeout: float = 15) -> None:
    """Poll until the reloaded pg_hba.conf lets `role` open a replication connection (a reload is
    asynchronous: pg_ctl returns once the signal is sent)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(host=host, port=port, user=role, password=password, replication="true",
                                 dbname="replication", sslmode="verify-full", sslrootcert=sslrootcert,
                                 connect_timeout=5):
                return
        except psycopg.OperationalError as exc:
            said = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if "no pg_hba.conf entry" not in said or time.monotonic() > deadline:
                raise DatabaseError(f"the replication role {role} cannot connect to {host}:{port} ({said})") from None
        time.sleep(0.1)


# --- secondaries' logins ------------------------------------------------------------------


def create_login(superuser: DbTarget, role: str, password: str, *, like: str) -> None:
    """A new LOGIN role holding exactly the privileges of the app login ``like``: it is made a
    member of it (INHERIT), so whatever migrations grant to (or revoke from) the app login later
    applies to this login too; it gets no privilege of its own."""
    _check_name("role", role)
    with _connect(superuser) as conn:
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
            raise DatabaseError(f"the database role {role} exists already")
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN INHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE "
                             "NOREPLICATION NOBYPASSRLS").format(sql.Identifier(role)))
        try:
            _set_password(conn, role, password)
            conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(like), sql.Identifier(role)))
        except BaseException:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
            raise


def drop_login(superuser: DbTarget, role: str) -> None:
    """Drop a secondary's login, ending its sessions first."""
    _check_name("role", role)
    with _connect(superuser) as conn:
        conn.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(sql.Identifier(role)))
        conn.execute("SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
                     "WHERE usename = %s AND pid <> pg_backend_pid()", (role,))
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
