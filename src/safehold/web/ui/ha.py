"""The High Availability dashboard (administrators): the topology drawn as SVG, the servers (renamable in
place) and databases, HA and replication status with lag, the generation and fencing, the event log and
the readiness checks.  ``/ui/ha/live`` re-renders the live part for ``data-refresh-url``."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError

from safehold.domain import ServerRole
from safehold.errors import PermissionDenied, SafeholdError
from safehold.ha.readiness import readiness
from safehold.ha.status import cluster_status, recent_events
from safehold.ids import parse_id
from safehold.runtime import Runtime
from safehold.services import access
from safehold.services import servers as server_service
from safehold.services.access import Principal
from safehold.web.agent import live_peers
from safehold.web.api import ha as ha_api
from safehold.web.ui import emergency
from safehold.web.ui.audit import ROLE_LABEL, ROLE_ORDER, role_note, when
from safehold.web.ui.core import (
    Form,
    LoginRequired,
    UiUser,
    check_csrf,
    env,
    render,
    runtime,
    ui_user,
)

router = APIRouter()
EVENTS = 50

# the drawing's geometry (SVG user units)
BOX_W, BOX_H, GAP, MARGIN = 180, 66, 24, 16
MIN_WIDTH = 880  # a small cluster is drawn centred at its natural size, not blown up to the page's width
APP_Y, DB_Y = 16, 176
NAME_CHARS = 22


def _require(p: Principal) -> None:
    access.require(p.is_admin, "only administrators can see the High Availability dashboard")


def _short(text: str, limit: int = NAME_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class Box:
    kind: str  # "server" or "database"
    x: int
    y: int
    status: str  # CSS class: active, inactive, alive, failed
    lines: list[str]
    title: str
    key: str = ""  # the server's name, or the database's role
    id: str = ""

    @property
    def cx(self) -> int:
        return self.x + BOX_W // 2


@dataclass
class Link:
    kind: str  # "connection" or "replication"
    path: str
    status: str
    title: str


@dataclass
class Topology:
    width: int
    height: int
    boxes: list[Box] = field(default_factory=list)
    links: list[Link] = field(default_factory=list)


def _health_class(value: str | None) -> str:
    return "alive" if value == "Alive" else "failed"


def topology(status: dict[str, Any], readonly_view: bool) -> Topology:
    """Where each box and line of the drawing goes: the app servers on top (primary and secondaries on
    the left, read-only servers on the right), the primary database under the first group, each
    replica under its read-only server; a line from each app server to its database, and a
    replication line from the primary database to each replica, each with its status as a class."""
    servers = sorted(status["servers"], key=lambda s: (ROLE_ORDER.get(ServerRole(s["role"]), 3), s["name"].lower()))
    writers = [s for s in servers if s["role"] != ServerRole.READONLY]
    readers = [s for s in servers if s["role"] == ServerRole.READONLY]
    primary_db = status["databases"][0] if status["databases"] else None
    replica_dbs = [d for d in status["databases"][1:] if d["role"] == "replica"]
    # cluster_status lists the replica of each read-only server that answered, in the registry's order
    answered = [s for s in status["servers"] if s["role"] == ServerRole.READONLY and s["status"] == "active"]
    replica_of = ({s["id"]: d for s, d in zip(answered, replica_dbs, strict=True)}
                  if len(answered) == len(replica_dbs) else {})

    step = BOX_W + GAP
    columns = max(len(writers), 1) + len(readers)
    natural = MARGIN * 2 + columns * step - GAP
    left = MARGIN + max(0, MIN_WIDTH - natural) // 2
    topo = Topology(width=max(natural, MIN_WIDTH), height=DB_Y + BOX_H + 40 + 14 * len(readers))
    for i, s in enumerate([*writers, *readers]):
        col = i if s["role"] != ServerRole.READONLY else max(len(writers), 1) + (i - len(writers))
        role = ROLE_LABEL.get(ServerRole(s["role"]), str(s["role"]))
        topo.boxes.append(Box("server", left + col * step, APP_Y, s["status"],
                              [_short(s["name"]), f"{role} · {s['status']}", _short(s["hostname"] or s["url"], 28)],
                              f"{s['name']}{f' ({note})' if (note := role_note(s['name'], s['role'])) else ''}: "
                              f"{s['status']}", key=s["name"], id=s["id"]))
    writer_span = max(len(writers), 1) * step - GAP
    primary_box: Box | None = None
    if primary_db is not None:
        reachable = not readonly_view or status["ha_status"] == "Alive"
        x = left + writer_span // 2 - BOX_W // 2
        primary_box = Box("database", x, DB_Y, "alive" if reachable else "failed",
                          ["Primary database", _short(f"{primary_db['host']}:{primary_db['port']}", 28),
                           f"{primary_db['servers_active']}/{primary_db['servers_configured']} servers active"],
                          f"primary database {primary_db['host']}:{primary_db['port']}", key="primary")
        topo.boxes.append(primary_box)
    by_id = {b.id: b for b in topo.boxes if b.kind == "server"}
    for s in writers:
        if primary_box is not None:
            b = by_id[s["id"]]
            topo.links.append(Link("connection", f"M {b.cx} {APP_Y + BOX_H} L {primary_box.cx} {DB_Y}", s["status"],
                                   f"{s['name']} → primary database: {s['status']}"))
    for n, s in enumerate(readers):
        b = by_id[s["id"]]
        db = replica_of.get(s["id"])
        alive = db is not None and s["status"] == "active"
        where = f"{db['host']}:{db['port']}" if db else "unknown"
        rbox = Box("database", b.x, DB_Y, "alive" if alive else "failed",
                   [_short(f"Replica of {s['name']}"), _short(where, 28), "answering" if alive else "not answering"],
                   f"replica database of {s['name']} ({where})", key="replica", id=s["id"])
        topo.boxes.append(rbox)
        topo.links.append(Link("connection", f"M {b.cx} {APP_Y + BOX_H} L {rbox.cx} {DB_Y}", s["status"],
                               f"{s['name']} → its replica: {s['status']}"))
        if primary_box is not None:
            rep = _health_class(status["replication_status"]) if alive else "failed"
            dip = DB_Y + BOX_H + 24 + 14 * n
            mid = (primary_box.cx + rbox.cx) // 2
            topo.links.append(Link("replication", f"M {primary_box.cx} {DB_Y + BOX_H} Q {mid} {dip + 24} "
                                                  f"{rbox.cx} {DB_Y + BOX_H}", rep,
                                   f"replication primary → replica of {s['name']}: "
                                   f"{'Alive' if rep == 'alive' else 'Failed'}"))
    return topo


def _lag(status: dict[str, Any]) -> str:
    secs, size = status.get("replication_lag_seconds"), status.get("replication_lag_bytes")
    if secs is None and size is None:
        return "—"
    parts = []
    if secs is not None:
        parts.append(f"{secs:.1f} s")
    if size is not None:
        parts.append(f"{size:,} bytes")
    return ", ".join(parts)


def when_epoch(t: float) -> str:
    """A time in seconds since the epoch, as the pages show times."""
    return when(dt.datetime.fromtimestamp(t, dt.UTC))


async def live_context(request: Request, rt: Runtime) -> dict[str, Any]:
    """What the live part shows: the cluster status, its drawing, the event log."""
    agent = getattr(request.app.state, "agent", None)
    status = await cluster_status(rt, live_peers=live_peers(request),
                                  own_alarm=agent.alarm if agent else None,
                                  own_inputs=agent.failover_inputs if agent else ())
    events = await recent_events(rt, EVENTS)
    servers = sorted(status["servers"], key=lambda s: (ROLE_ORDER.get(ServerRole(s["role"]), 3), s["name"].lower()))
    began = emergency.since(request)
    return {"st": status, "servers": servers, "topo": topology(status, rt.readonly), "events": events,
            "lag": _lag(status), "when": when, "when_epoch": when_epoch, "box_w": BOX_W, "box_h": BOX_H, "role_label": ROLE_LABEL,
            "ServerRole": ServerRole, "emergency_since": began,
            "emergency_for": emergency.for_how_long(began, dt.datetime.now(dt.UTC)) if began else ""}


async def _page(request: Request, p: Principal, *, status: int = 200, rename: Form | None = None) -> Response:
    rt = runtime(request)
    ctx = await live_context(request, rt)
    ready = await readiness(rt.settings, engine=rt.engine)
    return render(request, "ha.html", p, status=status, ready=ready, rename=rename or Form(), **ctx)


@router.get("/ha", response_class=HTMLResponse)
async def ha_page(request: Request, p: UiUser) -> Response:
    _require(p)
    return await _page(request, p)


@router.get("/ha/live", response_class=HTMLResponse)
async def ha_live(request: Request) -> Response:
    """The live part alone (a fragment for safehold.js); never a redirect, so that a signed-out or
    failing refresh only marks the part stale."""
    try:
        p = await ui_user(request)
    except LoginRequired:
        return Response("signed out", status_code=401, media_type="text/plain")
    if not p.is_admin:
        return Response("only administrators", status_code=403, media_type="text/plain")
    rt = runtime(request)
    try:
        ctx = await live_context(request, rt)
    except SafeholdError as exc:
        return Response(exc.message, status_code=503, media_type="text/plain")
    html = env.get_template("ha_live.html").render(
        request=request, user=p, csrf=p.csrf_token, can_write=not rt.readonly, server=rt.identity,
        is_admin=True, rename=Form(), **ctx)
    return HTMLResponse(html, headers={"Cache-Control": "no-store"})


def _name_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    if err["type"] == "string_too_short":
        return "enter a name"
    if err["type"] == "string_too_long":
        return "at most 100 characters"
    return str(err["msg"]).removeprefix("Value error, ")


@router.post("/ha/servers/{server_id}/rename", response_class=HTMLResponse)
async def rename_server(request: Request, server_id: str, p: UiUser) -> Response:
    form = await request.form()
    check_csrf(p, form)
    _require(p)
    rt = runtime(request)
    if rt.readonly:
        raise PermissionDenied("this server is read-only: rename servers on the primary")
    name = str(form.get("name", "")).strip()
    values = {"server_id": server_id, "name": name}
    try:
        body = ha_api.ServerRename(name=name)
    except ValidationError as exc:
        return await _page(request, p, status=422, rename=Form(values=values, errors={"name": _name_error(exc)}))
    await server_service.rename_server(rt, p, parse_id(server_id, "server"), body.name)  # an unknown server: the error page (404)
    return Response(status_code=303, headers={"Location": "/ui/ha#servers-table"})
