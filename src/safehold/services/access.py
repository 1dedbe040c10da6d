"""Who may do what, and whether a conditional write may proceed: pure decisions over plain data."""

from __future__ import annotations

from dataclasses import dataclass

from safehold.domain import Permission, Principal, UserRole
from safehold.errors import PermissionDenied, PreconditionFailed


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


# --- optimistic concurrency: a row's version as an HTTP entity tag ------------------------------

def etag(version: str) -> str:
    """The strong entity tag of a row version (``"<version>"``)."""
    return f'"{version}"'


@dataclass(frozen=True)
class IfMatch:
    """An ``If-Match`` precondition (RFC 9110 13.1.1): ``*`` (any current row) or a list of entity tags,
    compared strongly, so a weak tag (``W/"..."``) never matches.  A header that cannot be parsed
    matches nothing: a write is never made on a precondition that was not understood."""

    any: bool = False
    tags: tuple[str, ...] = ()

    @classmethod
    def parse(cls, header: str | None) -> IfMatch | None:
        """None when there is no header (no precondition: the last writer wins, field by field)."""
        if header is None:
            return None
        text = header.strip()
        if text == "*":
            return cls(any=True)
        tags: list[str] = []
        rest = text
        while rest:
            rest = rest.lstrip(" \t")
            if rest.startswith(","):  # empty list elements are allowed
                rest = rest[1:]
                continue
            weak = rest.startswith("W/")
            body = rest[2:] if weak else rest
            end = body.find('"', 1)
            if not body.startswith('"') or end < 0:
                return cls()  # malformed: matches nothing
            tag = body[1:end]
            if any(ord(ch) < 0x21 or ord(ch) == 0x7F for ch in tag):
                return cls()
            rest = body[end + 1:].lstrip(" \t")
            if rest and not rest.startswith(","):
                return cls()
            if not weak:
                tags.append(tag)
        return cls(tags=tuple(tags))

    def matches(self, version: str | None) -> bool:
        """Whether the row's current version (None: there is no such row) satisfies the precondition."""
        if version is None:
            return False
        return self.any or version in self.tags


def require_match(precondition: IfMatch | None, version: str | None, what: str) -> None:
    """Raise PreconditionFailed unless the row's current version satisfies ``If-Match``."""
    if precondition is None or precondition.matches(version):
        return
    if version is None:
        raise PreconditionFailed(f"the {what} does not exist, and If-Match requires a current one")
    raise PreconditionFailed(f"the {what} was changed since that version was read (If-Match does not "
                             f"match its ETag); read it again and retry")
