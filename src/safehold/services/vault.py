"""Resources, accounts, password retrieval and change, history, sharing, import/export.

A change is made in one transaction under the row lock of what it changes: (1) read the row
``FOR UPDATE`` with the caller's permission on it; (2) check the caller's ``If-Match`` against the
row's version; (3) write only the fields the caller named.  Concurrent changes of different fields
therefore all land, and a conditional change of a row that changed meanwhile fails with nothing
written.  Every result is an immutable view (:mod:`safehold.services.views`) carrying the row's
``version`` (the API's ETag).
"""

from __future__ import annotations

import csv
import io
import uuid
from dataclasses import dataclass
from typing import Any

from safehold.audit.chain import AuditEvent
from safehold.crypto.barrier import Barrier, Secret
from safehold.domain import AuditAction, AuditResult, Permission
from safehold.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from safehold.ids import parse_id
from safehold.runtime import Runtime
from safehold.services import access
from safehold.services.access import IfMatch, Principal
from safehold.services.views import (
    AccountView,
    HistoryEntry,
    ResourceDetailView,
    ResourceListItem,
    ResourceView,
    RevealedPassword,
    ShareView,
)
from safehold.storage import users as user_store
from safehold.storage import vault as store
from safehold.storage.db import IntegrityError
from safehold.storage.rows import AnyRow, present

EXPORT_COLUMNS = ["resource", "type", "address", "description", "tags", "username", "password", "notes"]
MAX_SECRET = 4096
#: The bound of a whole vault's import or export (one transaction): long by nature, unlike a request's calls.
LONG_CALL = 3600.0


PASSWORD, NOTES, HISTORY = Secret.ACCOUNT_PASSWORD, Secret.ACCOUNT_NOTES, Secret.HISTORY_PASSWORD


def _barrier(rt: Runtime) -> Barrier:
    return Barrier(rt.keyring)


def _ev(p: Principal, action: str, target_type: str, target_id: str, target_name: str,
        result: str = AuditResult.SUCCESS, **detail: Any) -> AuditEvent:
    return AuditEvent(actor=p.username, action=action, result=result, source_ip=p.source_ip,
                      target_type=target_type, target_id=str(target_id), target_name=target_name[:500],
                      detail=detail)


@dataclass(frozen=True)
class ResourceInput:
    name: str
    type: str = "server"
    address: str = ""
    description: str = ""
    tags: tuple[str, ...] = ()

    def clean(self) -> ResourceInput:
        name = self.name.strip()
        if not name or len(name) > 200:
            raise InvalidInput("name must be 1-200 characters", field="name")
        tags = tuple(dict.fromkeys(t.strip() for t in self.tags if t.strip()))
        if any(len(t) > 64 for t in tags) or len(tags) > 50:
            raise InvalidInput("at most 50 tags of up to 64 characters", field="tags")
        if len(self.type) > 64 or len(self.address) > 500:
            raise InvalidInput("type (64) or address (500) is too long", field="address")
        return ResourceInput(name, self.type.strip() or "server", self.address.strip(), self.description, tags)


def _check_secret(value: str, field: str) -> None:
    if len(value) > MAX_SECRET:
        raise InvalidInput(f"{field} is too long (at most {MAX_SECRET} characters)", field=field)


# --- resources ----------------------------------------------------------------

async def create_resource(rt: Runtime, p: Principal, data: ResourceInput) -> ResourceView:
    access.require(access.can_create_resources(p), "only administrators and password administrators "
                                                   "can add resources")
    data = data.clean()
    rid = str(uuid.uuid4())
    try:
        async with rt.write() as conn:
            await store.create_resource(conn, id=rid, name=data.name, type=data.type, address=data.address,
                                        description=data.description, tags=list(data.tags), owner_id=p.user_id)
            await rt.append_audit(conn, _ev(p, AuditAction.RESOURCE_CREATED, "resource", rid, data.name))
            row = await store.resource(conn, rid)
    except IntegrityError:
        raise Conflict(f"a resource named '{data.name}' already exists") from None
    return ResourceView.with_permission(present(row), Permission.MODIFY)


