"""Sign-in (password, then a TOTP step when enabled) and sign-out.

Both sign-in forms are refused (403, no session) unless they come from this server's own sign-in page:
the browser's ``Sec-Fetch-Site``/``Origin`` and the page's pre-session token (see ``web/crossorigin.py``).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from safehold.errors import AccountLocked, AuthenticationFailed, SafeholdError, TotpRequired
from safehold.services import auth
from safehold.web import crossorigin
from safehold.web.deps import SESSION_COOKIE, client_ip
from safehold.web.ui.core import Form, PendingLogins, UiUser, check_csrf, render, runtime, safe_next

log = logging.getLogger(__name__)
router = APIRouter()
PENDING_COOKIE = "safehold_signin"
FORM_COOKIE = "safehold_signin_form"  # the pre-session token; its twin is the forms' hidden field
FORM_FIELD = "signin_token"
FORM_TOKEN_KEY = "sign-in form token"
REFUSED = ("This sign-in form has expired or was not sent from this server's sign-in page. "
           "Sign in again here.")


def _pending(request: Request) -> PendingLogins:
    return PendingLogins(auth.derived_key(runtime(request), "pending sign-in"))


def _page(request: Request, form: Form, next_path: str, step: str, status: int = 200) -> Response:
    """The sign-in page with its pre-session token: the cookie's while it has at least half its time to
    run (several tabs share it), else a new one."""
    key = auth.derived_key(runtime(request), FORM_TOKEN_KEY)
    now = time.time()
    token = request.cookies.get(FORM_COOKIE, "")
    expiry = crossorigin.token_expiry(key, token) if token else None
    if expiry is None or expiry - now < crossorigin.TOKEN_TTL / 2:
        token = crossorigin.mint_token(key, now)
    response = render(request, "login.html", form=form, next=next_path, step=step, status=status,
                      signin_token=token)
    response.set_cookie(FORM_COOKIE, token, max_age=crossorigin.TOKEN_TTL, httponly=True, secure=True,
                        samesite="strict", path="/ui/login")
    return response


def _forged(request: Request, form: Any, next_path: str) -> Response | None:
    """The refusal of a sign-in form that did not come from this server's sign-in page, or None."""
    rt = runtime(request)
    why = crossorigin.refusal(request, rt.settings.http.public_url)
    if why is None and not crossorigin.token_ok(auth.derived_key(rt, FORM_TOKEN_KEY),
                                                request.cookies.get(FORM_COOKIE, ""),
                                                str(form.get(FORM_FIELD, "")), time.time()):
        why = "its sign-in token is missing, expired or not this page's"
    if why is None:
        return None
    log.info("refused a sign-in form from %s: %s", client_ip(request), why)
    return _page(request, Form(message=REFUSED), next_path, "password", status=403)


def _signed_in(request: Request, token: str, next_path: str) -> Response:
    rt = runtime(request)
    response = RedirectResponse(safe_next(next_path), status_code=303)
    response.set_cookie(SESSION_COOKIE, token, max_age=rt.settings.security.session_max_hours * 3600,
                        httponly=True, secure=True, samesite="strict", path="/")
    for name in (PENDING_COOKIE, FORM_COOKIE):
        response.delete_cookie(name, path="/ui/login", secure=True, httponly=True, samesite="strict")
    return response


@router.get("/login", response_class=HTMLResponse)
async def login_page(request: Request, next: str = "") -> Response:  # noqa: A002 - the query parameter's name
    return _page(request, Form(), safe_next(next), "password")


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request) -> Response:
    form = await request.form()
    username = str(form.get("username", "")).strip()
    password = str(form.get("password", ""))
    next_path = safe_next(str(form.get("next", "")))
    if (refused := _forged(request, form, next_path)) is not None:
        return refused
    values = {"username": username}
    if not username or not password:
        f = Form(values=values)
        if not username:
            f.errors["username"] = "enter your username"
        if not password:
            f.errors["password"] = "enter your password"
        return _page(request, f, next_path, "password", 422)
    try:
        result = await auth.login(runtime(request), username, password, None, client_ip(request))
    except TotpRequired:
        ticket = _pending(request).put(username, password)
        response = _page(request, Form(values=values), next_path, "totp")
        response.set_cookie(PENDING_COOKIE, ticket, max_age=int(PendingLogins.TTL), httponly=True, secure=True,
                            samesite="strict", path="/ui/login")
        return response
    except (AuthenticationFailed, AccountLocked) as exc:
        status = 423 if isinstance(exc, AccountLocked) else 401
        return _page(request, Form(values=values, message=exc.message), next_path, "password", status)
    except SafeholdError as exc:
        return _page(request, Form.from_error(values, exc), next_path, "password", 503)
    return _signed_in(request, result.token, next_path)


@router.post("/login/totp", response_class=HTMLResponse)
async def login_totp(request: Request) -> Response:
    form = await request.form()
    code = str(form.get("totp", "")).strip()
    next_path = safe_next(str(form.get("next", "")))
    if (refused := _forged(request, form, next_path)) is not None:
        return refused
    ticket = request.cookies.get(PENDING_COOKIE, "")
    store = _pending(request)
    username = store.peek(ticket) if ticket else None
    if username is None:
        return _page(request, Form(message="the sign-in took too long; start again"), next_path, "password", 401)
    if not code.isdigit() or len(code) not in (6, 8):
        return _page(request, Form(values={"username": username},
                                   errors={"totp": "enter the 6-digit code from your app"}), next_path, "totp", 422)
    taken = store.take(ticket)
    if taken is None:  # it ran out just now
        return _page(request, Form(message="the sign-in took too long; start again"), next_path, "password", 401)
    try:
        result = await auth.login(runtime(request), taken[0], taken[1], code, client_ip(request))
    except (AuthenticationFailed, AccountLocked) as exc:
        status = 423 if isinstance(exc, AccountLocked) else 401
        return _page(request, Form(values={"username": username}, message=exc.message), next_path, "password",
                     status)
    return _signed_in(request, result.token, next_path)


@router.post("/logout")
async def logout(request: Request, p: UiUser) -> Response:
    check_csrf(p, await request.form())
    await auth.logout(runtime(request), p)
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/", secure=True, httponly=True, samesite="strict")
    return response
