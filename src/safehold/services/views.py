"""What the services answer: immutable views of resources, accounts, passwords, shares and users.

Each view is built from its storage row field by field (``of``), so a column added to a table, or a
secret selected with a row, never reaches a caller unless a view names it.  ``version`` is the row's
version: the API puts it in the ``ETag`` header, never in a body.  A password or notes in a view are
left out of its ``repr``, so a view that ends up in a log does not carry them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field, fields
from typing import Any

from safehold.domain import Permission, UserRole
from safehold.storage.rows import AnyRow


def _fields(view: Any) -> dict[str, Any]:
    """A view's fields by name: what a wider view of the same row starts from."""
    return {f.name: getattr(view, f.name) for f in fields(view)}


@dataclass(frozen=True, slots=True)
class ResourceListItem:
    """A resource as a search lists it (the caller's permission on it is not looked up)."""

    id: str
    name: str
    type: str
    address: str
    description: str
    tags: tuple[str, ...]
    owner_id: str | None
    created_at: dt.datetime
    updated_at: dt.datetime
    version: str

    @staticmethod
    def of(row: AnyRow) -> ResourceListItem:
        return ResourceListItem(row.id, row.name, row.type, row.address, row.description, tuple(row.tags),
                                row.owner_id, row.created_at, row.updated_at, row.version)


@dataclass(frozen=True, slots=True)
class ResourceView(ResourceListItem):
    """One resource with the caller's permission on it."""

    permission: Permission

    @staticmethod
    def with_permission(row: AnyRow, permission: Permission) -> ResourceView:
        return ResourceView(**_fields(ResourceListItem.of(row)), permission=permission)


@dataclass(frozen=True, slots=True)
class AccountSummaryView:
    """An account as its resource lists it (no secret)."""

    id: str
    resource_id: str
    username: str
    created_at: dt.datetime
    updated_at: dt.datetime
    password_changed_at: dt.datetime
    version: str

    @staticmethod
    def of(row: AnyRow) -> AccountSummaryView:
        return AccountSummaryView(row.id, row.resource_id, row.username, row.created_at, row.updated_at,
                                  row.password_changed_at, row.version)


@dataclass(frozen=True, slots=True)
class ResourceDetailView(ResourceView):
    """One resource, the caller's permission and its accounts (by username)."""

    accounts: tuple[AccountSummaryView, ...]

    @staticmethod
    def with_accounts(row: AnyRow, permission: Permission, accounts: list[AnyRow]) -> ResourceDetailView:
        return ResourceDetailView(**_fields(ResourceView.with_permission(row, permission)),
                                  accounts=tuple(AccountSummaryView.of(a) for a in accounts))


@dataclass(frozen=True, slots=True)
class AccountView(AccountSummaryView):
    """One account with its resource's name and the caller's permission on it (no secret)."""

    resource_name: str
    permission: Permission

    @staticmethod
    def with_resource(row: AnyRow, resource_name: str, permission: Permission) -> AccountView:
        return AccountView(**_fields(AccountSummaryView.of(row)), resource_name=resource_name,
                           permission=permission)


@dataclass(frozen=True, slots=True)
class RevealedPassword:
    """An account's password and notes, decrypted after the retrieval was audited."""

    account_id: str
    username: str
    password: str = field(repr=False)
    notes: str | None = field(repr=False)


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """An earlier password of an account: when it was retired, by whom; the password only when revealed."""

    id: str
    changed_by: str
    retired_at: dt.datetime
    password: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class ShareView:
    """A resource's share with one user."""

    user_id: str
    username: str
    permission: Permission
    created_at: dt.datetime
    version: str

    @staticmethod
    def of(row: AnyRow) -> ShareView:
        return ShareView(row.user_id, row.username, Permission(row.permission), row.created_at, row.version)


@dataclass(frozen=True, slots=True)
class UserView:
    """A user without their credentials: ``totp_pending`` says a TOTP secret awaits its first code."""

    id: str
    username: str
    full_name: str
    email: str
    role: UserRole
    totp_enabled: bool
    totp_pending: bool
    disabled: bool
    locked_until: dt.datetime | None
    created_at: dt.datetime
    updated_at: dt.datetime
    version: str

    @staticmethod
    def of(row: AnyRow) -> UserView:
        """From a whole row of ``users`` (with its version); the hashes and secrets stay behind."""
        return UserView(row.id, row.username, row.full_name, row.email, UserRole(row.role), row.totp_enabled,
                   row.totp_secret_enc is not None and not row.totp_enabled, row.disabled, row.locked_until,
                   row.created_at, row.updated_at, row.version)


@dataclass(frozen=True, slots=True)
class ServerNameView:
    """A server of the registry after a rename."""

    id: str
    name: str
