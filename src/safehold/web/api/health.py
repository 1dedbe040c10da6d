"""Health for load balancers: ``/api/v1/health/<check>`` (Patroni's convention) and ``/v1/sys/health``
(Vault's), so that the operator's tooling knows which server takes writes and which serves reads.

No authentication and no secret in a body; every endpoint answers GET, HEAD (the same status, no body) and
OPTIONS (204 with ``Allow``); a read-only or fenced server answers them itself, never redirects them (see
``web/app.py``).  What each endpoint answers is decided in ``ha/health.py``; here the server's state is
gathered:

1. from memory: role, fence, write lease, where the HA agent sends users and how old the replica's data may
   be (a read-only server's workers share one view: ``ha/shared_view.py``);
2. from the database, at most once a second per worker process (load balancers poll every second or two;
   requests meanwhile share the answer): libpq's ping, as ``pg_isready`` asks, so that a database that
   refuses connections (shutting down, starting up) is not counted as up although a pooled connection still
   answers; then, on one pooled connection (no new connection), its replica view and whether it refuses
   writes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response

from safehold import __version__
from safehold.errors import DatabaseError
from safehold.ha import health
from safehold.ha.cycle import data_age
from safehold.ha.health import Database, ServerState, Verdict
from safehold.runtime import Runtime
from safehold.runtime.writelease import clock
from safehold.storage import cluster as cluster_store
from safehold.storage import replication
from safehold.storage.db import Reachable, app_target, ping_conninfo, ping_server
from safehold.web.errors import error_response
from safehold.web.schemas import CheckName, ErrorBody, HealthCheck, VaultHealth

router = APIRouter(prefix="/health", tags=["health"])
#: Vault's path, outside ``/api/v1``
vault_router = APIRouter(tags=["health"])

ALLOW = "GET, HEAD, OPTIONS"
NO_STORE = {"Cache-Control": "no-store"}
#: how long a worker reuses what the database said (seconds)
FRESH_FOR = 1.0
_DOWN = {Reachable.REFUSING: Database.REFUSING, Reachable.SILENT: Database.UNAVAILABLE}
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatabaseFacts:
    database: Database
    replica: replication.ReplicaView | None = None
    read_only: bool = False


class DatabaseProbe:
    """What the server's database says, asked at most once per :data:`FRESH_FOR` seconds (one worker's)."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._facts: DatabaseFacts | None = None
        self._at = 0.0
        self._conninfo: str | None = None
        self._said = False

    async def facts(self, rt: Runtime) -> DatabaseFacts:
        async with self._lock:  # the requests that arrive meanwhile take this probe's answer
            if self._facts is None or time.monotonic() - self._at >= FRESH_FOR:
                self._facts = await self._ask(rt)
                self._at = time.monotonic()
            return self._facts

    async def _ask(self, rt: Runtime) -> DatabaseFacts:
        if self._conninfo is None:
            self._conninfo = ping_conninfo(app_target(rt.settings), timeout=rt.settings.database.connect_timeout)
        reached = await asyncio.to_thread(ping_server, self._conninfo)
        if reached in _DOWN:
            return DatabaseFacts(_DOWN[reached])
        if reached is Reachable.UNASKED and not self._said:  # the pooled query alone decides
            self._said = True
            log.warning("the health checks cannot ping the database (libpq refused the parameters): only a "
                        "pooled connection's answer is checked")
        try:
            async with rt.read() as conn:
                view = await replication.replica_view(conn)
                read_only = await cluster_store.database_read_only(conn)
        except DatabaseError:
            return DatabaseFacts(Database.UNAVAILABLE)
        return DatabaseFacts(Database.OK, view, read_only)


def _probe(request: Request) -> DatabaseProbe:
    probe: DatabaseProbe | None = getattr(request.app.state, "health_probe", None)
    if probe is None:
        probe = request.app.state.health_probe = DatabaseProbe()
    return probe


async def server_state(request: Request, *, ask_database: bool = True) -> ServerState:
    """This server now, as ``ha/health.py`` needs it."""
    rt: Runtime = request.app.state.runtime
    agent: Any = getattr(request.app.state, "agent", None)
    facts = await _probe(request).facts(rt) if ask_database else DatabaseFacts(Database.UNCHECKED)
    view = facts.replica
    ages = [a for a in (agent.data_age_seconds if agent is not None and rt.readonly else None,
                        data_age(view, dt.datetime.now(dt.UTC)) if view is not None else None) if a is not None]
    return ServerState(
        role=rt.identity.role, database=facts.database, fenced=rt.fence is not None,
        in_recovery=view is not None and view.in_recovery, database_read_only=facts.read_only,
        lease_valid=rt.lease is None or rt.lease.valid(clock()),
        redirecting=agent is not None and agent.redirect is not None,
        streaming=view is not None and view.streaming, data_age=min(ages) if ages else None)


def _answer(status: int, body: dict[str, Any] | None) -> Response:
    """The response; HEAD gets the same status and headers, and the server sends no body with it."""
    if body is None or status in (204, 304):
        return Response(status_code=status, headers=NO_STORE)
    return JSONResponse(body, status_code=status, headers=NO_STORE)


def allowed() -> Response:
    """The answer to OPTIONS on an endpoint that takes GET and HEAD (and OPTIONS)."""
    return Response(status_code=204, headers={"Allow": ALLOW, **NO_STORE})


