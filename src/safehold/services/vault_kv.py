"""The vault seen as HashiCorp Vault's KV version 2 secrets engine (``web/api/vault_kv.py`` serves it):
which account a Vault path names, the versions its password history makes, a token's policies and
lifetime, the keys a listing shows — pure mapping, tested as tables — and the two reads that gather
what it maps.

1. **Paths.** A secret's path is ``<resource>/<account>``: the last segment names the account (its
   username), the segments before it the resource, so a resource named ``prod/db01`` is read at
   ``prod/db01/<account>``.  Each segment is percent-decoded once, as the clients quote them (a slash inside a
   name can be sent only by a client that writes it ``%2F`` itself, such as curl).
2. **Versions.** An account's versions are its passwords, oldest first: version 1 is its first password,
   the current one is numbered one more than the count of earlier passwords.  The history is never
   trimmed, so a number always names the same password.
3. **Access, in Vault's order.** A resource the caller may not see is "permission denied" whether or not
   it exists (a Vault path no policy grants); "not found" is said only inside a resource the caller sees
   (or, to an administrator, who sees every resource).  Older versions need the permission the REST API
   asks for the history: modify.
4. **Tokens.** A token's policies are named after its user's role; a child token (``auth/token/create``)
   is a personal API token of the same user that expires no later than its parent.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from safehold.domain import Permission, Principal, UserRole
from safehold.errors import InvalidInput, NotFound, PermissionDenied, SafeholdError
from safehold.runtime import Runtime
from safehold.services import access
from safehold.storage import vault as store

#: what a retrieval's audit record names as the interface it came through
VIA = "vault-api"
#: a child token's lifetime when it asks for none: Vault's default (768 h, 32 days)
DEFAULT_TTL = dt.timedelta(hours=768)
MAX_TTL = dt.timedelta(days=3650)
MAX_NAME = 200  # the longest resource name or username there is
DENIED = "permission denied: no resource of that name is shared with you"


# --- 1. paths -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SecretPath:
    resource: str
    account: str


def segments(raw: str) -> list[str]:
    """A path's segments, each percent-decoded; empty ones (``a//b``, a leading or trailing slash) dropped."""
    return [unquote(s, errors="replace") for s in raw.split("/") if s]


def secret_path(raw: str) -> SecretPath:
    """The account a secret's path names (as sent, percent-encoding and all).  A path that cannot name one
    is not found, as in Vault, where nothing could be stored there."""
    parts = segments(raw)
    resource, account = "/".join(parts[:-1]), parts[-1] if parts else ""
    if not resource or not account or len(resource) > MAX_NAME or len(account) > MAX_NAME:
        raise NotFound("no secret at that path", hint="a secret's path is <resource>/<account>, e.g. db01/root")
    return SecretPath(resource, account)


def list_prefix(raw: str) -> str:
    """The folder a listing asks for: ``""`` (the mount's top) or segments ending in ``/``."""
    parts = segments(raw)
    return "/".join(parts) + "/" if parts else ""


def list_keys(prefix: str, resource_names: Iterable[str], usernames: Iterable[str]) -> list[str]:
    """The keys one level below ``prefix``, as Vault lists them: folders end in ``/``.  A resource is a folder
    (the first segment of its name after the prefix); the accounts of the resource the prefix names are
    secrets.  Names compare without case, as resource names do.  (A client quotes a key when it reads it and
    Safehold unquotes it once, so a key is the name as it is.)"""
    keys: set[str] = set()
    low = prefix.lower()
    for name in resource_names:
        if name.lower().startswith(low) and len(name) > len(prefix):
            keys.add(name[len(prefix):].split("/", 1)[0] + "/")
    keys.update(usernames)
    keys.discard("/")
    return sorted(keys)


def truthy(value: str | None) -> bool:
    """A query flag as Vault reads one (Go's ``strconv.ParseBool``)."""
    return value is not None and value.strip() in ("1", "t", "T", "true", "TRUE", "True")


