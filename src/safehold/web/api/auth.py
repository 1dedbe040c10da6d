"""/auth and /me: logins, logout, own password, TOTP, personal API tokens."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from safehold.errors import PermissionDenied
from safehold.ids import parse_id
from safehold.services import auth, users
from safehold.services.users import Actor
from safehold.web import crossorigin
from safehold.web.api.common import AUTH_ERRORS, errors
from safehold.web.deps import SESSION_COOKIE, CurrentUser, RuntimeDep, client_ip
from safehold.web.schemas import (
    LoginIn,
    LoginOut,
    OwnPasswordChange,
    TokenCreate,
    TokenCreated,
    TokenOut,
    TotpConfirm,
    TotpEnrollOut,
    UserOut,
)

router = APIRouter(tags=["auth"])


@router.post("/auth/login", response_model=LoginOut, responses=errors(401, 403, 422, 423, 503))
async def login(body: LoginIn, request: Request, response: Response, rt: RuntimeDep) -> LoginOut:
    """Sign in; returns a session token (also set as an HttpOnly cookie).  Refused (403) when a browser
    sends it for another site (its Origin or Sec-Fetch-Site says so)."""
    if crossorigin.refusal(request, rt.settings.http.public_url) is not None:
        raise PermissionDenied("a sign-in sent by a browser from another site is refused",
                               hint="sign in on this server's own page, or from a script (no Origin header)")
    result = await auth.login(rt, body.username, body.password, body.totp, client_ip(request))
    max_age = rt.settings.security.session_idle_minutes * 60
    response.set_cookie(SESSION_COOKIE, result.token, max_age=rt.settings.security.session_max_hours * 3600,
                        httponly=True, secure=True, samesite="strict", path="/")
    user = await users.get_user(rt, result.principal.user_id)
    return LoginOut(token=result.token, csrf_token=result.csrf_token, user=UserOut.model_validate(user,
                    from_attributes=True), expires_in=max_age)


@router.post("/auth/logout", status_code=204, responses=AUTH_ERRORS)
async def logout(p: CurrentUser, rt: RuntimeDep, response: Response) -> Response:
    await auth.logout(rt, p)
    response = Response(status_code=204)
    response.delete_cookie(SESSION_COOKIE, path="/", secure=True, httponly=True, samesite="strict")
    return response


@router.get("/me", response_model=UserOut, responses=AUTH_ERRORS)
async def me(p: CurrentUser, rt: RuntimeDep) -> UserOut:
    return UserOut.model_validate(await users.get_user(rt, p.user_id), from_attributes=True)


@router.post("/me/password", status_code=204, responses=AUTH_ERRORS)
async def change_own_password(body: OwnPasswordChange, p: CurrentUser, rt: RuntimeDep) -> Response:
    await auth.reauthenticate(rt, p, body.current_password, None)
    await users.set_password(rt, Actor(p.username, p.source_ip), p.user_id, body.new_password, own=True)
    return Response(status_code=204)


@router.post("/me/totp", response_model=TotpEnrollOut, responses=AUTH_ERRORS)
async def totp_enroll(p: CurrentUser, rt: RuntimeDep) -> TotpEnrollOut:
    """Start TOTP enrolment: the secret is shown once; confirm with a code to enable it."""
    secret, uri = await auth.totp_enroll(rt, p)
    return TotpEnrollOut(secret=secret, otpauth_uri=uri)


@router.post("/me/totp/confirm", status_code=204, responses=AUTH_ERRORS)
async def totp_confirm(body: TotpConfirm, p: CurrentUser, rt: RuntimeDep) -> Response:
    await auth.totp_confirm(rt, p, body.code)
    return Response(status_code=204)


@router.get("/me/tokens", response_model=list[TokenOut], responses=AUTH_ERRORS)
async def my_tokens(p: CurrentUser, rt: RuntimeDep) -> list[TokenOut]:
    rows = await auth.list_api_tokens(rt, p.user_id)
    return [TokenOut.model_validate(r, from_attributes=True) for r in rows]


@router.post("/me/tokens", response_model=TokenCreated, status_code=201, responses=AUTH_ERRORS)
async def create_token(body: TokenCreate, p: CurrentUser, rt: RuntimeDep) -> TokenCreated:
    """Create a personal API token; it is shown once."""
    token_id, token = await auth.create_api_token(rt, p.user_id, body.name, days=body.days, actor=p.username,
                                                  source_ip=p.source_ip)
    return TokenCreated(id=token_id, name=body.name, token=token)


@router.delete("/me/tokens/{token_id}", status_code=204, responses=errors(401, 403, 404, 422, 503))
async def revoke_token(token_id: str, p: CurrentUser, rt: RuntimeDep) -> Response:
    await auth.revoke_api_token(rt, p, parse_id(token_id, "token"))
    return Response(status_code=204)

