"""User administration (administrators only, or the CLI on the server itself).

A change of a user is made in one transaction: (1) a change that may remove an active
administrator first takes the administrator-set lock, so the "not the last one" check cannot be
raced; (2) the user's row is locked; (3) the caller's ``If-Match`` is checked against its version;
(4) only the named fields are written.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from safehold.audit.chain import AuditEvent
from safehold.domain import USERNAME_RE, AuditAction, AuditResult, UserRole
from safehold.errors import Conflict, InvalidInput, NotFound
from safehold.runtime import Runtime
from safehold.services import access
from safehold.services.access import IfMatch
from safehold.services.auth import check_password_strength, hash_password, now
from safehold.services.views import UserView
from safehold.storage import users as user_store
from safehold.storage.rows import AnyRow, present


@dataclass(frozen=True)
class Actor:
    """Who performs an administrative action: a signed-in user or the local CLI."""

    name: str
    source_ip: str = ""


def _audit(actor: Actor, action: str, user_id: str, username: str, **detail: Any) -> AuditEvent:
    return AuditEvent(actor=actor.name, action=action, result=AuditResult.SUCCESS, source_ip=actor.source_ip,
                      target_type="user", target_id=user_id, target_name=username, detail=detail)


def validate_username(username: str) -> str:
    if not USERNAME_RE.fullmatch(username):
        raise InvalidInput(
            "username must be 1-64 characters: letters, digits and . _ @ - (starting with a letter or digit)",
            field="username",
        )
    return username


async def create_user(
    rt: Runtime, actor: Actor, *, username: str, password: str, role: UserRole,
    full_name: str = "", email: str = "",
) -> str:
    validate_username(username)
    check_password_strength(password)
    password_hash = await hash_password(password)
    user_id = str(uuid.uuid4())
    async with rt.write() as conn:
        if await user_store.by_username(conn, username) is not None:
            raise Conflict(f"a user named '{username}' already exists")
        await user_store.create(conn, id=user_id, username=username, full_name=full_name[:200],
                                email=email[:254], role=role.value, password_hash=password_hash)
        await rt.append_audit(conn, _audit(actor, AuditAction.USER_CREATED, user_id, username, role=role.value))
    return user_id


async def get_user(rt: Runtime, user_id: str) -> UserView:
    async with rt.read() as conn:
        user = await user_store.by_id(conn, user_id)
    if user is None:
        raise NotFound("user not found")
    return UserView.of(user)


async def find_user(rt: Runtime, username: str) -> UserView:
    async with rt.read() as conn:
        user = await user_store.by_username(conn, username)
    if user is None:
        raise NotFound(f"no user named '{username}'")
    return UserView.of(user)


async def list_users(rt: Runtime, *, limit: int = 100, offset: int = 0) -> tuple[list[AnyRow], int]:
    async with rt.read() as conn:
        return await user_store.listing(conn, limit=limit, offset=offset)


async def update_user(
    rt: Runtime, actor: Actor, user_id: str, *, role: UserRole | None = None, disabled: bool | None = None,
    full_name: str | None = None, email: str | None = None, if_match: IfMatch | None = None,
) -> UserView:
    """Change the named fields; returns the user as it is now (with its new version)."""
    async with rt.write() as conn:
        if role is not None or disabled:
            await user_store.lock_admin_set(conn)
        user = await user_store.by_id(conn, user_id, for_update=True)
        if user is None:
            raise NotFound("user not found")
        access.require_match(if_match, user.version, "user")
        values: dict[str, Any] = {}
        if role is not None:
            values["role"] = role.value
        if disabled is not None:
            values["disabled"] = disabled
        if full_name is not None:
            values["full_name"] = full_name[:200]
        if email is not None:
            values["email"] = email[:254]
        demoting = user.role == UserRole.ADMINISTRATOR and (
            (role is not None and role != UserRole.ADMINISTRATOR) or disabled
        )
        if demoting and await user_store.count_admins(conn) <= 1:
            raise Conflict("this is the last active administrator; add another one first")
        if not values:
            return UserView.of(user)
        await user_store.update_user(conn, user_id, **values)
        if disabled:
            await user_store.delete_user_sessions(conn, user_id)
        changed = {k: v for k, v in values.items() if k in ("role", "disabled")}
        await rt.append_audit(conn, _audit(actor, AuditAction.USER_UPDATED, user_id, user.username, **changed))
        view = UserView.of(present(await user_store.by_id(conn, user_id)))
    rt.forget_principals()  # a role or a disabled user counts at once here, within a moment everywhere
    return view


async def delete_user(rt: Runtime, actor: Actor, user_id: str, *, if_match: IfMatch | None = None) -> None:
    async with rt.write() as conn:
        await user_store.lock_admin_set(conn)
        user = await user_store.by_id(conn, user_id, for_update=True)
        if user is None:
            raise NotFound("user not found")
        access.require_match(if_match, user.version, "user")
        if user.role == UserRole.ADMINISTRATOR and await user_store.count_admins(conn) <= 1:
            raise Conflict("this is the last active administrator; it cannot be deleted")
        await user_store.delete_user(conn, user_id)
        await rt.append_audit(conn, _audit(actor, AuditAction.USER_DELETED, user_id, user.username))
    rt.forget_principals()


async def set_password(rt: Runtime, actor: Actor, user_id: str, password: str, *, own: bool = False) -> None:
    check_password_strength(password)
    password_hash = await hash_password(password)
    async with rt.write() as conn:
        user = await user_store.by_id(conn, user_id, for_update=True)
        if user is None:
            raise NotFound("user not found")

        await user_store.update_user(conn, user_id, password_hash=password_hash, password_changed_at=now(),
                                     failed_logins=0, locked_until=None)
        await user_store.delete_user_sessions(conn, user_id)
        action = AuditAction.OWN_PASSWORD_CHANGED if own else AuditAction.USER_UPDATED
        await rt.append_audit(conn, _audit(actor, action, user_id, user.username, password_reset=True))
    rt.forget_principals()  # its sessions are gone


async def unlock(rt: Runtime, actor: Actor, user_id: str) -> None:
    async with rt.write() as conn:
        user = await user_store.by_id(conn, user_id, for_update=True)
        if user is None:
            raise NotFound("user not found")
        await user_store.update_user(conn, user_id, failed_logins=0, locked_until=None)
        await rt.append_audit(conn, _audit(actor, AuditAction.USER_UNLOCKED, user_id, user.username))
