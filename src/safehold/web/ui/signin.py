"""Sign-in (password, then a TOTP step when enabled) and sign-out."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from safehold.errors import AccountLocked, AuthenticationFailed, SafeholdError, TotpRequired
from safehold.services import auth
from safehold.web.deps import SESSION_COOKIE, client_ip
from safehold.web.ui.core import Form, PendingLogins, UiUser, check_csrf, render, runtime, safe_next

router = APIRouter()
PENDING_COOKIE = "safehold_signin"


def _pending(request: Request) -> PendingLogins:
    store: PendingLogins | None = getattr(request.app.state, "pending_logins", None)
    if store is None:
        store = request.app.state.pending_logins = PendingLogins()
    return store


def _signed_in(request: Request, token: str, next_path: str) -> Response:
    rt = runtime(request)
    response = RedirectResponse(safe_next(next_path), status_code=303)
    response.set_cookie(SESSION_COOKIE, token, max_age=rt.settings.security.session_max_hours * 3600,
                        httponly=True, secure=True, samesite="strict", path="/")
    response.delete_cookie(PENDING_COOKIE, path="/ui/login", secure=True, httponly=True, samesite="strict")
    return response


@router.get("/login", response_class=HTMLResponse)
async def login_page(request: Request, next: str = "") -> Response:  # noqa: A002 - the query parameter's name
    return render(request, "login.html", form=Form(), next=safe_next(next), step="password")


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request) -> Response:
    form = await request.form()
    username = str(form.get("username", "")).strip()
    password = str(form.get("password", ""))
    next_path = safe_next(str(form.get("next", "")))
    values = {"username": username}
    if not username or not password:
        f = Form(values=values)
        if not username:
            f.errors["username"] = "enter your username"
        if not password:
            f.errors["password"] = "enter your password"
        return render(request, "login.html", form=f, next=next_path, step="password", status=422)
    try:
        result = await auth.login(runtime(request), username, password, None, client_ip(request))
    except TotpRequired:
        ticket = _pending(request).put(username, password)
        response = render(request, "login.html", form=Form(values=values), next=next_path, step="totp")
        response.set_cookie(PENDING_COOKIE, ticket, max_age=int(PendingLogins.TTL), httponly=True, secure=True,
                            samesite="strict", path="/ui/login")
        return response
    except (AuthenticationFailed, AccountLocked) as exc:
        status = 423 if isinstance(exc, AccountLocked) else 401
        return render(request, "login.html", form=Form(values=values, message=exc.message), next=next_path,
                      step="password", status=status)
    except SafeholdError as exc:
        return render(request, "login.html", form=Form.from_error(values, exc), next=next_path, step="password",
                      status=503)
    return _signed_in(request, result.token, next_path)


@router.post("/login/totp", response_class=HTMLResponse)
async def login_totp(request: Request) -> Response:
    form = await request.form()
    code = str(form.get("totp", "")).strip()
    next_path = safe_next(str(form.get("next", "")))
    ticket = request.cookies.get(PENDING_COOKIE, "")
    store = _pending(request)
    username = store.peek(ticket) if ticket else None
    if username is None:
        return render(request, "login.html", form=Form(message="the sign-in took too long; start again"),
                      next=next_path, step="password", status=401)
    if not code.isdigit() or len(code) not in (6, 8):
        return render(request, "login.html", form=Form(values={"username": username},
                                                       errors={"totp": "enter the 6-digit code from your app"}),
                      next=next_path, step="totp", status=422)
    taken = store.take(ticket)
    assert taken is not None
    try:
        result = await auth.login(runtime(request), taken[0], taken[1], code, client_ip(request))
    except (AuthenticationFailed, AccountLocked) as exc:
        status = 423 if isinstance(exc, AccountLocked) else 401
        return render(request, "login.html", form=Form(values={"username": username}, message=exc.message),
                      next=next_path, step="password", status=status)
    return _signed_in(request, result.token, next_path)


@router.post("/logout")
async def logout(request: Request, p: UiUser) -> Response:
    check_csrf(p, await request.form())
    await auth.logout(runtime(request), p)
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/", secure=True, httponly=True, samesite="strict")
    return response
