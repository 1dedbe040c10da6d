"""/ha: the cluster's high-availability view."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.security import HTTPAuthorizationCredentials

from safehold.ha.status import cluster_view, events_page, local_report, wal_now
from safehold.ids import parse_id
from safehold.services import access, auth
from safehold.services.access import Principal
from safehold.services.servers import rename_server
from safehold.web.agent import live_peers as _live_peers
from safehold.web.api.common import AUTH_ERRORS, Limit, Offset, errors
from safehold.web.api.health import allowed
from safehold.web.deps import RuntimeDep, bearer, client_ip, current_principal
from safehold.web.schemas import In, Text100Required

router = APIRouter(prefix="/ha", tags=["high availability"])


async def ha_principal(request: Request, rt: RuntimeDep,
                       creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Principal:
    """The caller of an HA endpoint.  A read-only server answers these itself even while it sends users to the
    primary, so a bearer token the primary issued (an API token or a session, as it stands in the replica)
    is taken here too; elsewhere on a read-only server only its own sessions are."""
    if creds is not None and rt.readonly:
        return await auth.authenticate(rt, creds.credentials, client_ip(request), replica_sessions=True)
    return await current_principal(request, rt, creds)


HaUser = Annotated[Principal, Depends(ha_principal)]


class ServerRename(In):
    name: Text100Required


@router.get("/status", responses=AUTH_ERRORS)
async def status(request: Request, p: HaUser, rt: RuntimeDep) -> dict[str, Any]:
    """Servers (active/inactive), databases, HA status and replication status with lag, and the
    read-only servers' audit backlog — as this server sees them (administrators)."""
    access.require(p.is_admin, "only administrators can see the HA status")
    agent = getattr(request.app.state, "agent", None)
    view = await cluster_view(rt, live_peers=_live_peers(request), own_alarm=agent.alarm if agent else None,
                             own_inputs=agent.failover_inputs if agent else ())
    return view.to_json()


@router.get("/events", responses=AUTH_ERRORS)
async def events(p: HaUser, rt: RuntimeDep, limit: Limit = 100, offset: Offset = 0) -> dict[str, Any]:
    """The newest HA transitions first (HA/replication Alive/Failed, server active/inactive,
    StandbyOffline), each logged once by the schedules-lease holder; a page as ``/audit`` answers it:
    ``{items, total, limit, offset}``."""
    access.require(p.is_admin or p.role == "auditor", "only administrators and auditors can see HA events")
    items, total = await events_page(rt, limit, offset)
    return {"items": [e.to_json() for e in items], "total": total, "limit": limit, "offset": offset}


@router.get("/local")
@router.head("/local", include_in_schema=False)
async def local(request: Request, rt: RuntimeDep) -> dict[str, Any]:
    """What this server says about itself to its peers: role, database address, audit backlog.
    No authentication; it holds no secret."""
    agent = getattr(request.app.state, "agent", None)
    wal = await wal_now(rt, min(1.0, rt.settings.ha.peer_timeout / 2))
    # asked last: an answer that may confirm a writer's lease is noted as late as it can be
    promoting = agent.promoting() if agent else False
    return local_report(rt, agent.data_age_seconds if agent else None, agent.alarm if agent else None,
                        wal, promoting=promoting, inputs=agent.failover_inputs if agent else ()).to_json()


@router.options("/local", include_in_schema=False)
async def local_options() -> Response:
    return allowed()


@router.patch("/servers/{server_id}", status_code=200, responses=errors(401, 403, 404, 422, 503))
async def rename(server_id: str, body: ServerRename, p: HaUser, rt: RuntimeDep) -> dict[str, str]:
    """Give a server another display name."""
    renamed = await rename_server(rt, p, parse_id(server_id, "server"), body.name)
    return {"id": renamed.id, "name": renamed.name}
