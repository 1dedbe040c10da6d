"""The database roles Safehold makes for other servers, as the bundled database's superuser sees them:
which exist, whose members they are, and what was granted to them (see storage.admin for creating and
dropping them)."""

from __future__ import annotations

from typing import NamedTuple

from psycopg import sql

from safehold.errors import DatabaseError
from safehold.storage.admin import _check_name
from safehold.storage.db import DbTarget, connect

_ROLES_SQL = """
SELECT r.rolname, r.rolreplication, r.rolsuper,
       EXISTS (SELECT 1 FROM pg_auth_members m JOIN pg_roles a ON a.oid = m.roleid
               WHERE m.member = r.oid AND a.rolname = %s)
FROM pg_roles r
WHERE r.rolname ~ '^(repl|app)_[0-9a-f]{12}$'
"""


class RoleInfo(NamedTuple):
    name: str
    replication: bool
    superuser: bool
    app_member: bool  # a member of the app login (what a secondary's login is)


def safehold_roles(superuser: DbTarget, app_login: str) -> list[RoleInfo]:
    """Every role named as Safehold names replication roles (``repl_…``) and secondaries' logins
    (``app_…``), with what tells whether Safehold made it."""
    with connect(superuser, "postgres") as conn:
        return [RoleInfo(str(r[0]), bool(r[1]), bool(r[2]), bool(r[3]))
                for r in conn.execute(_ROLES_SQL, (app_login,)).fetchall()]


def is_member(superuser: DbTarget, login: str, of: str) -> bool:
    """Whether the role ``login`` exists and is a member of ``of`` (a secondary's login of the app login)."""
    with connect(superuser, "postgres") as conn:
        row = conn.execute("SELECT pg_has_role(%s, %s, 'MEMBER') FROM pg_roles WHERE rolname = %s",
                           (login, of, login)).fetchone()
    return row is not None and bool(row[0])


def revoke_privileges(superuser: DbTarget, role: str) -> None:
    """Revoke whatever was granted to `role` in any database (e.g. EXECUTE on the functions pg_rewind
    reads, granted to every replication role), so DROP ROLE does not fail on it.  A role that owns
    objects is refused: DROP OWNED BY would drop them."""
    _check_name("role", role)
    with connect(superuser, "postgres") as conn:
        rows = conn.execute(
            "SELECT DISTINCT d.datname, s.deptype = 'o' FROM pg_shdepend s JOIN pg_roles r ON r.oid = s.refobjid "
            "LEFT JOIN pg_database d ON d.oid = s.dbid "
            "WHERE s.refclassid = 'pg_authid'::regclass AND r.rolname = %s", (role,)).fetchall()
    if any(owns for _, owns in rows):
        raise DatabaseError(f"the role {role} owns database objects; leaving it alone",
                            hint=f"reassign them (REASSIGN OWNED BY {role} TO ...) and run the teardown again")
    # privileges on shared objects (a database's CONNECT) are revoked from any database
    for dbname in sorted({str(r[0]) for r in rows if r[0] is not None} | ({"postgres"} if rows else set())):
        with connect(superuser, dbname) as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
