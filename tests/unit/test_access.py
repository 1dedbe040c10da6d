"""Who may do what: tables of (role, ownership, share) -> decision."""

from __future__ import annotations

import pytest

from safehold.domain import Permission, UserRole
from safehold.errors import PermissionDenied
from safehold.services.access import (
    Principal,
    can_create_resources,
    can_manage_share,
    can_read_audit,
    require,
    resource_permission,
    visible_scope,
)

ME = "u-me"
SOMEONE_ELSE = "u-other"

ADMIN = UserRole.ADMINISTRATOR
PWADMIN = UserRole.PASSWORD_ADMINISTRATOR
AUDITOR = UserRole.AUDITOR
USER = UserRole.USER
VIEW, MODIFY = Permission.VIEW, Permission.MODIFY


def principal(role: UserRole, user_id: str = ME) -> Principal:
    return Principal(user_id=user_id, username=f"{role}-{user_id}", role=role, token_id="t1", kind="session")


# (role, owner of the resource, share granted to the caller) -> permission
RESOURCE_PERMISSION = [
    # administrators may modify everything, shared or not, owned or not
    (ADMIN, SOMEONE_ELSE, None, MODIFY),
    (ADMIN, SOMEONE_ELSE, "view", MODIFY),
    (ADMIN, None, None, MODIFY),
    (ADMIN, ME, None, MODIFY),
    # owners may modify their own, whatever their role and share
    *[(role, ME, share, MODIFY) for role in (PWADMIN, AUDITOR, USER) for share in (None, "view", "modify")],
    # everyone else gets exactly what was shared with them
    *[(role, SOMEONE_ELSE, "view", VIEW) for role in (PWADMIN, AUDITOR, USER)],
    *[(role, SOMEONE_ELSE, "modify", MODIFY) for role in (PWADMIN, AUDITOR, USER)],
    *[(role, None, "view", VIEW) for role in (PWADMIN, AUDITOR, USER)],
    # ... and nothing otherwise
    *[(role, SOMEONE_ELSE, None, None) for role in (PWADMIN, AUDITOR, USER)],
    *[(role, None, None, None) for role in (PWADMIN, AUDITOR, USER)],
]


@pytest.mark.parametrize(("role", "owner", "share", "expected"), RESOURCE_PERMISSION)
def test_resource_permission(role: UserRole, owner: str | None, share: str | None,
                             expected: Permission | None) -> None:
    assert resource_permission(principal(role), owner, share) == expected


def test_resource_permission_returns_the_enum() -> None:
    perm = resource_permission(principal(USER), SOMEONE_ELSE, "view")
    assert perm is Permission.VIEW


def test_unknown_share_value_is_rejected_not_granted() -> None:
    with pytest.raises(ValueError):
        resource_permission(principal(USER), SOMEONE_ELSE, "admin")


def test_an_empty_user_id_does_not_own_an_unowned_resource() -> None:
    assert resource_permission(principal(USER, user_id=""), None, None) is None


ROLE_TABLE = [
    # role,   create resources, read audit, is admin, sees everything
    (ADMIN,   True,  True,  True,  True),
    (PWADMIN, True,  False, False, False),
    (AUDITOR, False, True,  False, False),
    (USER,    False, False, False, False),
]


def test_role_table_covers_every_role() -> None:
    assert {row[0] for row in ROLE_TABLE} == set(UserRole)


@pytest.mark.parametrize(("role", "create", "audit", "admin", "sees_all"), ROLE_TABLE)
def test_can_functions_per_role(role: UserRole, create: bool, audit: bool, admin: bool, sees_all: bool) -> None:
    p = principal(role)
    assert can_create_resources(p) is create
    assert can_read_audit(p) is audit
    assert p.is_admin is admin
    assert visible_scope(p) == (None if sees_all else ME)


@pytest.mark.parametrize(
    ("role", "owner", "expected"),
    [
        (ADMIN, SOMEONE_ELSE, True),
        (ADMIN, None, True),
        (ADMIN, ME, True),
        *[(role, ME, True) for role in (PWADMIN, AUDITOR, USER)],
        *[(role, SOMEONE_ELSE, False) for role in (PWADMIN, AUDITOR, USER)],
        *[(role, None, False) for role in (PWADMIN, AUDITOR, USER)],
    ],
)
def test_can_manage_share(role: UserRole, owner: str | None, expected: bool) -> None:
    assert can_manage_share(principal(role), owner) is expected


def test_a_modify_share_does_not_allow_managing_shares() -> None:
    p = principal(USER)
    assert resource_permission(p, SOMEONE_ELSE, "modify") == MODIFY
    assert can_manage_share(p, SOMEONE_ELSE) is False


def test_require_passes_or_raises_permission_denied() -> None:
    require(True)
    with pytest.raises(PermissionDenied) as exc:
        require(False)
    assert str(exc.value) == "you are not allowed to do this"
    assert exc.value.code == "forbidden"
    with pytest.raises(PermissionDenied, match="only auditors"):
        require(False, "only auditors may")


def test_role_values_are_stable() -> None:
    """Stored in the database and shown in the API: these strings never change."""
    assert [r.value for r in UserRole] == ["administrator", "password_administrator", "auditor", "user"]
    assert [p.value for p in Permission] == ["view", "modify"]
