"""What every page shares: the templates, the signed-in user, CSRF checks, the mode banner.

Pages are server-rendered (Jinja2, autoescaped) and work without JavaScript; ``/static/safehold.js``
only adds copy-to-clipboard, hide-after-reveal and live refresh.  The session is the same server-side
session as the API's (the ``safehold_session`` cookie: HttpOnly, Secure, SameSite=Strict); every form
carries the session's CSRF token, and a POST without the right one is refused.  The content security
policy allows no inline script or style.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, TypeVar
from urllib.parse import quote

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from safehold import __version__
from safehold.crypto.envelope import Keyring
from safehold.domain import UserRole
from safehold.errors import (
    AuthenticationFailed,
    Conflict,
    InvalidInput,
    PermissionDenied,
    SafeholdError,
)
from safehold.runtime import Runtime
from safehold.services import auth
from safehold.services.access import Principal
from safehold.web.deps import SESSION_COOKIE, client_ip
from safehold.web.ui import emergency

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"]), trim_blocks=True,
                  lstrip_blocks=True)
CSRF_FIELD = "csrf"
#: The service's refusals that a form shows next to a field (anything else: the error page).
FORM_ERRORS: tuple[type[SafeholdError], ...] = (InvalidInput, Conflict)
T = TypeVar("T")


class LoginRequired(Exception):  # noqa: N818 - a redirect, not an error
    def __init__(self, next_path: str) -> None:
        self.next_path = next_path


def login_redirect(exc: LoginRequired) -> RedirectResponse:
    return RedirectResponse(f"/ui/login?next={quote(exc.next_path, safe='/')}", status_code=303)


def runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


async def ui_user(request: Request) -> Principal:
    """The signed-in user (from the session cookie), or a redirect to the sign-in page."""
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        raise LoginRequired(request.url.path)
    try:
        return await auth.authenticate(runtime(request), token, client_ip(request))
    except AuthenticationFailed:
        raise LoginRequired(request.url.path) from None


UiUser = Annotated[Principal, Depends(ui_user)]


def check_csrf(p: Principal, form: Any) -> None:
    sent = str(form.get(CSRF_FIELD, ""))
    if not p.csrf_token or not secrets.compare_digest(sent, p.csrf_token):
        raise PermissionDenied("this form is out of date or was not sent by Safehold's page (CSRF token)")


def safe_next(path: str | None) -> str:
    """Where to go after signing in: only a path of this site's pages."""
    if path and path.startswith("/ui/") and "//" not in path and "\\" not in path:
        return path
    return "/ui/vault"


@dataclass
class Form:
    """What the user typed (never passwords) and the messages next to the fields."""

    values: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    message: str = ""

    @classmethod
    def from_error(cls, values: dict[str, str], exc: SafeholdError, default_field: str = "") -> Form:
        name = getattr(exc, "field", None) or default_field
        f = cls(values=values)
        if name:
            f.errors[name] = exc.message
        else:
            f.message = exc.message
        return f


class Fields:
    """Reads a submitted form: what the user typed (kept for the re-rendered form unless secret) and a
    message per field that is not acceptable (the API's limits)."""

    def __init__(self, form: Any) -> None:
        self.form = form
        self.values: dict[str, str] = {}
        self.errors: dict[str, str] = {}

    def raw(self, name: str) -> str:
        value = self.form.get(name)
        return value if isinstance(value, str) else ""

    def text(self, name: str, limit: int, *, label: str = "", required: bool = False, strip: bool = True,
             secret: bool = False) -> str:
        value = self.raw(name)
        if strip:
            value = value.strip()
        if not secret:
            self.values[name] = value
        label = label or name.replace("_", " ")
        if "\x00" in value:
            self.errors[name] = f"{label} must not contain NUL characters"
        elif required and not value:
            self.errors[name] = f"{label} is required"
        elif len(value) > limit:
            self.errors[name] = f"{label} is too long (at most {limit} characters)"
        else:
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                self.errors[name] = f"{label} must be valid Unicode text"
        return value

    def flag(self, name: str) -> bool:
        return self.raw(name) not in ("", "0", "false", "off")

    def result(self, message: str = "") -> Form:
        return Form(values=self.values, errors=self.errors, message=message)


async def read_fields(request: Request, p: Principal) -> Fields:
    """The submitted form, once its CSRF token is checked."""
    fields = Fields(await request.form())
    check_csrf(p, fields.form)
    return fields