def in_mount(path: str, mount: str) -> bool:
    """Whether a path (``sys/internal/ui/mounts/<path>``) lies in the mount."""
    parts = segments(path)
    return bool(parts) and parts[0] == mount


# --- 2. versions ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Version:
    number: int
    created: dt.datetime
    entry_id: str | None = None  # its password-history entry; None: the current password


def versions(created_at: dt.datetime, password_changed_at: dt.datetime,
             retired: Iterable[tuple[str, dt.datetime]]) -> tuple[Version, ...]:
    """An account's versions, oldest first, from its history entries ``(id, retired_at)``: each password was
    set when the one before it was retired (the first when the account was made)."""
    out: list[Version] = []
    set_at = created_at
    for number, (entry_id, retired_at) in enumerate(sorted(retired, key=lambda e: (e[1], e[0])), start=1):
        out.append(Version(number, set_at, entry_id))
        set_at = retired_at
    out.append(Version(len(out) + 1, password_changed_at))
    return tuple(out)


def parse_version(text: str | None) -> int | None:
    """``?version=``: absent or 0 asks for the current password, as in Vault."""
    if text is None or not text.strip():
        return None
    try:
        number = int(text.strip())
    except ValueError:
        raise InvalidInput("version must be a whole number", field="version") from None
    if number < 0:
        raise InvalidInput("version must not be negative", field="version")
    return number or None


def pick_version(known: Sequence[Version], number: int | None) -> Version:
    if number is None:
        return known[-1]
    if number > len(known):
        raise NotFound(f"the secret has no version {number}; its current version is {len(known)}")
    return known[number - 1]


def access_failure(*, visible: bool, is_admin: bool, account: bool) -> SafeholdError | None:
    """Why a path names nothing the caller may read (step 3), or None.  ``visible``: the resource exists and
    the caller may see it."""
    if not visible:
        return NotFound("no resource of that name") if is_admin else PermissionDenied(DENIED)
    if not account:
        return NotFound("the resource has no account of that name")
    return None


def check_version_access(permission: Permission, *, current: bool) -> None:
    if not current and permission != Permission.MODIFY:
        raise PermissionDenied("permission denied: older versions (the password history) need modify "
                               "permission on the resource")


# --- what a secret is ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Located:
    """An account a path named, with what its Vault view shows (no secret)."""

    account_id: str
    resource_id: str
    resource: str
    username: str
    type: str
    address: str
    tags: tuple[str, ...]
    permission: Permission
    versions: tuple[Version, ...]


def rfc3339(t: dt.datetime) -> str:
    """A time as Vault writes one: UTC, microseconds, ``Z``."""
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def custom_metadata(loc: Located) -> dict[str, str]:
    """Vault's ``custom_metadata``: strings only (External Secrets reads each value as one)."""
    return {"resource_id": loc.resource_id, "account_id": loc.account_id, "type": loc.type,
            "address": loc.address, "tags": ",".join(loc.tags)}


def secret_data(loc: Located, password: str, notes: str | None) -> dict[str, str]:
    data = {"username": loc.username, "password": password, "resource": loc.resource, "address": loc.address,
            "type": loc.type}
    return {**data, "notes": notes} if notes else data


def version_metadata(loc: Located, v: Version) -> dict[str, Any]:
    return {"created_time": rfc3339(v.created), "custom_metadata": custom_metadata(loc), "deletion_time": "",
            "destroyed": False, "version": v.number}


def metadata_document(loc: Located) -> dict[str, Any]:
    """``GET <mount>/metadata/<path>``: every version, none deleted or destroyed (a password history keeps all)."""
    current = loc.versions[-1]
    return {"cas_required": False, "created_time": rfc3339(loc.versions[0].created),
            "current_version": current.number, "custom_metadata": custom_metadata(loc),
            "delete_version_after": "0s", "max_versions": 0, "oldest_version": 0,
            "updated_time": rfc3339(current.created),
            "versions": {str(v.number): {"created_time": rfc3339(v.created), "deletion_time": "", "destroyed": False}
                         for v in loc.versions}}


