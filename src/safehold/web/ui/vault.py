"""The vault pages: resources, their accounts, revealing a password, history, sharing, the generator.

A password reaches a page only in the response to the POST that reveals it (audited first, by the same
service call as the API's ``GET /accounts/{id}/password``) and in the account form after the user asked
for a generated one; never in a URL, never in a page fetched with GET.
"""

from __future__ import annotations

from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from safehold.domain import Permission
from safehold.errors import InvalidInput, NotFound
from safehold.services import access, users, vault
from safehold.services.access import Principal
from safehold.services.passwords import PasswordPolicy, generate
from safehold.services.vault import ResourceInput
from safehold.services.views import AccountView, ResourceDetailView
from safehold.web.ui.core import (
    FORM_ERRORS,
    Fields,
    Form,
    UiUser,
    check_csrf,
    read_fields,
    render,
    runtime,
    see_other,
    submit,
)

router = APIRouter()
V = TypeVar("V", ResourceDetailView, AccountView)
PAGE = 50
POLICY_FLAGS = ("lowercase", "uppercase", "digits", "symbols", "exclude_ambiguous")


def _write_allowed(request: Request) -> bool:
    return not runtime(request).readonly


def _modify(item: V, what: str) -> V:
    """The resource or account, if the user may change it (the forms are not offered otherwise)."""
    access.require(item.permission == Permission.MODIFY, f"you may view this {what} but not change it")
    return item


# --- the list -----------------------------------------------------------------

@router.get("/vault", response_class=HTMLResponse)
async def vault_list(request: Request, p: UiUser, q: str = "", offset: str = "0") -> Response:
    q = q.strip()[:200].replace("\x00", "")
    start = max(0, min(int(offset), 10_000_000)) if offset.isascii() and offset.isdigit() and len(offset) < 9 else 0
    items, total = await vault.search_resources(runtime(request), p, query=q or None, tag=None, limit=PAGE,
                                                offset=start)
    return render(request, "vault_list.html", p, items=items, total=total, q=q, offset=start, page=PAGE,
                  can_create=access.can_create_resources(p))


# --- resources ----------------------------------------------------------------

def _resource_values(r: ResourceDetailView) -> dict[str, str]:
    return {"name": r.name, "type": r.type, "address": r.address, "description": r.description,
            "tags": ", ".join(r.tags)}


def _resource_input(fields: Fields) -> ResourceInput:
    name = fields.text("name", 200, required=True)
    rtype = fields.text("type", 64)
    address = fields.text("address", 500)
    description = fields.text("description", 5000, strip=False)
    tags_text = fields.text("tags", 50 * 65)
    tags = tuple(dict.fromkeys(t.strip() for t in tags_text.split(",") if t.strip()))
    if "tags" not in fields.errors and (len(tags) > 50 or any(len(t) > 64 for t in tags)):
        fields.errors["tags"] = "at most 50 tags of up to 64 characters each"
    return ResourceInput(name, rtype or "server", address, description, tags)


@router.get("/vault/resources/new", response_class=HTMLResponse)
async def resource_new(request: Request, p: UiUser) -> Response:
    access.require(access.can_create_resources(p), "only administrators and password administrators can add "
                                                   "resources")
    return render(request, "vault_resource_form.html", p, form=Form(values={"type": "server"}), resource=None)


@router.post("/vault/resources", response_class=HTMLResponse)
async def resource_create(request: Request, p: UiUser) -> Response:
    fields = await read_fields(request, p)
    data = _resource_input(fields)
    row = await submit(fields, lambda: vault.create_resource(runtime(request), p, data), "name")
    if isinstance(row, Form):
        return render(request, "vault_resource_form.html", p, form=row, resource=None, status=422)
    return see_other(f"/ui/vault/resources/{row.id}")


async def _resource_page(request: Request, p: Principal, resource_id: str, *, status: int = 200,
                         **extra: Any) -> Response:
    rt = runtime(request)
    res = await vault.get_resource(rt, p, resource_id)
    shares = await vault.list_shares(rt, p, resource_id)
    writable = _write_allowed(request)
    extra.setdefault("share_form", Form(values={"permission": Permission.VIEW.value}))
    return render(request, "vault_resource.html", p, status=status, resource=res, shares=shares,
                  can_modify=writable and res.permission == Permission.MODIFY,
                  can_manage=writable and access.can_manage_share(p, res.owner_id), **extra)


@router.get("/vault/resources/{resource_id}", response_class=HTMLResponse)
async def resource_page(request: Request, resource_id: str, p: UiUser) -> Response:
    return await _resource_page(request, p, resource_id)


@router.get("/vault/resources/{resource_id}/edit", response_class=HTMLResponse)
async def resource_edit(request: Request, resource_id: str, p: UiUser) -> Response:
    res = _modify(await vault.get_resource(runtime(request), p, resource_id), "resource")
    return render(request, "vault_resource_form.html", p, form=Form(values=_resource_values(res)), resource=res)