async def _resource_for(rt: Runtime, conn: Any, p: Principal, resource_id: str,
                        need: Permission = Permission.VIEW, *, lock: bool = False) -> tuple[Any, Permission]:
    row = await store.resource(conn, parse_id(resource_id, "resource"), for_update=lock)
    if row is None:
        raise NotFound("resource not found")
    share = None if p.is_admin else await store.share_permission(conn, row.id, p.user_id)
    perm = access.resource_permission(p, row.owner_id, share)
    if perm is None:
        raise NotFound("resource not found")  # do not reveal that it exists
    if need == Permission.MODIFY and perm != Permission.MODIFY:
        raise PermissionDenied("you may view this resource but not change it")
    return row, perm


async def search_resources(rt: Runtime, p: Principal, *, query: str | None, tag: str | None,
                           limit: int, offset: int) -> tuple[list[ResourceListItem], int]:
    async with rt.read() as conn:
        rows, total = await store.search_resources(conn, visible_to=access.visible_scope(p), query=query,
                                                   tag=tag, limit=limit, offset=offset)
    return [ResourceListItem.of(r) for r in rows], total


async def get_resource(rt: Runtime, p: Principal, resource_id: str) -> ResourceDetailView:
    async with rt.read() as conn:
        row, perm = await _resource_for(rt, conn, p, resource_id)
        accounts = await store.accounts_of(conn, row.id)
    return ResourceDetailView.with_accounts(row, perm, accounts)


RESOURCE_FIELDS = ("name", "type", "address", "description", "tags")


async def update_resource(rt: Runtime, p: Principal, resource_id: str, changes: dict[str, Any], *,
                          if_match: IfMatch | None = None) -> ResourceView:
    """Change the named fields only, under the resource's row lock (see the module's steps)."""
    unknown = set(changes) - set(RESOURCE_FIELDS)
    if unknown:
        raise InvalidInput(f"unknown field(s): {', '.join(sorted(unknown))}", field=sorted(unknown)[0])
    try:
        async with rt.write() as conn:
            row, perm = await _resource_for(rt, conn, p, resource_id, Permission.MODIFY, lock=True)
            access.require_match(if_match, row.version, "resource")
            merged = ResourceInput(
                name=changes.get("name", row.name), type=changes.get("type", row.type),
                address=changes.get("address", row.address),
                description=changes.get("description", row.description),
                tags=tuple(changes.get("tags", row.tags)),
            ).clean()
            if changes:
                values = {k: list(merged.tags) if k == "tags" else getattr(merged, k) for k in changes}
                await store.update_resource(conn, row.id, **values)
                await rt.append_audit(conn, _ev(p, AuditAction.RESOURCE_UPDATED, "resource", row.id, merged.name,
                                                fields=sorted(changes)))
            new = await store.resource(conn, row.id)
    except IntegrityError:
        raise Conflict("another resource already has that name") from None
    return ResourceView.with_permission(present(new), perm)


async def delete_resource(rt: Runtime, p: Principal, resource_id: str, *, if_match: IfMatch | None = None) -> None:
    async with rt.write() as conn:
        row, _ = await _resource_for(rt, conn, p, resource_id, Permission.MODIFY, lock=True)
        access.require_match(if_match, row.version, "resource")
        access.require(access.can_manage_share(p, row.owner_id), "only the owner or an administrator can delete "
                                                                 "a resource")
        await store.delete_resource(conn, row.id)
        await rt.append_audit(conn, _ev(p, AuditAction.RESOURCE_DELETED, "resource", row.id, row.name))


# --- accounts -----------------------------------------------------------------

async def create_account(rt: Runtime, p: Principal, resource_id: str, username: str, password: str,
                         notes: str | None = None) -> AccountView:
    username = username.strip()
    if not username or len(username) > 200:
        raise InvalidInput("username must be 1-200 characters", field="username")
    if not password:
        raise InvalidInput("password must not be empty", field="password")
    _check_secret(password, "password")
    _check_secret(notes or "", "notes")
    aid = str(uuid.uuid4())
    try:
        async with rt.write() as conn:
            res, perm = await _resource_for(rt, conn, p, resource_id, Permission.MODIFY)
            await store.create_account(
                conn, id=aid, resource_id=res.id, username=username,
                password_enc=_barrier(rt).seal_str(PASSWORD, aid, password),
                notes_enc=_barrier(rt).seal_str(NOTES, aid, notes) if notes else None,
            )
            await rt.append_audit(conn, _ev(p, AuditAction.ACCOUNT_CREATED, "account", aid,
                                            f"{res.name}/{username}"))
            row = await store.account_by_username(conn, res.id, username)
    except IntegrityError:
        raise Conflict(f"the resource already has an account named '{username}'") from None
    return AccountView.with_resource(present(row), res.name, perm)


