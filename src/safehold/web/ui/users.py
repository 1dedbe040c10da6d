"""User administration (administrators only) and "My account" (every signed-in user).

A new API token and a TOTP secret appear once, in the response to the POST that creates them; a
password typed into a form is never written back into a page.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from safehold.domain import UserRole
from safehold.errors import InvalidInput, ReauthenticationRequired, SafeholdError
from safehold.ids import parse_id
from safehold.services import access, auth, users
from safehold.services.access import Principal
from safehold.services.users import Actor
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
ROLES = [(UserRole.USER, "user: the resources shared with them"),
         (UserRole.PASSWORD_ADMINISTRATOR, "password administrator: adds resources"),
         (UserRole.AUDITOR, "auditor: reads the audit log"),
         (UserRole.ADMINISTRATOR, "administrator: everything")]
# what the page after a change says (post/redirect/get: a fixed key in the URL, never user input)
DONE = {
    "created": "The user was added.", "profile": "Name and email saved.", "role": "Role changed.",
    "disabled": "The user is disabled and signed out everywhere.", "enabled": "The user is enabled again.",
    "password": "Password reset; the user's sessions were ended.", "unlocked": "The user is unlocked.",
    "totp": "Two-factor authentication reset; the user signs in with the password only until enrolling again.",
    "revoked": "The token was revoked.", "deleted": "The user was deleted.",
    "totp_enabled": "Two-factor authentication is on: sign-ins now need a code from your app.",
}


def _admin(p: Principal) -> Actor:
    access.require(p.is_admin, "only administrators can manage users")
    return Actor(p.username, p.source_ip)


def _render(request: Request, template: str, p: Principal, *, status: int = 200, **context: Any) -> Response:
    return render(request, template, p, status=status, min_password=auth.MIN_PASSWORD_LEN, **context)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _done(done: str) -> str:
    return DONE.get(done, "")


async def _admin_form(request: Request, p: Principal) -> tuple[Fields, Actor]:
    fields = await read_fields(request, p)
    return fields, _admin(p)


def _back(user_id: str, done: str) -> RedirectResponse:
    return see_other(f"/ui/users/{user_id}?done={done}")


def _days(fields: Fields) -> int | None:
    text = fields.text("days", 5)
    if not text:
        return None
    if not text.isdigit() or not 1 <= int(text) <= 3650:
        fields.errors["days"] = "expiry must be a whole number of days between 1 and 3650 (or empty: never)"
        return None
    return int(text)


async def _new_token(request: Request, fields: Fields, user_id: str, actor: Actor) -> dict[str, str] | Form:
    """An API token of ``user_id`` from the "New token" form: the token (shown once, in this response
    only), or the form to show again."""
    name = fields.text("name", 100, required=True)
    days = _days(fields)
    made = await submit(fields, lambda: auth.create_api_token(runtime(request), user_id, name, days=days,
                                                              actor=actor.name, source_ip=actor.source_ip), "name")
    if isinstance(made, Form):
        return made
    token_id, token = made
    return {"id": token_id, "name": name, "token": token}


# --- the list and adding ------------------------------------------------------

@router.get("/users", response_class=HTMLResponse)
async def users_list(request: Request, p: UiUser, done: str = "") -> Response:
    _admin(p)
    rows, total = await users.list_users(runtime(request), limit=500)
    return _render(request, "users_list.html", p, rows=rows, total=total, now=_now(), done=_done(done))


@router.get("/users/new", response_class=HTMLResponse)
async def user_new(request: Request, p: UiUser) -> Response:
    _admin(p)
    return _render(request, "users_new.html", p, form=Form(values={"role": UserRole.USER.value}), roles=ROLES)


@router.post("/users", response_class=HTMLResponse)
async def user_create(request: Request, p: UiUser) -> Response:
    fields, actor = await _admin_form(request, p)
    username = fields.text("username", 64, required=True)
    full_name = fields.text("full_name", 200, label="full name")
    email = fields.text("email", 254)
    role_text = fields.text("role", 32)
    password = fields.text("password", 1024, required=True, strip=False, secret=True)
    if role_text not in {r.value for r, _ in ROLES}:
        fields.errors["role"] = "choose one of the roles"
    user_id = await submit(fields, lambda: users.create_user(runtime(request), actor, username=username,
                                                             password=password, role=UserRole(role_text),
                                                             full_name=full_name, email=email), "username")
    if isinstance(user_id, Form):
        return _render(request, "users_new.html", p, form=user_id, roles=ROLES, status=422)
    return _back(user_id, "created")


# --- one user -----------------------------------------------------------------

async def _user_page(request: Request, p: Principal, user_id: str, *, status: int = 200, done: str = "",
                     **forms: Any) -> Response:
    rt = runtime(request)
    user = await users.get_user(rt, parse_id(user_id, "user"))
    tokens = await auth.list_api_tokens(rt, user.id)
    defaults = {"profile_form": Form(values={"full_name": user.full_name, "email": user.email}),
                "password_form": Form(), "token_form": Form(), "new_token": None}
    return _render(request, "users_detail.html", p, status=status, target=user, tokens=tokens, roles=ROLES,
                  now=_now(), done=done, **(defaults | forms))


@router.get("/users/{user_id}", response_class=HTMLResponse)
async def user_page(request: Request, user_id: str, p: UiUser, done: str = "") -> Response:
    _admin(p)
    return await _user_page(request, p, user_id, done=_done(done))


@router.post("/users/{user_id}/profile", response_class=HTMLResponse)
async def user_profile(request: Request, user_id: str, p: UiUser) -> Response:
    fields, actor = await _admin_form(request, p)
    uid = parse_id(user_id, "user")
    full_name = fields.text("full_name", 200, label="full name")
    email = fields.text("email", 254)
    form = await submit(fields, lambda: users.update_user(runtime(request), actor, uid, full_name=full_name,
                                                          email=email), "full_name")
    if isinstance(form, Form):
        return await _user_page(request, p, uid, status=422, profile_form=form)
    return _back(uid, "profile")


@router.post("/users/{user_id}/role", response_class=HTMLResponse)
async def user_role(request: Request, user_id: str, p: UiUser) -> Response:
    fields, actor = await _admin_form(request, p)
    uid = parse_id(user_id, "user")
    role_text = fields.text("role", 32)
    if role_text not in {r.value for r, _ in ROLES}:
        return await _user_page(request, p, uid, status=422, role_error="choose one of the roles")
    try:
        await users.update_user(runtime(request), actor, uid, role=UserRole(role_text))
    except FORM_ERRORS as exc:
        return await _user_page(request, p, uid, status=422, role_error=exc.message)
    return _back(uid, "role")


async def _set_disabled(request: Request, user_id: str, p: Principal, disabled: bool) -> Response:
    fields, actor = await _admin_form(request, p)
    uid = parse_id(user_id, "user")
    try:
        await users.update_user(runtime(request), actor, uid, disabled=disabled)
    except FORM_ERRORS as exc:
        return await _user_page(request, p, uid, status=422, status_error=exc.message)
    return _back(uid, "disabled" if disabled else "enabled")


@router.post("/users/{user_id}/disable", response_class=HTMLResponse)
async def user_disable(request: Request, user_id: str, p: UiUser) -> Response:
    return await _set_disabled(request, user_id, p, True)


@router.post("/users/{user_id}/enable", response_class=HTMLResponse)
async def user_enable(request: Request, user_id: str, p: UiUser) -> Response:
    return await _set_disabled(request, user_id, p, False)


@router.post("/users/{user_id}/password", response_class=HTMLResponse)
async def user_password(request: Request, user_id: str, p: UiUser) -> Response:
    fields, actor = await _admin_form(request, p)
    uid = parse_id(user_id, "user")
    password = fields.text("password", 1024, required=True, strip=False, secret=True)  # never shown again
    form = await submit(fields, lambda: users.set_password(runtime(request), actor, uid, password), "password")
    if isinstance(form, Form):
        return await _user_page(request, p, uid, status=422, password_form=form)
    return _back(uid, "password")


@router.post("/users/{user_id}/unlock")
async def user_unlock(request: Request, user_id: str, p: UiUser) -> Response:
    _, actor = await _admin_form(request, p)
    uid = parse_id(user_id, "user")
    await users.unlock(runtime(request), actor, uid)
    return _back(uid, "unlocked")


@router.post("/users/{user_id}/totp/reset")
async def user_totp_reset(request: Request, user_id: str, p: UiUser) -> Response:
    _, actor = await _admin_form(request, p)
    uid = parse_id(user_id, "user")
    await auth.totp_disable(runtime(request), actor.name, uid, actor.source_ip)
    return _back(uid, "totp")


@router.post("/users/{user_id}/delete", response_class=HTMLResponse)
async def user_delete(request: Request, user_id: str, p: UiUser) -> Response:
    _, actor = await _admin_form(request, p)
    uid = parse_id(user_id, "user")
    try:
        await users.delete_user(runtime(request), actor, uid)
    except FORM_ERRORS as exc:
        return await _user_page(request, p, uid, status=422, status_error=exc.message)
    return see_other("/ui/users?done=deleted")


@router.post("/users/{user_id}/tokens", response_class=HTMLResponse)
async def user_token_create(request: Request, user_id: str, p: UiUser) -> Response:
    """An API token for this user (automation accounts): shown once, in this response only."""
    fields, actor = await _admin_form(request, p)
    uid = parse_id(user_id, "user")
    made = await _new_token(request, fields, uid, actor)
    if isinstance(made, Form):
        return await _user_page(request, p, uid, status=422, token_form=made)
    return await _user_page(request, p, uid, new_token=made)


@router.post("/users/{user_id}/tokens/{token_id}/revoke")
async def user_token_revoke(request: Request, user_id: str, token_id: str, p: UiUser) -> Response:
    _, actor = await _admin_form(request, p)
    uid = parse_id(user_id, "user")
    # The service revokes a token of the principal it is given; an administrator acts for the token's
    # owner here, and the audit record still names the administrator (username and source address).
    await auth.revoke_api_token(runtime(request), dataclasses.replace(p, user_id=uid),
                                parse_id(token_id, "token"))
    return _back(uid, "revoked")


# --- my account ---------------------------------------------------------------

async def _me_page(request: Request, p: Principal, *, status: int = 200, done: str = "", **extra: Any) -> Response:
    rt = runtime(request)
    me = await users.get_user(rt, p.user_id)
    tokens = await auth.list_api_tokens(rt, p.user_id)
    defaults = {"password_form": Form(), "totp_form": Form(), "token_form": Form(), "enrolment": None,
                "new_token": None}
    return _render(request, "users_me.html", p, status=status, me=me, tokens=tokens, done=done,
                  totp_pending=me.totp_pending, **(defaults | extra))


@router.get("/me", response_class=HTMLResponse)
async def me_page(request: Request, p: UiUser, done: str = "") -> Response:
    return await _me_page(request, p, done=_done(done))


@router.post("/me/password", response_class=HTMLResponse)
async def me_password(request: Request, p: UiUser) -> Response:
    fields = await read_fields(request, p)
    rt = runtime(request)
    current = fields.text("current_password", 1024, label="current password", required=True, strip=False,
                          secret=True)
    new = fields.text("new_password", 1024, label="new password", required=True, strip=False, secret=True)
    confirm = fields.text("confirm_password", 1024, label="the new password again", required=True, strip=False,
                          secret=True)
    code = fields.text("totp", 16, label="code").replace(" ", "")
    fields.values.pop("totp", None)
    me = await users.get_user(rt, p.user_id)
    if "new_password" not in fields.errors and "confirm_password" not in fields.errors and new != confirm:
        fields.errors["confirm_password"] = "the two new passwords differ"
    if "new_password" not in fields.errors:
        try:
            auth.check_password_strength(new, field="new_password")
        except InvalidInput as exc:
            fields.errors["new_password"] = exc.message
    if me.totp_enabled and not code:
        fields.errors["totp"] = "enter the code from your authenticator app"

    async def change() -> None:
        await auth.reauthenticate(rt, p, current, code or None)
        await users.set_password(rt, Actor(p.username, p.source_ip), p.user_id, new, own=True)

    def where(exc: SafeholdError) -> str:
        if isinstance(exc, ReauthenticationRequired):
            return "totp" if me.totp_enabled and "TOTP" in exc.message else "current_password"
        return "new_password"

    form = await submit(fields, change, where, refusals=(ReauthenticationRequired, *FORM_ERRORS))
    if isinstance(form, Form):
        return await _me_page(request, p, status=422, password_form=form)
    # every session of the user ended with the change, this one too: sign in with the new password
    return see_other("/ui/login?next=/ui/me")


@router.post("/me/totp", response_class=HTMLResponse)
async def me_totp_enrol(request: Request, p: UiUser) -> Response:
    """Start TOTP enrolment: the secret and its otpauth URI are shown once, in this response."""
    check_csrf(p, await request.form())
    try:
        secret, uri = await auth.totp_enroll(runtime(request), p)
    except InvalidInput as exc:
        return await _me_page(request, p, status=422, totp_form=Form(message=exc.message))
    return await _me_page(request, p, enrolment={"secret": secret, "uri": uri})


@router.post("/me/totp/confirm", response_class=HTMLResponse)
async def me_totp_confirm(request: Request, p: UiUser) -> Response:
    fields = await read_fields(request, p)
    code = fields.text("code", 16, required=True).replace(" ", "")
    if not fields.errors and not code.isdigit():
        fields.errors["code"] = "enter the 6-digit code from your authenticator app"
    form = await submit(fields, lambda: auth.totp_confirm(runtime(request), p, code), "code", refusals=(InvalidInput,))
    if isinstance(form, Form):
        return await _me_page(request, p, status=422, totp_form=form)
    return see_other("/ui/me?done=totp_enabled")


@router.post("/me/tokens", response_class=HTMLResponse)
async def me_token_create(request: Request, p: UiUser) -> Response:
    """A personal API token: shown once, in this response only."""
    fields = await read_fields(request, p)
    made = await _new_token(request, fields, p.user_id, Actor(p.username, p.source_ip))
    if isinstance(made, Form):
        return await _me_page(request, p, status=422, token_form=made)
    return await _me_page(request, p, new_token=made)


@router.post("/me/tokens/{token_id}/revoke")
async def me_token_revoke(request: Request, token_id: str, p: UiUser) -> Response:
    check_csrf(p, await request.form())
    await auth.revoke_api_token(runtime(request), p, parse_id(token_id, "token"))
    return see_other("/ui/me?done=revoked#tokens")
