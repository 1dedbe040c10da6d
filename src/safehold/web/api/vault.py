"""/resources, /accounts, sharing, password generation, import and export.

A resource, an account and a share carry an ``ETag`` (their row's version); a PATCH, PUT or DELETE
with ``If-Match`` is made only if the row is unchanged (412 otherwise).
"""

from __future__ import annotations

from typing import Annotated, Protocol, TypeVar

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel

from safehold.errors import InvalidInput
from safehold.services import auth, vault
from safehold.services.access import IfMatch, etag
from safehold.services.passwords import PasswordPolicy, generate
from safehold.services.vault import ResourceInput
from safehold.web.api.common import AUTH_ERRORS, Limit, Offset, errors
from safehold.web.deps import CurrentUser, RuntimeDep
from safehold.web.schemas import (
    AccountCreate,
    AccountOut,
    AccountUpdate,
    ExportIn,
    GenerateIn,
    GenerateOut,
    HistoryItem,
    IfMatchHeader,
    ImportOut,
    Page,
    PasswordOut,
    ResourceCreate,
    ResourceDetail,
    ResourceOut,
    ResourceUpdate,
    ShareIn,
    ShareOut,
    Text64,
    Text200,
    etag_header,
)

router = APIRouter(tags=["vault"])
WITH_404 = errors(401, 403, 404, 409, 422, 503)
CONDITIONAL = WITH_404 | errors(412)
MAX_IMPORT = 10 * 1024 * 1024

SearchText = Annotated[Text200 | None, Query(description="matches name, address, description, tags")]
TagText = Annotated[Text64 | None, Query(description="only resources with this tag")]
ReasonText = Annotated[Text200, Query(description="why the password is needed (audited)")]


@router.get("/resources", response_model=Page[ResourceOut], responses=AUTH_ERRORS)
async def list_resources(p: CurrentUser, rt: RuntimeDep, q: SearchText = None, tag: TagText = None,
                         limit: Limit = 50, offset: Offset = 0) -> Page[ResourceOut]:
    items, total = await vault.search_resources(rt, p, query=q, tag=tag, limit=limit, offset=offset)
    return Page[ResourceOut](items=[ResourceOut.model_validate(i, from_attributes=True) for i in items], total=total,
                             limit=limit, offset=offset)


class _Versioned(Protocol):
    @property
    def version(self) -> str: ...


Out = TypeVar("Out", bound=BaseModel)


def _tagged(response: Response, view: _Versioned, model: type[Out]) -> Out:
    """Put the view's version in the ``ETag`` header; the body is the model's fields of the view (no version)."""
    response.headers["ETag"] = etag(view.version)
    return model.model_validate(view, from_attributes=True)


@router.post("/resources", response_model=ResourceOut, status_code=201,
             responses=errors(401, 403, 409, 422, 503) | etag_header(201, "resource"))
async def create_resource(body: ResourceCreate, p: CurrentUser, rt: RuntimeDep, response: Response) -> ResourceOut:
    row = await vault.create_resource(rt, p, ResourceInput(body.name, body.type, body.address, body.description,
                                                           tuple(body.tags)))
    return _tagged(response, row, ResourceOut)


@router.get("/resources/{resource_id}", response_model=ResourceDetail,
            responses=WITH_404 | etag_header(200, "resource"))
async def get_resource(resource_id: str, p: CurrentUser, rt: RuntimeDep, response: Response) -> ResourceDetail:
    return _tagged(response, await vault.get_resource(rt, p, resource_id), ResourceDetail)


@router.patch("/resources/{resource_id}", response_model=ResourceOut,
              responses=CONDITIONAL | etag_header(200, "resource"))
async def update_resource(resource_id: str, body: ResourceUpdate, p: CurrentUser, rt: RuntimeDep,
                          response: Response, if_match: IfMatchHeader = None) -> ResourceOut:
    """Change only the fields named in the body (atomically: concurrent changes of other fields stay)."""
    changes = body.model_dump(exclude_unset=True, exclude_none=True)
    row = await vault.update_resource(rt, p, resource_id, changes, if_match=IfMatch.parse(if_match))
    return _tagged(response, row, ResourceOut)


@router.delete("/resources/{resource_id}", status_code=204, responses=CONDITIONAL)
async def delete_resource(resource_id: str, p: CurrentUser, rt: RuntimeDep,
                          if_match: IfMatchHeader = None) -> Response:
    await vault.delete_resource(rt, p, resource_id, if_match=IfMatch.parse(if_match))
    return Response(status_code=204)


@router.post("/resources/{resource_id}/accounts", response_model=AccountOut, status_code=201,
             responses=WITH_404 | etag_header(201, "account"))
async def create_account(resource_id: str, body: AccountCreate, p: CurrentUser, rt: RuntimeDep,
                         response: Response) -> AccountOut:
    row = await vault.create_account(rt, p, resource_id, body.username, body.password, body.notes)
    return _tagged(response, row, AccountOut)


@router.get("/resources/{resource_id}/shares", response_model=list[ShareOut], responses=WITH_404)
async def list_shares(resource_id: str, p: CurrentUser, rt: RuntimeDep) -> list[ShareOut]:
    return [ShareOut.model_validate(s, from_attributes=True) for s in await vault.list_shares(rt, p, resource_id)]