async def submit(fields: Fields, call: Callable[[], Awaitable[T]], where: str | Callable[[SafeholdError], str], *,
                 refusals: tuple[type[SafeholdError], ...] = FORM_ERRORS) -> T | Form:
    """The service call of a form (``call``), made when every field is acceptable: its result, or else the
    form to show again, with the fields' messages or the service's refusal (one of ``refusals``; any
    other error goes on to the error page) next to a field: its own (``exc.field``), else ``where``; or,
    when ``where`` is a function, the field it names for the refusal."""
    if fields.errors:
        return fields.result()
    try:
        return await call()
    except refusals as exc:
        if callable(where):
            fields.errors[where(exc)] = exc.message
            return fields.result()
        return Form.from_error(fields.values, exc, where)


def see_other(url: str) -> RedirectResponse:
    """Post/redirect/get: the page to show after a change."""
    return RedirectResponse(url, status_code=303)


def mode_banner(request: Request) -> dict[str, Any] | None:
    rt = runtime(request)
    agent = getattr(request.app.state, "agent", None)
    if rt.fence is not None:
        return {"kind": "fenced", "text": "This server was superseded by a newer primary and refuses every change",
                "detail": f"Use {rt.fence.acting_primary_name} at {rt.fence.acting_primary_url}.",
                "link": rt.fence.acting_primary_url}
    if rt.readonly:
        age = agent.data_age_seconds if agent is not None else None
        when = "unknown" if age is None else f"{age:.0f} seconds ago"
        began = emergency.since(request)
        down = "The primary and secondary servers are down" + (
            f" (emergency mode since {began.strftime('%Y-%m-%d %H:%M:%S UTC')})" if began is not None else "")
        return {"kind": "readonly", "text": f"Read-only emergency access — data as of {when}",
                "detail": f"{down}; passwords can be read, nothing can be changed here.", "link": None}
    return None


def render(request: Request, template: str, p: Principal | None = None, *, status: int = 200,
           **context: Any) -> HTMLResponse:
    rt = runtime(request)
    html = env.get_template(template).render(
        request=request, user=p, csrf=p.csrf_token if p is not None else "", banner=mode_banner(request),
        can_write=not rt.readonly, server=rt.identity, version=__version__,
        is_admin=p is not None and p.is_admin,
        is_auditor=p is not None and (p.is_admin or p.role == UserRole.AUDITOR),
        path=request.url.path, **context)
    return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})


class PendingLogins:
    """Between the password step and the TOTP step of a sign-in: the checked credentials, sealed (AES-256-GCM
    under a key derived from the cluster's keys) into the ticket itself for two minutes, so whichever worker
    or server takes the second step can open it.  The ticket travels only in an httponly, secure, strict
    cookie scoped to the sign-in page (never in the page or a URL); the TOTP code's one-time use is what stops
    a replayed ticket."""

    TTL = 120.0
    AAD = b"safehold pending sign-in v1"

    def __init__(self, key: bytes) -> None:
        self._ring = Keyring({1: key}, 1)

    def put(self, username: str, password: str) -> str:
        body = json.dumps({"u": username, "p": password, "e": time.time() + self.TTL}).encode()
        return base64.urlsafe_b64encode(self._ring.seal(body, self.AAD)).decode().rstrip("=")

    def take(self, ticket: str) -> tuple[str, str] | None:
        try:
            padded = ticket + "=" * (-len(ticket) % 4)
            d = json.loads(self._ring.open(base64.urlsafe_b64decode(padded), self.AAD))
            username, password, expires = str(d["u"]), str(d["p"]), float(d["e"])
        except (SafeholdError, ValueError, KeyError, TypeError):  # damaged, forged or from another cluster
            return None
        return (username, password) if time.time() < expires else None

    def peek(self, ticket: str) -> str | None:
        taken = self.take(ticket)
        return taken[0] if taken else None


async def error_page(request: Request, status: int, exc: SafeholdError) -> Response:
    """A service error on a page: the page of the error, with the user's navigation when signed in."""
    if isinstance(exc, AuthenticationFailed):
        return login_redirect(LoginRequired(request.url.path))
    p: Principal | None = None
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        try:
            p = await auth.authenticate(runtime(request), token, client_ip(request))
        except SafeholdError:
            p = None
    return render(request, "error.html", p, status=status, message=exc.message, hint=exc.hint)