def _check(request: Request, name: CheckName, verdict: Verdict, state: ServerState,
           max_lag: float | None = None) -> Response:
    rt: Runtime = request.app.state.runtime
    body = HealthCheck(check=name, ok=verdict.ok, reason=verdict.reason, role=state.role.value,
                       mode=rt.mode.value, redirecting=state.redirecting, database=state.database.value,
                       data_age_seconds=None if state.data_age is None else round(state.data_age, 3),
                       max_lag_seconds=max_lag)
    return _answer(verdict.status, body.model_dump(mode="json"))


CHECK_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": HealthCheck, "description": "yes"}, 503: {"model": HealthCheck, "description": "no: see reason"}}


@router.get("/live", response_model=HealthCheck)
@router.head("/live", include_in_schema=False)
async def live(request: Request) -> Response:
    """200 while the process serves HTTP (the database is not asked)."""
    state = await server_state(request, ask_database=False)
    return _check(request, "live", health.live(state), state)


@router.get("/ready", response_model=HealthCheck, responses=CHECK_RESPONSES)
@router.head("/ready", include_in_schema=False)
async def ready(request: Request) -> Response:
    """200 when the server can do its role's job now: its database answers (and accepts connections); on a
    read-only server its replica also streams from the primary database.  503 when fenced."""
    state = await server_state(request)
    return _check(request, "ready", health.ready(state), state)


@router.get("/writable", response_model=HealthCheck, responses=CHECK_RESPONSES)
@router.head("/writable", include_in_schema=False)
async def writable(request: Request) -> Response:
    """200 only on a server that accepts writes now: a primary, secondary or standalone server, not fenced,
    its database up and read-write, its write lease valid."""
    state = await server_state(request)
    return _check(request, "writable", health.writable(state), state)


@router.get("/primary", response_model=HealthCheck, responses=CHECK_RESPONSES)
@router.head("/primary", include_in_schema=False)
async def primary(request: Request) -> Response:
    """200 only on the acting primary (or a standalone server), writable now."""
    state = await server_state(request)
    return _check(request, "primary", health.primary(state), state)


@router.get("/readonly", response_model=HealthCheck, responses=CHECK_RESPONSES)
@router.head("/readonly", include_in_schema=False)
async def readonly(request: Request) -> Response:
    """200 only on a read-only server that serves users itself (read-only emergency mode); 503 on one that
    sends them to the primary or a secondary."""
    state = await server_state(request)
    return _check(request, "readonly", health.readonly(state), state)


@router.get("/replica", response_model=HealthCheck, responses=CHECK_RESPONSES)
@router.head("/replica", include_in_schema=False)
async def replica(request: Request, lag: float | None = Query(
        default=None, ge=0, le=365 * 86400,
        description="the most its data may lag, in seconds (default: ha.lag_threshold_seconds)")) -> Response:
    """200 on a server whose database is a replica streaming from the primary, with data at most ``lag``
    seconds old."""
    rt: Runtime = request.app.state.runtime
    limit = rt.settings.ha.lag_threshold_seconds if lag is None else lag
    state = await server_state(request)
    return _check(request, "replica", health.replica(state, limit), state, limit)


@router.options("/{check}", include_in_schema=False)
async def check_options(check: str) -> Response:
    if check not in (*health.CHECKS, "replica"):
        return error_response(404, "not_found", "no such health check",
                              hint=f"one of: {', '.join((*health.CHECKS, 'replica'))}")
    return allowed()


# --- Vault's convention -------------------------------------------------------------------------------

VAULT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": VaultHealth, "description": "active: accepts writes (activecode)"},
    429: {"model": VaultHealth, "description": "standby: a read-only server that sends users on, or a writer "
                                                "that cannot write now (standbycode)"},
    473: {"model": VaultHealth, "description": "performance standby: a read-only server serving users itself "
                                                "(performancestandbycode)"},
    503: {"model": VaultHealth, "description": "sealed: fenced, or the database does not answer (sealedcode)"},
    400: {"model": ErrorBody, "description": "a query parameter that is not a boolean or an HTTP status code"}}


@vault_router.get("/v1/sys/health", response_model=VaultHealth, responses=VAULT_RESPONSES)
@vault_router.head("/v1/sys/health", include_in_schema=False)
async def vault_health(request: Request) -> Response:
    """Vault's ``/sys/health``, for tooling that speaks it: 200 active (writable), 429 standby, 473
    performance standby (read-only emergency mode), 503 sealed (fenced, or the database is unreachable).
    ``standbyok``, ``perfstandbyok`` and the ``…code`` parameters change the codes as Vault's do."""
    query = {k: request.query_params.getlist(k)[0] for k in request.query_params}
    try:
        codes = health.vault_codes(query)
    except health.BadParameter as exc:
        return error_response(400, "bad_request", exc.message, field=exc.name, headers=NO_STORE)
    rt: Runtime = request.app.state.runtime
    answer = health.vault_answer(await server_state(request), codes)
    body = VaultHealth(initialized=True, sealed=answer.sealed, standby=answer.standby,
                       performance_standby=answer.performance_standby, server_time_utc=int(time.time()),
                       version=__version__, cluster_id=rt.cluster_id)
    return _answer(answer.status, body.model_dump(mode="json"))


@vault_router.options("/v1/sys/health", include_in_schema=False)
async def vault_health_options() -> Response:
    return allowed()
