"""Vault's HTTP API, the part that reads a KV version 2 secret: hvac, Ansible's community.hashi_vault,
Terraform's vault provider, External Secrets, vault-agent and consul-template read Safehold passwords
with no new client (docs/VAULT-API.md).

The routes live under ``/v1`` beside Vault's health (``web/api/health.py``), outside the OpenAPI of
``/api/v1``.  The mount is the settings' ``http.vault_mount`` (``safehold``); what a path means is decided
in ``services/vault_kv.py``.  They answer in Vault's shapes: ``data`` (or ``auth``) in an envelope, errors
as ``{"errors": [...]}`` with Vault's status codes — 403 permission denied (also for a missing or wrong
token, as Vault answers), 404 not found, 400 bad request, 405 for a write (the mount is read-only), 503
unavailable.  :class:`VaultRoute` converts them for these routes alone: ``/api/v1`` keeps its shape.

The rules are the REST API's:

1. the token is a personal API token, in ``X-Vault-Token`` or ``Authorization: Bearer``;
2. sharing and roles decide what is visible (older versions need modify permission, as the history does);
3. every password read is a retrieval audited before the password is returned, marked ``via: vault-api``
   with the reason an ``X-Safehold-Reason`` header gives;
4. on a read-only server every route here but ``/v1/sys/health`` is redirected (307) to the writable
   server while one is up — Vault's clients follow it and keep ``X-Vault-Token`` — and served from the
   replica in emergency mode otherwise (``web/app.py``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from safehold import errors as e
from safehold import logs
from safehold.domain import Principal
from safehold.runtime import Runtime
from safehold.services import auth, vault
from safehold.services import vault_kv as kv
from safehold.web.deps import RuntimeDep, client_ip
from safehold.web.errors import BodyTooLarge

log = logging.getLogger(__name__)
REASON_HEADER = "x-safehold-reason"
#: Vault's status for each of Safehold's errors (the first that matches)
STATUS: tuple[tuple[type[e.SafeholdError], int], ...] = (
    (e.NotFound, 404),
    (e.AuthenticationFailed, 403), (e.PermissionDenied, 403), (e.TotpRequired, 403), (e.AccountLocked, 403),
    (e.ReauthenticationRequired, 403),
    (e.InvalidInput, 400), (e.Conflict, 400), (e.PreconditionFailed, 400),
    (e.Unavailable, 503), (e.AuditUnavailable, 503), (e.DatabaseError, 503),
)
ANY_METHOD = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "LIST"]


def vault_error(status: int, *messages: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"errors": list(messages)}, status_code=status, headers=headers)


def error_for(exc: e.SafeholdError) -> JSONResponse:
    """A Safehold error as Vault says it: its sentence (and hint), never a class name or a secret."""
    status = next((s for cls, s in STATUS if isinstance(exc, cls)), 500)
    text = exc.message if not exc.hint else f"{exc.message}; {exc.hint}"
    if status == 403 and not text.startswith("permission denied"):
        text = f"permission denied: {text}"
    if status >= 500:
        log.warning("Vault API -> %d: %s", status, exc.message)
    return vault_error(status, text)


class VaultRoute(APIRoute):
    """A route whose every failure is answered in Vault's shape, and never cached."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def answer(request: Request) -> Response:
            try:
                response = await handler(request)
            except e.SafeholdError as exc:
                response = error_for(exc)
            except RequestValidationError:  # never echo the input: it may be a secret
                response = vault_error(400, "the request is not valid: see docs/VAULT-API.md for what this "
                                            "path takes")
            except BodyTooLarge as exc:
                response = vault_error(413, exc.detail, headers={"Connection": "close"})
            except StarletteHTTPException as exc:
                response = vault_error(exc.status_code, exc.detail if isinstance(exc.detail, str) else "refused")
            except Exception as exc:  # noqa: BLE001 - a bug: logged for the operator, Vault's 500 for the client
                log.error("unexpected %s on %s %s", type(exc).__name__, request.method, request.url.path,
                          exc_info=exc)
                response = vault_error(500, "an unexpected error occurred; see the server log")
            response.headers["Cache-Control"] = "no-store"
            return response

        return answer


router = APIRouter(route_class=VaultRoute, include_in_schema=False)


@dataclass(frozen=True)
class Caller:
    principal: Principal
    token: str = field(repr=False)  # lookup-self answers it to its own holder; never logged