async def _account_for(rt: Runtime, conn: Any, p: Principal, account_id: str,
                       need: Permission = Permission.VIEW, *, lock: bool = False) -> tuple[Any, Permission]:
    row = await store.account_with_access(conn, parse_id(account_id, "account"), p.user_id, for_update=lock)
    if row is None:
        raise NotFound("account not found")
    perm = access.resource_permission(p, row.owner_id, row.share_permission)
    if perm is None:
        raise NotFound("account not found")
    if need == Permission.MODIFY and perm != Permission.MODIFY:
        raise PermissionDenied("you may view this account but not change it")
    return row, perm


def _account_public(row: AnyRow, perm: Permission) -> AccountView:
    """An account row read with its access (its ciphertexts stay behind)."""
    return AccountView.with_resource(row, row.resource_name, perm)


async def get_account(rt: Runtime, p: Principal, account_id: str) -> AccountView:
    async with rt.read() as conn:
        row, perm = await _account_for(rt, conn, p, account_id)
    return _account_public(row, perm)


def _retrieval(reason: str, via: str) -> dict[str, str]:
    """What a retrieval's audit record says of it: the caller's reason, and the interface it came through
    when not the REST API or the pages (``vault-api``: the Vault-compatible API)."""
    detail = {"reason": reason[:200]} if reason else {}
    return {**detail, "via": via} if via else detail


async def retrieve_password(rt: Runtime, p: Principal, account_id: str, *, reason: str = "",
                            via: str = "") -> RevealedPassword:
    """Decrypt and return a password — only after its retrieval is durably audited."""
    async with rt.read() as conn:
        row, _ = await _account_for(rt, conn, p, account_id)
    password = _barrier(rt).open_str(PASSWORD, row.id, bytes(row.password_enc))
    notes = _barrier(rt).open_str(NOTES, row.id, bytes(row.notes_enc)) if row.notes_enc else None
    await rt.record_audit(_ev(p, AuditAction.PASSWORD_RETRIEVED, "account", row.id,
                              f"{row.resource_name}/{row.username}", **_retrieval(reason, via)))
    rt.metrics.retrievals.labels("success").inc()
    return RevealedPassword(row.id, row.username, password, notes)


async def update_account(rt: Runtime, p: Principal, account_id: str, *, username: str | None = None,
                         password: str | None = None, notes: str | None = None,
                         if_match: IfMatch | None = None) -> AccountView:
    """Change the named fields of an account under its row lock; a password change keeps the old one
    (encrypted) in the history, retired at the moment the new one is set."""
    if password is not None:
        if not password:
            raise InvalidInput("password must not be empty", field="password")
        _check_secret(password, "password")
    if notes is not None:
        _check_secret(notes, "notes")
    try:
        async with rt.write() as conn:
            row, perm = await _account_for(rt, conn, p, account_id, Permission.MODIFY, lock=True)
            access.require_match(if_match, row.version, "account")
            values: dict[str, Any] = {}
            if username is not None:
                if not username.strip() or len(username) > 200:
                    raise InvalidInput("username must be 1-200 characters", field="username")
                values["username"] = username.strip()
            if notes is not None:
                values["notes_enc"] = _barrier(rt).seal_str(NOTES, row.id, notes) if notes else None
            fields = sorted(k.removesuffix("_enc") for k in values)
            changed = None
            if password is not None:
                changed = await _retire_and_set(rt, conn, p, row.id, bytes(row.password_enc), password, **values)
                fields = sorted([*fields, "password"])
            elif values:
                changed = await store.update_account(conn, row.id, **values)
            if fields:
                action = AuditAction.PASSWORD_CHANGED if password is not None else AuditAction.ACCOUNT_UPDATED
                await rt.append_audit(conn, _ev(p, action, "account", row.id,
                                                f"{row.resource_name}/{values.get('username', row.username)}",
                                                fields=fields))
    except IntegrityError:
        raise Conflict("the resource already has an account with that username") from None
    if changed is None:
        return _account_public(row, perm)
    return AccountView(row.id, row.resource_id, changed.username, row.created_at, changed.updated_at,
                       changed.password_changed_at, changed.version, row.resource_name, perm)


