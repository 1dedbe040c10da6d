"""/audit: the audit trail, filtered, exported and verified."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import PlainTextResponse

from safehold.domain import AuditAction, AuditResult, ServerRole
from safehold.services import access, audit
from safehold.services.audit import RecordFilter
from safehold.web.api.common import AUTH_ERRORS, Limit, Offset
from safehold.web.deps import CurrentUser, RuntimeDep
from safehold.web.schemas import AuditRecordOut, ChainReportOut, Page, Text64

router = APIRouter(prefix="/audit", tags=["audit"])

ActorQ = Annotated[Text64 | None, Query(description="who did it (username)")]


class Filters:
    def __init__(
        self,
        action: Annotated[AuditAction | None, Query()] = None,
        actor: ActorQ = None,
        server: Annotated[Text64 | None, Query(description="server id")] = None,
        role: Annotated[ServerRole | None, Query(description="role of the server it happened on")] = None,
        result: Annotated[AuditResult | None, Query()] = None,
        since: Annotated[dt.datetime | None, Query(description="from this time (inclusive)")] = None,
        until: Annotated[dt.datetime | None, Query(description="before this time")] = None,
    ) -> None:
        self.filter = RecordFilter(action, actor, None if server is None else audit.server_filter(server), role,
                                   result, since, until)


@router.get("", response_model=Page[AuditRecordOut], responses=AUTH_ERRORS)
async def search(p: CurrentUser, rt: RuntimeDep, f: Annotated[Filters, Depends()],
                 limit: Limit = 100, offset: Offset = 0) -> Page[AuditRecordOut]:
    access.require(access.can_read_audit(p), "only administrators and auditors can read the audit trail")
    rows, total = await audit.search(rt, f.filter, limit=limit, offset=offset)
    return Page[AuditRecordOut](items=[AuditRecordOut.model_validate(r, from_attributes=True) for r in rows],
                                total=total, limit=limit, offset=offset)


@router.get("/export", response_class=PlainTextResponse, responses=AUTH_ERRORS | {
    200: {"content": {"text/csv": {"schema": {"type": "string"}}}, "description": "the records as CSV"}})
async def export(p: CurrentUser, rt: RuntimeDep, f: Annotated[Filters, Depends()]) -> PlainTextResponse:
    access.require(access.can_read_audit(p), "only administrators and auditors can export the audit trail")
    rows = await audit.export(rt, f.filter)
    return PlainTextResponse(audit.records_csv(rows), media_type="text/csv",
                             headers={"Content-Disposition": 'attachment; filename="safehold-audit.csv"'})


@router.get("/verify", response_model=ChainReportOut, responses=AUTH_ERRORS)
async def verify(p: CurrentUser, rt: RuntimeDep) -> ChainReportOut:
    """Check every server's audit chain; names each altered or missing record."""
    access.require(access.can_read_audit(p), "only administrators and auditors can verify the audit trail")
    report = await audit.verify(rt)
    return ChainReportOut.model_validate(report.as_dict())