async def vault_caller(request: Request, rt: RuntimeDep) -> Caller:
    """The caller a Vault client's token stands for: a personal API token (step 1)."""
    token = request.headers.get("x-vault-token", "").strip()
    if not token:
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        token = value.strip() if scheme.lower() == "bearer" else ""
    if not token:
        raise e.AuthenticationFailed("no token: send a personal API token in X-Vault-Token")
    if request.headers.get("x-vault-wrap-ttl"):
        raise e.InvalidInput("response wrapping (X-Vault-Wrap-TTL) is not supported")
    p = await auth.authenticate(rt, token, client_ip(request))
    if p.kind != "api":
        raise e.AuthenticationFailed("the Vault API takes personal API tokens, not session tokens",
                                     hint="make one on the tokens page or with 'safehold token create'")
    return Caller(p, token)


CallerDep = Annotated[Caller, Depends(vault_caller)]
VersionQ = Annotated[str | None, Query(max_length=20)]
ListQ = Annotated[str | None, Query(alias="list", max_length=10)]


def envelope(data: Any = None, *, auth_info: Any = None, mount_type: str = "") -> dict[str, Any]:
    """Vault's response envelope; nothing is leased or wrapped here."""
    return {"request_id": logs.request_id.get() or "", "lease_id": "", "renewable": False, "lease_duration": 0,
            "data": data, "wrap_info": None, "warnings": None, "auth": auth_info, "mount_type": mount_type}


def _ours(rt: Runtime, mount: str) -> str:
    if mount != rt.settings.http.vault_mount:
        raise e.NotFound("no such mount", hint=f"this server's KV version 2 mount is "
                                              f"'{rt.settings.http.vault_mount}/'")
    return mount


def _tail(request: Request, prefix: str) -> str:
    """The request's path after ``prefix`` as sent, percent-encoding and all (a slash inside a name stays
    apart from the slashes between names)."""
    raw = request.scope.get("raw_path")
    path = raw.decode("latin-1") if raw else quote(request.scope["path"])
    while "//" in path:  # Vault's clients collapse them too
        path = path.replace("//", "/")
    return path[len(prefix):] if path.startswith(prefix) else ""


def _reason(request: Request) -> str:
    text = request.headers.get(REASON_HEADER, "")
    return "".join(ch for ch in text if ch.isprintable()).strip()[:200]