@router.post("/vault/resources/{resource_id}/edit", response_class=HTMLResponse)
async def resource_update(request: Request, resource_id: str, p: UiUser) -> Response:
    fields = await read_fields(request, p)
    rt = runtime(request)
    res = await vault.get_resource(rt, p, resource_id)
    data = _resource_input(fields)

    async def update() -> None:
        wanted = {"name": data.name, "type": data.type, "address": data.address, "description": data.description,
                  "tags": list(data.tags)}
        changes = {k: v for k, v in wanted.items() if v != (list(res.tags) if k == "tags" else getattr(res, k))}
        if changes:  # only what changed (the audit record names the fields)
            await vault.update_resource(rt, p, resource_id, changes)

    form = await submit(fields, update, "name")
    if isinstance(form, Form):
        return render(request, "vault_resource_form.html", p, form=form, resource=res, status=422)
    return see_other(f"/ui/vault/resources/{res.id}")


@router.post("/vault/resources/{resource_id}/delete")
async def resource_delete(request: Request, resource_id: str, p: UiUser) -> Response:
    check_csrf(p, await request.form())
    await vault.delete_resource(runtime(request), p, resource_id)
    return see_other("/ui/vault")


# --- sharing ------------------------------------------------------------------

@router.post("/vault/resources/{resource_id}/shares", response_class=HTMLResponse)
async def share_add(request: Request, resource_id: str, p: UiUser) -> Response:
    fields = await read_fields(request, p)
    rt = runtime(request)
    res = await vault.get_resource(rt, p, resource_id)
    access.require(access.can_manage_share(p, res.owner_id), "only the owner or an administrator can share")
    username = fields.text("username", 64, required=True)
    perm_text = fields.text("permission", 16)
    if perm_text not in (Permission.VIEW.value, Permission.MODIFY.value):
        fields.errors["permission"] = "choose view or modify"

    async def share() -> None:
        user = await users.find_user(rt, username)
        await vault.share(rt, p, res.id, user.id, Permission(perm_text))

    form = await submit(fields, share, "username", refusals=(NotFound, *FORM_ERRORS))
    if isinstance(form, Form):
        return await _resource_page(request, p, res.id, status=422, share_form=form)
    return see_other(f"/ui/vault/resources/{res.id}#sharing")


@router.post("/vault/resources/{resource_id}/shares/{user_id}/delete")
async def share_remove(request: Request, resource_id: str, user_id: str, p: UiUser) -> Response:
    check_csrf(p, await request.form())
    await vault.unshare(runtime(request), p, resource_id, user_id)
    return see_other(f"/ui/vault/resources/{resource_id}#sharing")


# --- accounts -----------------------------------------------------------------

def _policy(fields: Fields | None) -> dict[str, Any]:
    """The generator's settings as the form shows them (the defaults on a fresh form)."""
    default = PasswordPolicy()
    if fields is None or not fields.raw("policy"):
        return {"length": str(default.length), **{k: getattr(default, k) for k in POLICY_FLAGS}}
    return {"length": fields.raw("length").strip()[:6], **{k: fields.flag(k) for k in POLICY_FLAGS}}


def _generate(fields: Fields, policy: dict[str, Any]) -> str | None:
    try:
        length = int(policy["length"])
    except ValueError:
        fields.errors["length"] = "length must be a whole number between 8 and 256"
        return None
    try:
        return generate(PasswordPolicy(length=length, **{k: policy[k] for k in POLICY_FLAGS}))
    except InvalidInput as exc:
        fields.errors[exc.field or "length"] = exc.message
        return None


def _account_form(request: Request, p: Principal, *, resource: ResourceDetailView, account: AccountView | None,
                  form: Form, policy: dict[str, Any], generated: str | None = None, status: int = 200) -> Response:
    return render(request, "vault_account_form.html", p, status=status, resource=resource, account=account,
                  form=form, policy=policy, generated=generated)


def _account_fields(fields: Fields, *, new: bool) -> tuple[str, str, str]:
    username = fields.text("username", 200, required=True)
    password = fields.text("password", 4096, required=new, strip=False, secret=True)
    notes = fields.text("notes", 4096, strip=False)
    return username, password, notes


def _clear_notes(fields: Fields) -> bool:
    """The edit form's "clear the notes" box (kept checked in the form shown again)."""
    clear = fields.flag("clear_notes")
    fields.values["clear_notes"] = "1" if clear else ""
    return clear


def _with_generated(request: Request, p: Principal, fields: Fields, *, resource: ResourceDetailView,
                    account: AccountView | None) -> Response:
    """The account form again, as typed, with a generated password: only the generator's settings are
    checked now."""
    fields.text("username", 200)
    fields.text("notes", 4096, strip=False)
    if account is not None:
        _clear_notes(fields)
    policy = _policy(fields)
    fields.errors.clear()
    generated = _generate(fields, policy)
    return _account_form(request, p, resource=resource, account=account, form=fields.result(), policy=policy,
                         generated=generated, status=200 if generated else 422)


