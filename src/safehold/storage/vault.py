"""Resources, accounts, password history and shares.

Every change of a row is made under its row lock (``SELECT ... FOR UPDATE`` first, or a single
UPDATE) and writes only the columns it names, so concurrent changes of different fields all land.
Each read returns the row's ``version`` (:func:`~safehold.storage.rows.row_version`), the base of
the API's ETag.
Times that order changes are taken with ``clock_timestamp()`` once the row lock is held, not with
``now()`` (the start of the transaction, before any lock wait).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    bindparam,
    delete,
    exists,
    func,
    insert,
    literal,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from safehold.storage.rows import AnyRow, changed_at, row_version
from safehold.storage.schema import accounts, password_history, resources, shares, users

RESOURCE_COLUMNS = [
    resources.c.id, resources.c.name, resources.c.type, resources.c.address, resources.c.description,
    resources.c.tags, resources.c.owner_id, resources.c.created_at, resources.c.updated_at,
    row_version(resources),
]
ACCOUNT_COLUMNS = [
    accounts.c.id, accounts.c.resource_id, accounts.c.username, accounts.c.created_at,
    accounts.c.updated_at, accounts.c.password_changed_at, row_version(accounts),
]


def _visible_to(user_id: str | None) -> ColumnElement[bool]:
    """All resources when ``user_id`` is None (administrators), else owned or shared ones."""
    if user_id is None:
        return literal(True)
    shared = exists().where(shares.c.resource_id == resources.c.id, shares.c.user_id == user_id)
    return or_(resources.c.owner_id == user_id, shared)


def _escape_like(term: str) -> str:
    return term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


async def search_resources(
    conn: AsyncConnection, *, visible_to: str | None, query: str | None, tag: str | None,
    limit: int, offset: int,
) -> tuple[list[AnyRow], int]:
    cond = _visible_to(visible_to)
    if query:
        like = f"%{_escape_like(query)}%"
        cond = and_(cond, or_(
            resources.c.name.ilike(like, escape="\\"), resources.c.address.ilike(like, escape="\\"),
            resources.c.description.ilike(like, escape="\\"),
            func.array_to_string(resources.c.tags, " ").ilike(like, escape="\\"),
        ))
    if tag:
        cond = and_(cond, resources.c.tags.any(tag))
    total = (await conn.execute(select(func.count()).select_from(resources).where(cond))).scalar_one()
    rows = await conn.execute(
        select(*RESOURCE_COLUMNS).where(cond).order_by(func.lower(resources.c.name)).limit(limit).offset(offset)
    )
    return list(rows), int(total)


async def resource(conn: AsyncConnection, resource_id: str, *, for_update: bool = False) -> AnyRow | None:
    q = select(*RESOURCE_COLUMNS).where(resources.c.id == resource_id)
    if for_update:
        q = q.with_for_update()
    return (await conn.execute(q)).first()


async def resource_by_name(conn: AsyncConnection, name: str) -> AnyRow | None:
    q = select(*RESOURCE_COLUMNS).where(func.lower(resources.c.name) == func.lower(name))
    return (await conn.execute(q)).first()


async def share_permission(conn: AsyncConnection, resource_id: str, user_id: str) -> str | None:
    q = select(shares.c.permission).where(shares.c.resource_id == resource_id, shares.c.user_id == user_id)
    return (await conn.execute(q)).scalar_one_or_none()


async def create_resource(conn: AsyncConnection, **values: Any) -> None:
    await conn.execute(insert(resources).values(**values))


async def update_resource(conn: AsyncConnection, resource_id: str, **values: Any) -> None:
    """Write only the named columns (the caller holds the row lock)."""
    await conn.execute(
        update(resources).where(resources.c.id == resource_id).values(updated_at=changed_at(), **values)
    )


async def delete_resource(conn: AsyncConnection, resource_id: str) -> None:
    await conn.execute(delete(resources).where(resources.c.id == resource_id))


async def accounts_of(conn: AsyncConnection, resource_id: str) -> list[AnyRow]:
    q = select(*ACCOUNT_COLUMNS).where(accounts.c.resource_id == resource_id).order_by(accounts.c.username)
    return list(await conn.execute(q))


def _account_with_access() -> Select[Any]:
    return (
        select(
            *ACCOUNT_COLUMNS, accounts.c.password_enc, accounts.c.notes_enc,
            resources.c.name.label("resource_name"), resources.c.owner_id,
            shares.c.permission.label("share_permission"),
        )
        .join(resources, resources.c.id == accounts.c.resource_id)
        .outerjoin(shares, and_(shares.c.resource_id == resources.c.id, shares.c.user_id == bindparam("user_id")))
        .where(accounts.c.id == bindparam("account_id"))
    )


#: Built once (the hot path of every retrieval): only the account and the user change from call to call.
_ACCOUNT_WITH_ACCESS = _account_with_access()
_ACCOUNT_WITH_ACCESS_LOCKED = _account_with_access().with_for_update(of=accounts)


async def account_with_access(conn: AsyncConnection, account_id: str, user_id: str, *,
                              for_update: bool = False) -> AnyRow | None:
    """An account, its ciphertexts, its resource and the user's share on it: one round trip
    (``for_update``: with the account's row lock, held until the transaction ends)."""
    q = _ACCOUNT_WITH_ACCESS_LOCKED if for_update else _ACCOUNT_WITH_ACCESS
    return (await conn.execute(q, {"account_id": account_id, "user_id": user_id})).first()


async def lock_account(conn: AsyncConnection, account_id: str) -> AnyRow | None:
    q = (
        select(accounts.c.id, accounts.c.password_enc, row_version(accounts))
        .where(accounts.c.id == account_id)
        .with_for_update()
    )
    return (await conn.execute(q)).first()


async def create_account(conn: AsyncConnection, **values: Any) -> None:
    await conn.execute(insert(accounts).values(**values))


#: What a change of an account changes, as its UPDATE returns it (no second read of the row).
CHANGED_COLUMNS = [accounts.c.username, accounts.c.updated_at, accounts.c.password_changed_at, row_version(accounts)]


async def update_account(conn: AsyncConnection, account_id: str, **values: Any) -> AnyRow:
    """Write only the named columns (the caller holds the row lock); returns the :data:`CHANGED_COLUMNS`."""
    q = update(accounts).where(accounts.c.id == account_id).values(updated_at=changed_at(), **values)
    return (await conn.execute(q.returning(*CHANGED_COLUMNS))).one()


def _set_password(**values: Any) -> Any:
    after_previous = accounts.c.password_changed_at + literal_column("interval '1 microsecond'")
    set_at = func.greatest(changed_at(), after_previous)
    return (
        update(accounts).where(accounts.c.id == bindparam("account_id"))
        .values(password_enc=bindparam("new_enc"), password_changed_at=set_at, updated_at=set_at, **values)
        .returning(*CHANGED_COLUMNS)
    )


_SET_PASSWORD = _set_password()  # the usual change (the password alone), built once
_ADD_HISTORY = insert(password_history)


async def change_password(conn: AsyncConnection, account_id: str, password_enc: bytes,
                          **values: Any) -> AnyRow:
    """Set a new password (the caller holds the row lock) and return the :data:`CHANGED_COLUMNS`; its set
    time (``password_changed_at``) is also the retirement time of the one it replaces: the clock now, yet
    never before the previous set time (it is strictly later, so an account's history has one order even if
    the clock steps back)."""
    q = _set_password(**values) if values else _SET_PASSWORD
    return (await conn.execute(q, {"account_id": account_id, "new_enc": password_enc})).one()


async def delete_account(conn: AsyncConnection, account_id: str) -> None:
    await conn.execute(delete(accounts).where(accounts.c.id == account_id))


async def account_by_username(conn: AsyncConnection, resource_id: str, username: str) -> AnyRow | None:
    q = select(*ACCOUNT_COLUMNS).where(accounts.c.resource_id == resource_id, accounts.c.username == username)
    return (await conn.execute(q)).first()


async def add_history(conn: AsyncConnection, **values: Any) -> None:
    await conn.execute(_ADD_HISTORY, values)


async def history(conn: AsyncConnection, account_id: str) -> list[AnyRow]:
    q = (
        select(password_history.c.id, password_history.c.changed_by, password_history.c.retired_at,
               password_history.c.password_enc)
        .where(password_history.c.account_id == account_id)
        .order_by(password_history.c.retired_at.desc(), password_history.c.id.desc())
    )
    return list(await conn.execute(q))


SHARE_COLUMNS = [shares.c.user_id, users.c.username, shares.c.permission, shares.c.created_at,
                 row_version(shares)]


async def shares_of(conn: AsyncConnection, resource_id: str) -> list[AnyRow]:
    q = (
        select(*SHARE_COLUMNS)
        .join(users, users.c.id == shares.c.user_id)
        .where(shares.c.resource_id == resource_id)
        .order_by(users.c.username)
    )
    return list(await conn.execute(q))


async def share_of(conn: AsyncConnection, resource_id: str, user_id: str, *,
                   for_update: bool = False) -> AnyRow | None:
    """One share with its user's name (``for_update``: with the share's row lock)."""
    q = (
        select(*SHARE_COLUMNS)
        .join(users, users.c.id == shares.c.user_id)
        .where(shares.c.resource_id == resource_id, shares.c.user_id == user_id)
    )
    if for_update:
        q = q.with_for_update(of=shares)
    return (await conn.execute(q)).first()


async def put_share(conn: AsyncConnection, resource_id: str, user_id: str, permission: str) -> str:
    """Create or change a share in one statement; returns the share's new version."""
    stmt = pg_insert(shares).values(resource_id=resource_id, user_id=user_id, permission=permission)
    stmt = stmt.on_conflict_do_update(index_elements=["resource_id", "user_id"], set_={"permission": permission})
    return str((await conn.execute(stmt.returning(row_version(shares)))).scalar_one())


async def delete_share(conn: AsyncConnection, resource_id: str, user_id: str) -> int:
    q = delete(shares).where(shares.c.resource_id == resource_id, shares.c.user_id == user_id)
    return (await conn.execute(q)).rowcount


SECRET_COLUMNS = (
    (accounts, accounts.c.password_enc), (accounts, accounts.c.notes_enc),
    (password_history, password_history.c.password_enc), (users, users.c.totp_secret_enc),
)


async def secret_batch(
    conn: AsyncConnection, table_name: str, column_name: str, after_id: str | None, limit: int
) -> list[tuple[str, bytes]]:
    """A batch of (row id, ciphertext) of one secret column, in id order after ``after_id``."""
    t = {"accounts": accounts, "password_history": password_history, "users": users}[table_name]
    column = t.c[column_name]
    q = select(t.c.id, column).where(column.is_not(None)).order_by(t.c.id).limit(limit).with_for_update()
    if after_id is not None:
        q = q.where(t.c.id > after_id)
    return [(r[0], bytes(r[1])) for r in await conn.execute(q)]


async def count_secrets(conn: AsyncConnection) -> int:
    total = 0
    for _, column in SECRET_COLUMNS:
        total += (await conn.execute(select(func.count()).where(column.is_not(None)))).scalar_one()
    return int(total)


async def replace_secret(conn: AsyncConnection, table: str, column: str, row_id: str, blob: bytes) -> None:
    t = {"accounts": accounts, "password_history": password_history, "users": users}[table]
    await conn.execute(update(t).where(t.c.id == row_id).values({column: blob}))


async def export_rows(conn: AsyncConnection, *, visible_to: str | None) -> list[AnyRow]:
    q = (
        select(
            resources.c.name.label("resource_name"), resources.c.type, resources.c.address,
            resources.c.description, resources.c.tags, accounts.c.id.label("account_id"),
            accounts.c.username, accounts.c.password_enc, accounts.c.notes_enc,
        )
        .join(accounts, accounts.c.resource_id == resources.c.id)
        .where(_visible_to(visible_to))
        .order_by(func.lower(resources.c.name), accounts.c.username)
    )
    return list(await conn.execute(q))
