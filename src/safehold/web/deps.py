"""Typed dependencies of the API routes: the runtime and the authenticated caller."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from safehold.errors import AuthenticationFailed, PermissionDenied
from safehold.runtime import Runtime
from safehold.services import auth
from safehold.services.access import Principal

SESSION_COOKIE = "safehold_session"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}

bearer = HTTPBearer(auto_error=False, description="A session token from /auth/login or a personal API token")


async def get_runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def client_ip(request: Request) -> str:
    return request.client.host if request.client else ""


async def current_principal(
    request: Request,
    rt: RuntimeDep,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    if creds is not None:
        return await auth.authenticate(rt, creds.credentials, client_ip(request))
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        raise AuthenticationFailed("authentication required: send 'Authorization: Bearer <token>'")
    p = await auth.authenticate(rt, cookie, client_ip(request))
    if request.method not in SAFE_METHODS:
        sent = request.headers.get(CSRF_HEADER, "")
        if not p.csrf_token or not secrets.compare_digest(sent, p.csrf_token):
            raise PermissionDenied("missing or wrong CSRF token (send the X-CSRF-Token header)")
    return p


CurrentUser = Annotated[Principal, Depends(current_principal)]