async def _retire_and_set(rt: Runtime, conn: Any, p: Principal, account_id: str, old_enc: bytes,
                          password: str, **values: Any) -> AnyRow:
    """Under the account's row lock: set the new password, then keep the old one in the history, retired
    at the new one's set time (taken now, after the lock wait; never before the old one's set time)."""
    changed = await store.change_password(conn, account_id, _barrier(rt).seal_str(PASSWORD, account_id, password),
                                          **values)
    hid = str(uuid.uuid4())
    old = _barrier(rt).open_str(PASSWORD, account_id, old_enc)
    await store.add_history(conn, id=hid, account_id=account_id, changed_by=p.username,
                            retired_at=changed.password_changed_at, password_enc=_barrier(rt).seal_str(HISTORY, hid, old))
    return changed


async def delete_account(rt: Runtime, p: Principal, account_id: str, *, if_match: IfMatch | None = None) -> None:
    async with rt.write() as conn:
        row, _ = await _account_for(rt, conn, p, account_id, Permission.MODIFY, lock=True)
        access.require_match(if_match, row.version, "account")
        await store.delete_account(conn, row.id)
        await rt.append_audit(conn, _ev(p, AuditAction.ACCOUNT_DELETED, "account", row.id,
                                        f"{row.resource_name}/{row.username}"))


async def password_history(rt: Runtime, p: Principal, account_id: str, *, reveal: bool = False,
                           only: str | None = None, reason: str = "", via: str = "") -> list[HistoryEntry]:
    """Earlier passwords of an account (modify permission needed), newest first; revealing them is audited.
    ``only``: just the entry with this id (none if the account has no such entry)."""
    async with rt.read() as conn:
        row, _ = await _account_for(rt, conn, p, account_id, Permission.MODIFY)
        items = [h for h in await store.history(conn, row.id) if only is None or h.id == only]
    out = [HistoryEntry(h.id, h.changed_by, h.retired_at,
                        _barrier(rt).open_str(HISTORY, h.id, bytes(h.password_enc)) if reveal else None)
           for h in items]
    if reveal and (out or only is None):  # revealing nothing of a named entry reveals nothing
        entry = {"entry": only} if only is not None else {}
        await rt.record_audit(_ev(p, AuditAction.PASSWORD_RETRIEVED, "account", row.id,
                                  f"{row.resource_name}/{row.username}", history=True, count=len(out),
                                  **entry, **_retrieval(reason, via)))
    return out


# --- sharing ------------------------------------------------------------------

async def list_shares(rt: Runtime, p: Principal, resource_id: str) -> list[ShareView]:
    async with rt.read() as conn:
        row, _ = await _resource_for(rt, conn, p, resource_id)
        return [ShareView.of(s) for s in await store.shares_of(conn, row.id)]


async def get_share(rt: Runtime, p: Principal, resource_id: str, user_id: str) -> ShareView:
    async with rt.read() as conn:
        row, _ = await _resource_for(rt, conn, p, resource_id)
        found = await store.share_of(conn, row.id, parse_id(user_id, "user"))
    if found is None:
        raise NotFound("the resource is not shared with that user")
    return ShareView.of(found)


async def share(rt: Runtime, p: Principal, resource_id: str, user_id: str, permission: Permission, *,
                if_match: IfMatch | None = None) -> str:
    """Share a resource with a user, or change the permission; returns the share's new version.
    With ``If-Match`` the share must exist and be unchanged (``*``: exist)."""
    async with rt.write() as conn:
        row, _ = await _resource_for(rt, conn, p, resource_id)
        access.require(access.can_manage_share(p, row.owner_id), "only the owner or an administrator can share")
        user = await user_store.by_id(conn, parse_id(user_id, "user"))
        if user is None:
            raise NotFound("user not found")
        if if_match is not None:
            current = await store.share_of(conn, row.id, user.id, for_update=True)
            access.require_match(if_match, current.version if current is not None else None, "share")
        version = await store.put_share(conn, row.id, user.id, permission.value)
        await rt.append_audit(conn, _ev(p, AuditAction.SHARED, "resource", row.id, row.name,
                                        user=user.username, permission=permission.value))
    return version


async def unshare(rt: Runtime, p: Principal, resource_id: str, user_id: str, *,
                  if_match: IfMatch | None = None) -> None:
    async with rt.write() as conn:
        row, _ = await _resource_for(rt, conn, p, resource_id)
        access.require(access.can_manage_share(p, row.owner_id), "only the owner or an administrator can unshare")
        uid = parse_id(user_id, "user")
        current = await store.share_of(conn, row.id, uid, for_update=True)
        if current is None:
            raise NotFound("the resource is not shared with that user")
        access.require_match(if_match, current.version, "share")
        await store.delete_share(conn, row.id, uid)
        await rt.append_audit(conn, _ev(p, AuditAction.UNSHARED, "resource", row.id, row.name, user_id=user_id))