def mount_info(mount: str) -> dict[str, Any]:
    """The mount as ``sys/mounts`` and ``sys/internal/ui/mounts`` describe it: KV version 2."""
    return {"accessor": f"kv_{mount}", "config": {"default_lease_ttl": 0, "force_no_cache": False, "max_lease_ttl": 0},
            "description": "Safehold's passwords, read-only", "external_entropy_access": False, "local": False,
            "options": {"version": "2"}, "plugin_version": "", "running_plugin_version": "",
            "running_sha256": "", "seal_wrap": False, "type": "kv",
            "uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"safehold:vault-mount:{mount}"))}


# --- 4. tokens ------------------------------------------------------------------------------------

def policies_for(role: UserRole) -> list[str]:
    """A token's Vault policies: ``default`` and its user's role (``safehold-password-administrator``)."""
    return ["default", "safehold-" + role.value.replace("_", "-")]


def ttl_left(now: dt.datetime, expires_at: dt.datetime | None) -> int:
    """Whole seconds a token has left; 0 for one that never expires (as Vault says of a root token)."""
    return 0 if expires_at is None else max(0, int((expires_at - now).total_seconds()))


def token_info(*, token: str, token_id: str, name: str, created_at: dt.datetime, expires_at: dt.datetime | None,
               username: str, role: UserRole, now: dt.datetime) -> dict[str, Any]:
    """``auth/token/lookup-self``'s data: ``id`` is the token itself (its caller's own, as in Vault); the
    accessor is the token's Safehold id."""
    return {"accessor": token_id, "creation_time": int(created_at.timestamp()),
            "creation_ttl": ttl_left(created_at, expires_at), "display_name": f"token-{name}", "entity_id": "",
            "expire_time": rfc3339(expires_at) if expires_at is not None else None, "explicit_max_ttl": 0,
            "id": token, "issue_time": rfc3339(created_at),
            "meta": {"username": username, "role": role.value, "token_name": name}, "num_uses": 0,
            "orphan": True, "path": "auth/token/create", "policies": policies_for(role), "renewable": False,
            "ttl": ttl_left(now, expires_at), "type": "service"}


_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h|d)")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_ttl(value: object, field: str) -> dt.timedelta | None:
    """A Vault duration: seconds as a number, or Go's ``1h30m``/``1200s`` (and ``d`` for days); 0 or absent:
    none asked for."""
    seconds: float
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InvalidInput(f"{field} must be a duration such as 1200s or 1h", field=field)
    if isinstance(value, str):
        text, pos, seconds = value.strip(), 0, 0.0
        if text.isdigit():
            seconds = float(text)
        else:
            for part in _PART.finditer(text):
                if part.start() != pos:
                    break
                seconds, pos = seconds + float(part[1]) * _UNIT[part[2]], part.end()
            if pos == 0 or pos != len(text):
                raise InvalidInput(f"{field} must be a duration such as 1200s or 1h", field=field)
    else:
        seconds = float(value)
    if not 0 <= seconds <= MAX_TTL.total_seconds():
        raise InvalidInput(f"{field} must be between 0 and {MAX_TTL.days} days", field=field)
    return dt.timedelta(seconds=max(1, int(seconds))) if seconds > 0 else None  # never longer than asked


@dataclass(frozen=True)
class ChildToken:
    display_name: str
    ttl: dt.timedelta | None