@router.get("/resources/{resource_id}/shares/{user_id}", response_model=ShareOut,
            responses=WITH_404 | etag_header(200, "share"))
async def get_share(resource_id: str, user_id: str, p: CurrentUser, rt: RuntimeDep, response: Response) -> ShareOut:
    return _tagged(response, await vault.get_share(rt, p, resource_id, user_id), ShareOut)


@router.put("/resources/{resource_id}/shares/{user_id}", status_code=204,
            responses=CONDITIONAL | etag_header(204, "share"))
async def share(resource_id: str, user_id: str, body: ShareIn, p: CurrentUser, rt: RuntimeDep,
                if_match: IfMatchHeader = None) -> Response:
    """Share the resource with a user or change the permission (with ``If-Match``: change only an existing,
    unchanged share)."""
    version = await vault.share(rt, p, resource_id, user_id, body.permission, if_match=IfMatch.parse(if_match))
    return Response(status_code=204, headers={"ETag": etag(version)})


@router.delete("/resources/{resource_id}/shares/{user_id}", status_code=204, responses=CONDITIONAL)
async def unshare(resource_id: str, user_id: str, p: CurrentUser, rt: RuntimeDep,
                  if_match: IfMatchHeader = None) -> Response:
    await vault.unshare(rt, p, resource_id, user_id, if_match=IfMatch.parse(if_match))
    return Response(status_code=204)


@router.get("/accounts/{account_id}", response_model=AccountOut, responses=WITH_404 | etag_header(200, "account"))
async def get_account(account_id: str, p: CurrentUser, rt: RuntimeDep, response: Response) -> AccountOut:
    return _tagged(response, await vault.get_account(rt, p, account_id), AccountOut)


@router.patch("/accounts/{account_id}", response_model=AccountOut, responses=CONDITIONAL | etag_header(200, "account"))
async def update_account(account_id: str, body: AccountUpdate, p: CurrentUser, rt: RuntimeDep, response: Response,
                         if_match: IfMatchHeader = None) -> AccountOut:
    """Change the username, password (the old one goes to the history) or notes: only the fields named."""
    row = await vault.update_account(rt, p, account_id, username=body.username, password=body.password,
                                     notes=body.notes, if_match=IfMatch.parse(if_match))
    return _tagged(response, row, AccountOut)


@router.delete("/accounts/{account_id}", status_code=204, responses=CONDITIONAL)
async def delete_account(account_id: str, p: CurrentUser, rt: RuntimeDep,
                         if_match: IfMatchHeader = None) -> Response:
    await vault.delete_account(rt, p, account_id, if_match=IfMatch.parse(if_match))
    return Response(status_code=204)


@router.get("/accounts/{account_id}/password", response_model=PasswordOut, responses=WITH_404)
async def retrieve_password(account_id: str, p: CurrentUser, rt: RuntimeDep, reason: ReasonText = "") -> PasswordOut:
    """Reveal a password.  The retrieval is audited first; if it cannot be audited, nothing is revealed."""
    return PasswordOut.model_validate(await vault.retrieve_password(rt, p, account_id, reason=reason),
                                      from_attributes=True)


@router.get("/accounts/{account_id}/history", response_model=list[HistoryItem], responses=WITH_404)
async def history(account_id: str, p: CurrentUser, rt: RuntimeDep,
                  reveal: Annotated[bool, Query(description="include the old passwords (audited)")] = False,
                  ) -> list[HistoryItem]:
    return [HistoryItem.model_validate(h, from_attributes=True)
            for h in await vault.password_history(rt, p, account_id, reveal=reveal)]


@router.post("/passwords/generate", response_model=GenerateOut, responses=AUTH_ERRORS)
async def generate_password(body: GenerateIn, p: CurrentUser) -> GenerateOut:
    return GenerateOut(password=generate(PasswordPolicy(**body.model_dump())))


@router.post("/export", response_class=PlainTextResponse, responses=errors(401, 403, 422, 503) | {
    200: {"content": {"text/csv": {"schema": {"type": "string"}}}, "description": "CSV of every visible account"}})
async def export(body: ExportIn, p: CurrentUser, rt: RuntimeDep) -> PlainTextResponse:
    """Export every account you can see, with passwords, as CSV.  Needs your password again; audited."""
    await auth.reauthenticate(rt, p, body.password, body.totp)
    text = await vault.export_csv(rt, p)
    return PlainTextResponse(text, media_type="text/csv",
                             headers={"Content-Disposition": 'attachment; filename="safehold-export.csv"',
                                      "Cache-Control": "no-store"})


@router.post("/import", response_model=ImportOut, responses=errors(401, 403, 413, 422, 503),
             openapi_extra={"requestBody": {"required": True,
                                            "content": {"text/csv": {"schema": {"type": "string"}}}}})
async def import_csv(request: Request, p: CurrentUser, rt: RuntimeDep) -> ImportOut:
    """Import accounts from CSV (the export's columns); the whole file or nothing."""
    body = await request.body()
    if len(body) > MAX_IMPORT:
        raise InvalidInput("the file is larger than 10 MiB", field="file")
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidInput("the file is not UTF-8 text", field="file") from None
    if "\x00" in text:
        raise InvalidInput("the file contains NUL characters", field="file")
    report = await vault.import_csv(rt, p, text)
    return ImportOut(resources_created=report.resources_created, accounts_created=report.accounts_created,
                     accounts_updated=report.accounts_updated)
