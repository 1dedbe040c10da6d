"""Users and their credentials (sessions and API tokens).

Changes of a user are made under its row lock and write only the columns they name; each read of a
user returns its ``version`` (the API's ETag).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import bindparam, delete, func, insert, literal_column, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from safehold.storage.rows import AnyRow, changed_at, row_version
from safehold.storage.schema import auth_tokens, users

USER_COLUMNS = [
    users.c.id, users.c.username, users.c.full_name, users.c.email, users.c.role,
    users.c.totp_enabled, users.c.disabled, users.c.failed_logins, users.c.locked_until,
    users.c.created_at, users.c.updated_at, row_version(users),
]
#: The transaction-level advisory lock that serialises changes of the set of active administrators
#: (Safehold's namespace "SHLD", then "ADMS"), so two concurrent demotions cannot both pass the
#: "not the last administrator" check.
ADMIN_SET_LOCK = (0x53484C44, 0x41444D53)


async def by_username(conn: AsyncConnection, username: str, *, for_update: bool = False) -> AnyRow | None:
    q = select(users, row_version(users)).where(func.lower(users.c.username) == func.lower(username))
    if for_update:
        q = q.with_for_update()
    return (await conn.execute(q)).first()


async def by_id(conn: AsyncConnection, user_id: str, *, for_update: bool = False) -> AnyRow | None:
    q = select(users, row_version(users)).where(users.c.id == user_id)
    if for_update:
        q = q.with_for_update()
    return (await conn.execute(q)).first()


async def listing(conn: AsyncConnection, *, limit: int, offset: int) -> tuple[list[AnyRow], int]:
    total = (await conn.execute(select(func.count()).select_from(users))).scalar_one()
    rows = await conn.execute(select(*USER_COLUMNS).order_by(users.c.username).limit(limit).offset(offset))
    return list(rows), total


async def create(conn: AsyncConnection, **values: Any) -> None:
    await conn.execute(insert(users).values(**values))


async def update_user(conn: AsyncConnection, user_id: str, **values: Any) -> None:
    """Write only the named columns (the caller holds the row lock)."""
    await conn.execute(update(users).where(users.c.id == user_id).values(updated_at=changed_at(), **values))


async def delete_user(conn: AsyncConnection, user_id: str) -> None:
    await conn.execute(delete(users).where(users.c.id == user_id))


async def lock_admin_set(conn: AsyncConnection) -> None:
    """Wait for, then hold until the transaction ends, the right to change who is an active administrator."""
    await conn.execute(select(func.pg_advisory_xact_lock(*(literal_column(str(k)) for k in ADMIN_SET_LOCK))))


async def count_admins(conn: AsyncConnection) -> int:
    q = select(func.count()).select_from(users).where(users.c.role == "administrator", users.c.disabled.is_(False))
    return int((await conn.execute(q)).scalar_one())


# --- tokens -----------------------------------------------------------------

async def add_token(conn: AsyncConnection, **values: Any) -> None:
    await conn.execute(insert(auth_tokens).values(**values))


#: Built once (the hot path of every request): only the token's hash changes from call to call.
_PRINCIPAL_BY_TOKEN = (
    select(
        auth_tokens.c.id.label("token_id"), auth_tokens.c.kind, auth_tokens.c.expires_at,
        auth_tokens.c.created_at,
        auth_tokens.c.last_used_at, auth_tokens.c.csrf_token, auth_tokens.c.reauth_at,
        users.c.id.label("user_id"), users.c.username, users.c.role, users.c.disabled,
    )
    .join(users, users.c.id == auth_tokens.c.user_id)
    .where(auth_tokens.c.token_hash == bindparam("token_hash"))
)


async def principal_by_token(conn: AsyncConnection, token_hash: bytes) -> AnyRow | None:
    """The token and its user in one round trip (the hot path of every request)."""
    return (await conn.execute(_PRINCIPAL_BY_TOKEN, {"token_hash": token_hash})).first()


async def touch_token(conn: AsyncConnection, token_id: str, now: dt.datetime, expires_at: dt.datetime | None) -> None:
    values: dict[str, Any] = {"last_used_at": now}
    if expires_at is not None:
        values["expires_at"] = expires_at
    await conn.execute(update(auth_tokens).where(auth_tokens.c.id == token_id).values(**values))


async def set_reauth(conn: AsyncConnection, token_id: str, at: dt.datetime) -> None:
    await conn.execute(update(auth_tokens).where(auth_tokens.c.id == token_id).values(reauth_at=at))


async def delete_token(conn: AsyncConnection, token_id: str, *, user_id: str | None = None) -> int:
    q = delete(auth_tokens).where(auth_tokens.c.id == token_id)
    if user_id is not None:
        q = q.where(auth_tokens.c.user_id == user_id)
    return (await conn.execute(q)).rowcount


async def delete_user_sessions(conn: AsyncConnection, user_id: str) -> None:
    await conn.execute(
        delete(auth_tokens).where(auth_tokens.c.user_id == user_id, auth_tokens.c.kind == "session")
    )


async def api_tokens(conn: AsyncConnection, user_id: str) -> list[AnyRow]:
    q = (
        select(auth_tokens.c.id, auth_tokens.c.name, auth_tokens.c.created_at,
               auth_tokens.c.last_used_at, auth_tokens.c.expires_at)
        .where(auth_tokens.c.user_id == user_id, auth_tokens.c.kind == "api")
        .order_by(auth_tokens.c.created_at)
    )
    return list(await conn.execute(q))


async def purge_expired(conn: AsyncConnection, now: dt.datetime) -> int:
    q = delete(auth_tokens).where(auth_tokens.c.expires_at.is_not(None), auth_tokens.c.expires_at < now)
    return (await conn.execute(q)).rowcount
