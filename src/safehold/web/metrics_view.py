"""``GET /metrics``: Prometheus's text format, every metric of docs/METRICS.md.

Counters are counted where things happen, in whichever worker process; the gauges that describe the server
(its connection pool, identity and HA state) are set here, by the worker that answers, just before it
answers (``safehold.metrics`` says why that is right whichever worker answers, and after a role change):

1. from memory: role, fence, generation (the runtime), where users are sent, how old a read-only server's data
   may be and the inputs of automatic failover (the HA agent; a read-only server's workers share its view);
2. the audit spool's backlog, as ``/api/v1/ha/local`` reports it (a read-only or fenced server's spool);
3. the replication lag, from this server's database on one pooled connection, as ``ha status`` reads it (a
   read-only server: its replica's; a writer: its standbys', the furthest behind), given at most
   :data:`LAG_WITHIN` seconds: a database that does not answer leaves the lag out, never the scrape.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from safehold import __version__
from safehold.audit.spool import AuditSpool
from safehold.domain import ServerRole
from safehold.errors import SafeholdError
from safehold.metrics import HaState, InputReport
from safehold.runtime import Runtime, engine_managed
from safehold.storage import replication

router = APIRouter()

#: how long a scrape waits for the replication lag (seconds)
LAG_WITHIN = 1.0


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    agent: Any = getattr(request.app.state, "agent", None)
    pool = rt.engine.sync_engine.pool
    for gauge, attr in ((rt.metrics.pool_size, "size"), (rt.metrics.pool_checked_out, "checkedout"),
                        (rt.metrics.pool_overflow, "overflow")):
        fn = getattr(pool, attr, None)
        if callable(fn):
            gauge.set(fn())
    rt.metrics.show_identity(rt.identity.id, rt.identity.name, rt.identity.role.value, __version__)
    rt.metrics.show_ha(await ha_state(rt, agent))
    return Response(generate_latest(rt.metrics.collected()), media_type=CONTENT_TYPE_LATEST)


async def ha_state(rt: Runtime, agent: Any) -> HaState:
    """This server's HA state now, as the gauges show it."""
    role, fence, spool = rt.identity.role, rt.fence, rt.spool
    readonly = role == ServerRole.READONLY and fence is None
    return HaState(
        role=role, fenced=fence is not None, generation=rt.generation,
        redirecting=agent is not None and agent.redirect is not None,
        lag_bytes=await _lag_bytes(rt),
        data_age_seconds=agent.data_age_seconds if agent is not None and readonly else None,
        spool_backlog=await _backlog(spool),
        inputs=failover_inputs(agent),
    )


def failover_inputs(agent: Any) -> tuple[InputReport, ...]:
    """The agent's gateway and witnesses of automatic failover (``failover_inputs``: each with ``kind``,
    ``target`` and ``reachable``), none while no watch runs; an entry of another shape is left out."""
    reports = []
    for i in getattr(agent, "failover_inputs", None) or ():
        kind, target, reachable = getattr(i, "kind", None), getattr(i, "target", None), getattr(i, "reachable", None)
        if isinstance(kind, str) and isinstance(target, str) and reachable in (True, False, None):
            reports.append(InputReport(str(kind), target, reachable))
    return tuple(reports)


async def _lag_bytes(rt: Runtime) -> int | None:
    """WAL bytes not yet replayed: by a read-only server's replica (received, not replayed: ``ha status``'s
    lag of that server), or by the furthest behind standby of a writer's database.  None when there is none,
    the database does not say (a fenced server's, an HA engine's) or does not answer within LAG_WITHIN."""
    if rt.fence is not None or (engine_managed(rt.settings) and rt.identity.role != ServerRole.READONLY):
        return None
    try:
        async with asyncio.timeout(LAG_WITHIN), rt.read() as conn:
            if rt.identity.role == ServerRole.READONLY:
                view = await replication.replica_view(conn)
                return view.replay_backlog_bytes if view.in_recovery else None
            lags = [s.lag_bytes for s in (await replication.primary_view(conn)).standbys if s.lag_bytes is not None]
    except (SafeholdError, TimeoutError):  # a scrape never fails for its lag
        return None
    return max(lags, default=None)


async def _backlog(spool: AuditSpool | None) -> int | None:
    """Records in the spool not yet shipped (0: no spool; None: it cannot be read now, e.g. being closed by
    a promotion)."""
    if spool is None:
        return 0
    try:
        return (await asyncio.to_thread(spool.backlog)).pending
    except (SafeholdError, OSError, ValueError):
        return None
