"""/audit: the audit trail, filtered, exported and verified."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import PlainTextResponse

from safehold.audit.verify import verify_all
from safehold.domain import AuditAction, AuditResult, ServerRole
from safehold.services import access
from safehold.storage import audit as store
from safehold.web.api.common import AUTH_ERRORS, Limit, Offset
from safehold.web.deps import CurrentUser, RuntimeDep
from safehold.web.schemas import AuditRecordOut, ChainReportOut, Page, Text64

router = APIRouter(prefix="/audit", tags=["audit"])

ActorQ = Annotated[Text64 | None, Query(description="who did it (username)")]


def _filters(action: AuditAction | None, actor: str | None, server: str | None, role: ServerRole | None,
             result: AuditResult | None, since: dt.datetime | None, until: dt.datetime | None) -> dict[str, object]:
    import uuid

    if server is not None:
        try:
            server = str(uuid.UUID(server))
        except ValueError:
            server = "00000000-0000-0000-0000-000000000000"  # matches nothing
    return {"action": action, "actor": actor, "server": server, "role": role, "result": result,
            "since": since, "until": until}


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
        self.values = _filters(action, actor, server, role, result, since, until)


@router.get("", response_model=Page[AuditRecordOut], responses=AUTH_ERRORS)
async def search(p: CurrentUser, rt: RuntimeDep, f: Annotated[Filters, Depends()],
                 limit: Limit = 100, offset: Offset = 0) -> Page[AuditRecordOut]:
    access.require(access.can_read_audit(p), "only administrators and auditors can read the audit trail")
    async with rt.read() as conn:
        rows, total = await store.search(conn, limit=limit, offset=offset, **f.values)
    return Page[AuditRecordOut](items=[AuditRecordOut.model_validate(r, from_attributes=True) for r in rows],
                                total=total, limit=limit, offset=offset)


@router.get("/export", response_class=PlainTextResponse, responses=AUTH_ERRORS | {
    200: {"content": {"text/csv": {"schema": {"type": "string"}}}, "description": "the records as CSV"}})
async def export(p: CurrentUser, rt: RuntimeDep, f: Annotated[Filters, Depends()]) -> PlainTextResponse:
    access.require(access.can_read_audit(p), "only administrators and auditors can export the audit trail")
    async with rt.read() as conn:
        rows = await store.export(conn, **f.values)
    return PlainTextResponse(records_csv(rows), media_type="text/csv",
                             headers={"Content-Disposition": 'attachment; filename="safehold-audit.csv"'})


def records_csv(rows: Sequence[Any]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    cols = ["id", "at", "server_id", "server_name", "server_role", "seq", "actor", "source_ip", "action", "target_type",
            "target_id", "target_name", "result", "detail"]
    w.writerow(cols)
    for r in rows:
        m = r._mapping
        w.writerow([json.dumps(m[c], sort_keys=True) if c == "detail" else m[c] for c in cols])
    return buf.getvalue()


@router.get("/verify", response_model=ChainReportOut, responses=AUTH_ERRORS)
async def verify(p: CurrentUser, rt: RuntimeDep) -> ChainReportOut:
    """Check every server's audit chain; names each altered or missing record."""
    access.require(access.can_read_audit(p), "only administrators and auditors can verify the audit trail")
    async with rt.read() as conn:
        report = await verify_all(conn, rt.keys.audit_key)
    return ChainReportOut.model_validate(report.as_dict())
