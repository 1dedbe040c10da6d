"""/users: administration of users (administrators only).

A user carries an ``ETag`` (its row's version); a PATCH or DELETE with ``If-Match`` is made only if
the user is unchanged (412 otherwise).
"""

from __future__ import annotations

from fastapi import APIRouter, Response

from safehold.ids import parse_id
from safehold.services import access, auth, users
from safehold.services.access import IfMatch, Principal, etag
from safehold.services.users import Actor
from safehold.services.views import UserView
from safehold.web.api.common import AUTH_ERRORS, Limit, Offset, errors
from safehold.web.deps import CurrentUser, RuntimeDep
from safehold.web.schemas import (
    IfMatchHeader,
    Page,
    PasswordSet,
    TokenCreate,
    TokenCreated,
    UserCreate,
    UserOut,
    UserUpdate,
    etag_header,
)

router = APIRouter(prefix="/users", tags=["users"])
WITH_404 = errors(401, 403, 404, 409, 422, 503)
CONDITIONAL = WITH_404 | errors(412)


def _admin(p: Principal) -> Actor:
    access.require(p.is_admin, "only administrators can manage users")
    return Actor(p.username, p.source_ip)


@router.get("", response_model=Page[UserOut], responses=AUTH_ERRORS)
async def list_users(p: CurrentUser, rt: RuntimeDep, limit: Limit = 100, offset: Offset = 0) -> Page[UserOut]:
    _admin(p)
    rows, total = await users.list_users(rt, limit=limit, offset=offset)
    return Page[UserOut](items=[UserOut.model_validate(r, from_attributes=True) for r in rows], total=total,
                         limit=limit, offset=offset)


def _tagged(response: Response, user: UserView) -> UserOut:
    """The user as the body, its version in the ``ETag`` header."""
    response.headers["ETag"] = etag(user.version)
    return UserOut.model_validate(user, from_attributes=True)


@router.post("", response_model=UserOut, status_code=201,
             responses=errors(401, 403, 409, 422, 503) | etag_header(201, "user"))
async def create_user(body: UserCreate, p: CurrentUser, rt: RuntimeDep, response: Response) -> UserOut:
    user_id = await users.create_user(rt, _admin(p), username=body.username, password=body.password,
                                      role=body.role, full_name=body.full_name, email=body.email)
    return _tagged(response, await users.get_user(rt, user_id))


@router.get("/{user_id}", response_model=UserOut, responses=WITH_404 | etag_header(200, "user"))
async def get_user(user_id: str, p: CurrentUser, rt: RuntimeDep, response: Response) -> UserOut:
    _admin(p)
    return _tagged(response, await users.get_user(rt, parse_id(user_id, "user")))


@router.patch("/{user_id}", response_model=UserOut, responses=CONDITIONAL | etag_header(200, "user"))
async def update_user(user_id: str, body: UserUpdate, p: CurrentUser, rt: RuntimeDep, response: Response,
                      if_match: IfMatchHeader = None) -> UserOut:
    """Change only the fields named in the body (role, disabled, full name, e-mail)."""
    uid = parse_id(user_id, "user")
    user = await users.update_user(rt, _admin(p), uid, role=body.role, disabled=body.disabled,
                                   full_name=body.full_name, email=body.email, if_match=IfMatch.parse(if_match))
    return _tagged(response, user)


@router.delete("/{user_id}", status_code=204, responses=CONDITIONAL)
async def delete_user(user_id: str, p: CurrentUser, rt: RuntimeDep, if_match: IfMatchHeader = None) -> Response:
    await users.delete_user(rt, _admin(p), parse_id(user_id, "user"), if_match=IfMatch.parse(if_match))
    return Response(status_code=204)


@router.post("/{user_id}/password", status_code=204, responses=WITH_404)
async def reset_password(user_id: str, body: PasswordSet, p: CurrentUser, rt: RuntimeDep) -> Response:
    await users.set_password(rt, _admin(p), parse_id(user_id, "user"), body.password)
    return Response(status_code=204)


@router.post("/{user_id}/unlock", status_code=204, responses=WITH_404)
async def unlock(user_id: str, p: CurrentUser, rt: RuntimeDep) -> Response:
    await users.unlock(rt, _admin(p), parse_id(user_id, "user"))
    return Response(status_code=204)


@router.delete("/{user_id}/totp", status_code=204, responses=WITH_404)
async def reset_totp(user_id: str, p: CurrentUser, rt: RuntimeDep) -> Response:
    actor = _admin(p)
    await auth.totp_disable(rt, actor.name, parse_id(user_id, "user"), actor.source_ip)
    return Response(status_code=204)


@router.post("/{user_id}/tokens", response_model=TokenCreated, status_code=201, responses=WITH_404)
async def create_token_for(user_id: str, body: TokenCreate, p: CurrentUser, rt: RuntimeDep) -> TokenCreated:
    """Create an API token for another user (automation accounts); shown once."""
    actor = _admin(p)
    token_id, token = await auth.create_api_token(rt, parse_id(user_id, "user"), body.name, days=body.days,
                                                  actor=actor.name, source_ip=actor.source_ip)
    return TokenCreated(id=token_id, name=body.name, token=token)
