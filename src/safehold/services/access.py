"""Who may do what: pure decisions over plain data."""

from __future__ import annotations

from dataclasses import dataclass

from safehold.domain import Permission, UserRole
from safehold.errors import PermissionDenied


@dataclass(frozen=True)
class Principal:
    """The authenticated caller of a request."""

    user_id: str
    username: str
    role: UserRole
    token_id: str
    kind: str  # 'session' | 'api' | 'cli'
    source_ip: str = ""
    csrf_token: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == UserRole.ADMINISTRATOR


def resource_permission(
    p: Principal, owner_id: str | None, share: str | None
) -> Permission | None:
    """Administrators and owners may modify; others get what was shared with them."""
    if p.is_admin or (owner_id is not None and owner_id == p.user_id):
        return Permission.MODIFY
    if share is not None:
        return Permission(share)
    return None


def can_create_resources(p: Principal) -> bool:
    return p.role in (UserRole.ADMINISTRATOR, UserRole.PASSWORD_ADMINISTRATOR)


def can_manage_share(p: Principal, owner_id: str | None) -> bool:
    return p.is_admin or (owner_id is not None and owner_id == p.user_id)


def can_read_audit(p: Principal) -> bool:
    return p.role in (UserRole.ADMINISTRATOR, UserRole.AUDITOR)


def require(condition: bool, message: str = "you are not allowed to do this") -> None:
    if not condition:
        raise PermissionDenied(message)


def visible_scope(p: Principal) -> str | None:
    """None means 'every resource' (administrators); else the user whose view applies."""
    return None if p.is_admin else p.user_id