# --- import / export ----------------------------------------------------------

async def export_csv(rt: Runtime, p: Principal) -> str:
    """Every visible account with its password, as CSV.  The caller re-authenticated first."""
    async with rt.read(limit=LONG_CALL) as conn:
        rows = await store.export_rows(conn, visible_to=access.visible_scope(p))
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(EXPORT_COLUMNS)
    for r in rows:
        w.writerow([
            r.resource_name, r.type, r.address, r.description, ";".join(r.tags), r.username,
            _barrier(rt).open_str(PASSWORD, r.account_id, bytes(r.password_enc)),
            _barrier(rt).open_str(NOTES, r.account_id, bytes(r.notes_enc)) if r.notes_enc else "",
        ])
    await rt.record_audit(_ev(p, AuditAction.EXPORTED, "vault", "", "csv export", accounts=len(rows)))
    return buf.getvalue()


@dataclass
class ImportReport:
    resources_created: int = 0
    accounts_created: int = 0
    accounts_updated: int = 0
    errors: list[str] | None = None


async def import_csv(rt: Runtime, p: Principal, text: str) -> ImportReport:
    """Import rows with the export's columns; all or nothing (the whole file in one transaction)."""
    access.require(access.can_create_resources(p), "only administrators and password administrators can import")
    reader = csv.DictReader(io.StringIO(text))
    missing = {"resource", "username", "password"} - set(reader.fieldnames or [])
    if missing:
        raise InvalidInput(f"the CSV lacks the column(s): {', '.join(sorted(missing))}", field="file")
    rows = list(reader)
    errors = []
    for n, r in enumerate(rows, start=2):
        if not (r.get("resource") or "").strip() or not (r.get("username") or "").strip() or not r.get("password"):
            errors.append(f"line {n}: resource, username and password are required")
    if errors:
        raise InvalidInput("; ".join(errors[:20]), field="file")
    report = ImportReport()
    async with rt.write(limit=LONG_CALL) as conn:
        cache: dict[str, str] = {}
        for r in rows:
            name = r["resource"].strip()
            rid = cache.get(name.lower())
            if rid is None:
                res = await store.resource_by_name(conn, name)
                if res is None:
                    data = ResourceInput(name, r.get("type") or "server", r.get("address") or "",
                                         r.get("description") or "",
                                         tuple((r.get("tags") or "").split(";"))).clean()
                    rid = str(uuid.uuid4())
                    await store.create_resource(conn, id=rid, name=data.name, type=data.type, address=data.address,
                                                description=data.description, tags=list(data.tags),
                                                owner_id=p.user_id)
                    report.resources_created += 1
                else:
                    share = None if p.is_admin else await store.share_permission(conn, res.id, p.user_id)
                    if access.resource_permission(p, res.owner_id, share) != Permission.MODIFY:
                        raise PermissionDenied(f"you may not change the existing resource '{name}'")
                    rid = res.id
                cache[name.lower()] = rid
            username, password, notes = r["username"].strip(), r["password"], r.get("notes") or None
            _check_secret(password, "password")
            existing = await store.account_by_username(conn, rid, username)
            if existing is None:
                aid = str(uuid.uuid4())
                await store.create_account(conn, id=aid, resource_id=rid, username=username,
                                           password_enc=_barrier(rt).seal_str(PASSWORD, aid, password),
                                           notes_enc=_barrier(rt).seal_str(NOTES, aid, notes) if notes else None)
                report.accounts_created += 1
            else:
                locked = present(await store.lock_account(conn, existing.id))
                old = _barrier(rt).open_str(PASSWORD, existing.id, bytes(locked.password_enc))
                if old != password:
                    await _retire_and_set(rt, conn, p, existing.id, bytes(locked.password_enc), password)
                    report.accounts_updated += 1
        await rt.append_audit(conn, _ev(p, AuditAction.IMPORTED, "vault", "", "csv import",
                                        resources_created=report.resources_created,
                                        accounts_created=report.accounts_created,
                                        accounts_updated=report.accounts_updated))
    return report
