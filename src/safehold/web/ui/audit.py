"""The audit page: the trail filtered (one tab per server), exported as CSV, its chains verified, and
the read-only servers' spool backlog (administrators and auditors)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, Response

from safehold.domain import AuditAction, AuditResult, ServerRole
from safehold.services import access, audit
from safehold.services.access import Principal
from safehold.services.audit import RecordFilter
from safehold.web.agent import live_peers
from safehold.web.ui.core import Form, UiUser, render, runtime

router = APIRouter()

PAGE = 100
#: With a text filter, this many newest records (matching the other filters) are searched.
TEXT_SCAN = 5000
FILTERS = ("actor", "action", "result", "since", "until", "text")
ROLE_ORDER = {ServerRole.PRIMARY: 0, ServerRole.STANDALONE: 0, ServerRole.SECONDARY: 1, ServerRole.READONLY: 2}
ROLE_LABEL = {ServerRole.PRIMARY: "Primary", ServerRole.STANDALONE: "Standalone", ServerRole.SECONDARY: "Secondary",
              ServerRole.READONLY: "Read-only"}


@dataclass
class Query:
    """The filters as typed (``form``), those that parsed (``filter``: for the audit service), the
    server tab and the page."""

    form: Form
    filter: RecordFilter = RecordFilter()
    text: str = ""
    server: str = ""
    page: int = 1

    def link(self, **changes: Any) -> str:
        params = {k: v for k, v in self.form.values.items() if v}
        if self.server:
            params["server"] = self.server
        params.update({k: str(v) for k, v in changes.items() if v not in (None, "")})
        for k, v in changes.items():
            if v in (None, ""):
                params.pop(k, None)
        return "?" + urlencode(params) if params else "?"


def _time(value: str, name: str, f: Form) -> dt.datetime | None:
    if not value:
        return None
    try:
        t = dt.datetime.fromisoformat(value)
    except ValueError:
        f.errors[name] = "enter a date and time such as 2025-01-31T14:00 (UTC)"
        return None
    return t if t.tzinfo is not None else t.replace(tzinfo=dt.UTC)


def parse_query(request: Request) -> Query:
    """The filters of the page's query string, with a message next to each one that is wrong."""
    qp = request.query_params
    values = {k: qp.get(k, "").strip() for k in FILTERS}
    f = Form(values=values)
    q = Query(form=f, text=values["text"].lower())
    if len(values["actor"]) > 64:
        f.errors["actor"] = "at most 64 characters"
    if len(values["text"]) > 200:
        f.errors["text"] = "at most 200 characters"
    action = values["action"] or None
    if action is not None and action not in {a.value for a in AuditAction}:
        f.errors["action"] = "choose an action from the list"
    result = values["result"] or None
    if result is not None and result not in {r.value for r in AuditResult}:
        f.errors["result"] = "choose a result from the list"
    since = _time(values["since"], "since", f)
    until = _time(values["until"], "until", f)
    if since and until and until <= since and not f.errors:
        f.errors["until"] = "must be later than “from”"
    server = qp.get("server", "").strip()
    if server:
        server = audit.server_filter(server)  # one that is not an id matches nothing, as in the API
    q.server = server
    try:
        q.page = max(1, min(int(qp.get("page", "1")), 1_000_000))
    except ValueError:
        q.page = 1
    q.filter = RecordFilter(action=action, actor=values["actor"] or None, server=server or None, result=result,
                            since=since, until=until)
    return q


def role_label(role: str) -> str:
    try:
        return ROLE_LABEL.get(ServerRole(role), str(role))
    except ValueError:
        return str(role)


def _plain(text: str) -> str:
    return "".join(ch for ch in text.casefold() if ch.isalnum())


def role_note(name: str | None, role: str) -> str:
    """A server's role as shown after its name, or "" when the name already says it ("Primary (Primary)",
    "readonly (Read-only)"): compared ignoring case, spaces and punctuation."""
    label = role_label(role)
    return "" if name is not None and _plain(name) == _plain(label) else label


def server_tabs(rows: Sequence[Any]) -> list[dict[str, str]]:
    """The registered servers, Primary first, then the secondaries, then the read-only servers; ``note``: the
    role shown after the name (empty when the name says it)."""
    ordered = sorted(rows, key=lambda r: (ROLE_ORDER.get(ServerRole(r.role), 3), r.name.lower(), r.id))
    return [{"id": r.id, "name": r.name, "role": role_label(r.role), "note": role_note(r.name, r.role)}
            for r in ordered]


#: How each result is shown: a mark besides its colour, so that it reads without colour too.
RESULT_MARK = {AuditResult.SUCCESS.value: "✓", AuditResult.FAILURE.value: "✗", AuditResult.DENIED.value: "⊘"}


def when(t: dt.datetime | None) -> str:
    """A time as the pages show it: UTC, to the second."""
    return t.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if t is not None else "—"


def _require(p: Principal) -> None:
    access.require(access.can_read_audit(p), "only administrators and auditors can read the audit trail")


@router.get("/audit", response_class=HTMLResponse)
async def audit_page(request: Request, p: UiUser, verify: str = "") -> Response:
    _require(p)
    rt = runtime(request)
    q = parse_query(request)
    found = await audit.browse(rt, None if q.form.errors else q.filter, text=q.text, limit=PAGE,
                               offset=(q.page - 1) * PAGE, scan=TEXT_SCAN, verify=bool(verify))
    backlog = await audit.spool_backlog(rt, live_peers(request))
    pages = max(1, -(-found.total // PAGE))
    return render(request, "audit.html", p, status=422 if q.form.errors else 200,
                  form=q.form, q=q, rows=found.rows, total=found.total, truncated=found.truncated,
                  text_scan=TEXT_SCAN, tabs=server_tabs(found.servers), actions=[a.value for a in AuditAction],
                  results=[r.value for r in AuditResult],
                  report=found.report.as_dict() if found.report is not None else None, backlog=backlog,
                  page=q.page, pages=pages, export_link="/ui/audit/export.csv" + q.link(page=None),
                  verify_link=q.link(verify=1, page=None), when=when, role_note=role_note, result_mark=RESULT_MARK)


@router.get("/audit/export.csv", response_class=PlainTextResponse)
async def audit_export(request: Request, p: UiUser) -> Response:
    """The records of the page's filter (every page, oldest first) as CSV."""
    _require(p)
    rt = runtime(request)
    q = parse_query(request)
    if q.form.errors:
        return PlainTextResponse("; ".join(f"{k}: {v}" for k, v in q.form.errors.items()), status_code=422)
    rows = await audit.export(rt, q.filter, q.text)
    return PlainTextResponse(audit.records_csv(rows), media_type="text/csv",
                             headers={"Content-Disposition": 'attachment; filename="safehold-audit.csv"',
                                      "Cache-Control": "no-store"})