async def _json_body(request: Request) -> dict[str, Any]:
    """A JSON object body, whatever its Content-Type (Go's Vault client sends none)."""
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise e.InvalidInput("the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise e.InvalidInput("the request body must be a JSON object")
    return body


async def _token_row(rt: Runtime, p: Principal) -> Any:
    """The caller's own token (its name and lifetime)."""
    for row in await auth.list_api_tokens(rt, p.user_id):
        if getattr(row, "id", None) == p.token_id:
            return row
    raise e.AuthenticationFailed("invalid or expired token")


# --- tokens ---------------------------------------------------------------------------------------

@router.get("/v1/auth/token/lookup-self")
async def lookup_self(caller: CallerDep, rt: RuntimeDep) -> JSONResponse:
    p, row = caller.principal, await _token_row(rt, caller.principal)
    return JSONResponse(envelope(kv.token_info(
        token=caller.token, token_id=p.token_id, name=row.name, created_at=row.created_at,
        expires_at=row.expires_at, username=p.username, role=p.role, now=auth.now())))


@router.api_route("/v1/auth/token/create", methods=["POST", "PUT"])
async def create_token(request: Request, caller: CallerDep, rt: RuntimeDep) -> JSONResponse:
    """A child token: a personal API token of the same user, expiring no later than its parent (audited as
    any token made)."""
    p, body = caller.principal, await _json_body(request)
    parent = await _token_row(rt, p)
    asked = kv.child_token_request(body, kv.policies_for(p.role))
    now = auth.now()
    expires = kv.child_expiry(now, asked.ttl, parent.expires_at)
    token_id, token = await auth.create_api_token(rt, p.user_id, kv.child_name(asked.display_name, parent.name),
                                                  days=None, actor=p.username, source_ip=p.source_ip,
                                                  expires_at=expires)
    policies = kv.policies_for(p.role)
    return JSONResponse(envelope(auth_info={
        "client_token": token, "accessor": token_id, "policies": policies, "token_policies": policies,
        "identity_policies": None, "metadata": {"username": p.username, "parent_accessor": p.token_id},
        "lease_duration": kv.ttl_left(now, expires), "renewable": False, "entity_id": "", "token_type": "service",
        "orphan": True, "mfa_requirement": None, "num_uses": 0}))


# --- mounts ---------------------------------------------------------------------------------------

@router.get("/v1/sys/mounts")
async def mounts(caller: CallerDep, rt: RuntimeDep) -> JSONResponse:
    listed = {f"{rt.settings.http.vault_mount}/": kv.mount_info(rt.settings.http.vault_mount)}
    return JSONResponse({**listed, **envelope(listed)})  # older clients read the mounts at the top level


@router.get("/v1/sys/internal/ui/mounts")
async def ui_mounts(caller: CallerDep, rt: RuntimeDep) -> JSONResponse:
    mount = rt.settings.http.vault_mount
    return JSONResponse(envelope({"secret": {f"{mount}/": kv.mount_info(mount)}, "auth": {}}))


@router.get("/v1/sys/internal/ui/mounts/{path:path}")
async def ui_mount_of(path: str, caller: CallerDep, rt: RuntimeDep) -> JSONResponse:
    """The preflight of vault-agent, consul-template and the vault CLI: which mount a path is in, and its
    KV version ("2")."""
    mount = rt.settings.http.vault_mount
    if not kv.in_mount(path, mount):  # as Vault: no mount there is said as a denial
        raise e.PermissionDenied(f"permission denied: no mount at that path; this server's mount is '{mount}/'")
    return JSONResponse(envelope({**kv.mount_info(mount), "path": f"{mount}/"}))


# --- the mount ------------------------------------------------------------------------------------

@router.get("/v1/{mount}/data/{path:path}")
async def read_secret(mount: str, path: str, request: Request, caller: CallerDep, rt: RuntimeDep,
                      version: VersionQ = None) -> JSONResponse:
    """A password (``?version=N``: an earlier one), audited before it is returned (step 3)."""
    p = caller.principal
    where = kv.secret_path(_tail(request, f"/v1/{_ours(rt, mount)}/data/"))
    number = kv.parse_version(version)
    loc = await kv.locate(rt, p, where)
    chosen = kv.pick_version(loc.versions, number)
    kv.check_version_access(loc.permission, current=chosen.entry_id is None)
    reason = _reason(request)
    if chosen.entry_id is None:
        got = await vault.retrieve_password(rt, p, loc.account_id, reason=reason, via=kv.VIA)
        password, notes = got.password, got.notes
    else:
        entries = await vault.password_history(rt, p, loc.account_id, reveal=True, only=chosen.entry_id,
                                               reason=reason, via=kv.VIA)
        if not entries or entries[0].password is None:
            raise e.NotFound(f"the secret has no version {chosen.number}")
        password, notes = entries[0].password, None  # notes are not versioned: only the current ones
    return JSONResponse(envelope({"data": kv.secret_data(loc, password, notes),
                                  "metadata": kv.version_metadata(loc, chosen)}, mount_type="kv"))


@router.api_route("/v1/{mount}/metadata", methods=["GET", "LIST"])
@router.api_route("/v1/{mount}/metadata/{path:path}", methods=["GET", "LIST"])
async def metadata(mount: str, request: Request, caller: CallerDep, rt: RuntimeDep,
                   listed: ListQ = None) -> JSONResponse:
    """A secret's versions (no password), or with ``?list=true`` the keys below a folder.  (The method ``LIST``
    is taken too, but uvicorn's httptools parser refuses it before the app sees it: docs/VAULT-API.md.)"""
    tail = _tail(request, f"/v1/{_ours(rt, mount)}/metadata")
    if request.method == "LIST" or kv.truthy(listed):
        keys = await kv.secret_keys(rt, caller.principal, kv.list_prefix(tail))
        if not keys:
            raise e.NotFound("nothing to list at that path")
        return JSONResponse(envelope({"keys": keys}, mount_type="kv"))
    loc = await kv.locate(rt, caller.principal, kv.secret_path(tail))
    return JSONResponse(envelope(kv.metadata_document(loc), mount_type="kv"))


@router.api_route("/v1/{mount}/{path:path}", methods=["POST", "PUT", "PATCH", "DELETE"])
async def refuse_write(mount: str, path: str, caller: CallerDep, rt: RuntimeDep) -> JSONResponse:
    _ours(rt, mount)
    return vault_error(405, "this mount is read-only: change passwords in Safehold (its pages, REST API or "
                            "command line)", headers={"Allow": "GET, LIST"})


@router.api_route("/v1/{path:path}", methods=ANY_METHOD)
async def unsupported(path: str) -> JSONResponse:
    """Any other Vault path: not here (``/v1/sys/health`` is answered before this, by ``web/api/health.py``)."""
    raise e.NotFound("no such path in Safehold's Vault API", hint="see docs/VAULT-API.md for what it serves")