def child_token_request(body: Mapping[str, Any], parent_policies: Sequence[str]) -> ChildToken:
    """What ``auth/token/create`` may give: a token like its parent (same user, policies no wider), for a
    while.  What Safehold's tokens cannot be (batch, periodic, limited in uses, of a chosen value) is refused."""
    policies = body.get("policies") or []
    if isinstance(policies, str):
        policies = [p.strip() for p in policies.split(",") if p.strip()]
    if not isinstance(policies, list) or not all(isinstance(p, str) for p in policies):
        raise InvalidInput("policies must be a list of names", field="policies")
    if set(policies) - set(parent_policies):
        raise InvalidInput("child policies must be a subset of the parent's", field="policies")
    refused = {"id": "a token's value is always chosen by Safehold",
               "period": "periodic tokens are not supported", "entity_alias": "entity aliases are not supported",
               "num_uses": "tokens limited in uses are not supported"}
    for key, why in refused.items():
        if body.get(key) not in (None, "", 0, "0", "0s"):
            raise InvalidInput(why, field=key)
    if body.get("type") not in (None, "", "service", "default", "default-service"):
        raise InvalidInput("only service tokens are supported", field="type")
    asked = [t for t in (parse_ttl(body.get(k), k) for k in ("ttl", "explicit_max_ttl", "lease")) if t is not None]
    name = body.get("display_name")
    name = name.strip() if isinstance(name, str) and name.strip() else "token"
    return ChildToken("".join(ch for ch in name if ch.isprintable())[:50] or "token", min(asked, default=None))


def child_expiry(now: dt.datetime, asked: dt.timedelta | None, parent_expires: dt.datetime | None) -> dt.datetime:
    """When a child token expires: after the lifetime asked (Vault's default if none), never after its parent."""
    expiry = now + (asked or DEFAULT_TTL)
    return expiry if parent_expires is None else min(expiry, parent_expires)


def child_name(display_name: str, parent_name: str) -> str:
    """A child token's name on the tokens page (at most 100 characters)."""
    return f"{display_name} (Vault child of {parent_name})"[:100]


# --- the reads ------------------------------------------------------------------------------------

async def locate(rt: Runtime, p: Principal, path: SecretPath) -> Located:
    """The account a path names, if the caller may see it (step 3); no secret is read."""
    async with rt.read() as conn:
        res = await store.resource_by_name(conn, path.resource)
        share = None if res is None or p.is_admin else await store.share_permission(conn, res.id, p.user_id)
        permission = None if res is None else access.resource_permission(p, res.owner_id, share)
        account = None if res is None or permission is None else await store.account_by_username(
            conn, res.id, path.account)
        retired = [] if account is None else [(h.id, h.retired_at) for h in await store.history(conn, account.id)]
    failure = access_failure(visible=permission is not None, is_admin=p.is_admin, account=account is not None)
    if failure is not None:
        raise failure
    assert res is not None and account is not None and permission is not None
    return Located(account.id, res.id, res.name, account.username, res.type, res.address, tuple(res.tags), permission,
                   versions(account.created_at, account.password_changed_at, retired))


async def secret_keys(rt: Runtime, p: Principal, prefix: str) -> list[str]:
    """What a listing of ``prefix`` shows the caller: the resources it sees, and the accounts of the resource
    the prefix names."""
    names: list[str] = []
    usernames: list[str] = []
    query = prefix.rstrip("/") or None
    if query is not None and len(query) > MAX_NAME:
        return []
    async with rt.read() as conn:
        while True:  # the resources whose name holds the prefix (a superset: list_keys keeps those it begins)
            rows, total = await store.search_resources(conn, visible_to=access.visible_scope(p), query=query,
                                                       tag=None, limit=500, offset=len(names))
            names += [r.name for r in rows]
            if not rows or len(names) >= total:
                break
        exact = await store.resource_by_name(conn, query) if query is not None else None
        if exact is not None:
            share = None if p.is_admin else await store.share_permission(conn, exact.id, p.user_id)
            if access.resource_permission(p, exact.owner_id, share) is not None:
                usernames = [a.username for a in await store.accounts_of(conn, exact.id)]
    return list_keys(prefix, names, usernames)