@router.get("/vault/resources/{resource_id}/accounts/new", response_class=HTMLResponse)
async def account_new(request: Request, resource_id: str, p: UiUser) -> Response:
    res = _modify(await vault.get_resource(runtime(request), p, resource_id), "resource")
    return _account_form(request, p, resource=res, account=None, form=Form(), policy=_policy(None))


@router.post("/vault/resources/{resource_id}/accounts/generate", response_class=HTMLResponse)
async def account_new_generate(request: Request, resource_id: str, p: UiUser) -> Response:
    fields = await read_fields(request, p)
    res = await vault.get_resource(runtime(request), p, resource_id)
    return _with_generated(request, p, fields, resource=res, account=None)


@router.post("/vault/resources/{resource_id}/accounts", response_class=HTMLResponse)
async def account_create(request: Request, resource_id: str, p: UiUser) -> Response:
    fields = await read_fields(request, p)
    rt = runtime(request)
    res = await vault.get_resource(rt, p, resource_id)
    username, password, notes = _account_fields(fields, new=True)
    form = await submit(fields, lambda: vault.create_account(rt, p, res.id, username, password, notes or None),
                        "username")
    if isinstance(form, Form):
        return _account_form(request, p, resource=res, account=None, form=form, policy=_policy(fields), status=422)
    return see_other(f"/ui/vault/resources/{res.id}")


async def _account_and_resource(request: Request, p: Principal, account_id: str
                                ) -> tuple[AccountView, ResourceDetailView]:
    rt = runtime(request)
    account = await vault.get_account(rt, p, account_id)
    return account, await vault.get_resource(rt, p, account.resource_id)


@router.get("/vault/accounts/{account_id}/edit", response_class=HTMLResponse)
async def account_edit(request: Request, account_id: str, p: UiUser) -> Response:
    account, res = await _account_and_resource(request, p, account_id)
    _modify(account, "account")
    return _account_form(request, p, resource=res, account=account, form=Form(values={"username": account.username}),
                         policy=_policy(None))


@router.post("/vault/accounts/{account_id}/edit/generate", response_class=HTMLResponse)
async def account_edit_generate(request: Request, account_id: str, p: UiUser) -> Response:
    fields = await read_fields(request, p)
    account, res = await _account_and_resource(request, p, account_id)
    return _with_generated(request, p, fields, resource=res, account=account)


@router.post("/vault/accounts/{account_id}/edit", response_class=HTMLResponse)
async def account_update(request: Request, account_id: str, p: UiUser) -> Response:
    fields = await read_fields(request, p)
    rt = runtime(request)
    account, res = await _account_and_resource(request, p, account_id)
    username, password, notes = _account_fields(fields, new=False)
    clear_notes = _clear_notes(fields)
    form = await submit(fields, lambda: vault.update_account(rt, p, account.id, username=username,
                                                             password=password or None,
                                                             notes="" if clear_notes else (notes or None)),
                        "username")
    if isinstance(form, Form):
        return _account_form(request, p, resource=res, account=account, form=form, policy=_policy(fields),
                             status=422)
    return see_other(f"/ui/vault/resources/{res.id}")


@router.post("/vault/accounts/{account_id}/delete")
async def account_delete(request: Request, account_id: str, p: UiUser) -> Response:
    check_csrf(p, await request.form())
    rt = runtime(request)
    account = await vault.get_account(rt, p, account_id)
    await vault.delete_account(rt, p, account.id)
    return see_other(f"/ui/vault/resources/{account.resource_id}")


@router.post("/vault/accounts/{account_id}/reveal", response_class=HTMLResponse)
async def account_reveal(request: Request, account_id: str, p: UiUser) -> Response:
    """The resource's page with this account's password shown: audited first (as the API's retrieval)."""
    check_csrf(p, await request.form())
    rt = runtime(request)
    account = await vault.get_account(rt, p, account_id)
    revealed = await vault.retrieve_password(rt, p, account.id)
    return await _resource_page(request, p, account.resource_id, revealed=revealed)


# --- history ------------------------------------------------------------------

async def _history_page(request: Request, p: Principal, account_id: str, *, reveal: bool) -> Response:
    rt = runtime(request)
    account = await vault.get_account(rt, p, account_id)
    items = await vault.password_history(rt, p, account.id, reveal=reveal)
    return render(request, "vault_history.html", p, account=account, items=items, revealed=reveal)


@router.get("/vault/accounts/{account_id}/history", response_class=HTMLResponse)
async def account_history(request: Request, account_id: str, p: UiUser) -> Response:
    return await _history_page(request, p, account_id, reveal=False)


@router.post("/vault/accounts/{account_id}/history/reveal", response_class=HTMLResponse)
async def account_history_reveal(request: Request, account_id: str, p: UiUser) -> Response:
    check_csrf(p, await request.form())
    return await _history_page(request, p, account_id, reveal=True)
