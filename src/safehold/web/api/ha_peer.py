"""/ha/peer: requests between the servers of one cluster, signed with the peer key (crypto.peerauth).

Not for users: the operator's commands (switchover, rejoin) sign them with the key file on their
host, and only a holder of the cluster's master key can.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from safehold.crypto.peerauth import HEADER, PeerVerifier
from safehold.domain import ServerRole
from safehold.errors import AuthenticationFailed, Conflict, InvalidInput
from safehold.ha.peers import PromoteAnswer
from safehold.ha.policy import EventKind
from safehold.ha.rejoin import acting_primary_cluster, attach_replica, attach_secondary
from safehold.runtime import Runtime, public_url
from safehold.services.servers import register_server
from safehold.web.api.common import errors
from safehold.web.deps import RuntimeDep

router = APIRouter(prefix="/ha/peer", tags=["high availability"], include_in_schema=False)


async def peer_request(request: Request) -> None:
    rt = request.app.state.runtime
    verifier: PeerVerifier | None = getattr(request.app.state, "peer_verifier", None)
    if verifier is None:
        verifier = request.app.state.peer_verifier = PeerVerifier(rt.peer_key)
    body = await request.body()
    if not rt.peer_key or not verifier.verify(request.headers.get(HEADER), request.method, request.url.path, body):
        raise AuthenticationFailed("this request must be signed by a server of this cluster (its key file)")


Peer = Annotated[None, Depends(peer_request)]


class PromoteRequest(BaseModel):
    reason: str = Field(default="ManualSwitch", pattern="^(ManualSwitch|Failover)$")
    wait_lsn: str | None = Field(default=None, pattern=r"^[0-9A-F]{1,8}/[0-9A-F]{1,8}$", max_length=17)
    note: str = Field(default="", max_length=300)


@router.post("/promote", responses=errors(401, 409, 503))
async def promote(body: PromoteRequest, request: Request, _: Peer, rt: RuntimeDep) -> dict[str, Any]:
    """Promote this read-only server (a switchover): wait until its replica replayed ``wait_lsn``, promote
    it, raise the generation, take over as the primary."""
    agent = request.app.state.agent
    if rt.identity.role != ServerRole.READONLY or rt.fence is not None:
        raise Conflict(f"this server is a {rt.identity.role} server; only a read-only server can be promoted")
    generation = await agent.promote_self(reason=EventKind(body.reason), wait_lsn=body.wait_lsn, note=body.note)
    return PromoteAnswer(generation, rt.identity.id, rt.identity.name, public_url(rt.settings)).to_json()


class ReplicaRequest(BaseModel):
    server_id: str = Field(pattern="^[0-9a-f-]{36}$")
    server_name: str = Field(min_length=1, max_length=100)
    host: str = Field(min_length=1, max_length=255)
    url: str = Field(min_length=1, max_length=500)
    port: int = Field(ge=1, le=65535)


async def _register(rt: Runtime, body: ReplicaRequest, role: ServerRole) -> None:
    await register_server(rt, server_id=body.server_id, name=body.server_name, role=role, host=body.host,
                          url=body.url, port=body.port)


@router.post("/replicas", responses=errors(401, 409, 422, 503))
async def replicas(body: ReplicaRequest, _: Peer, rt: RuntimeDep) -> dict[str, Any]:
    """Let a server (re)join as a read-only replica of this acting primary: its own replication role and
    slot, the hba lines for its host, its registry entry.  Returns the replication credentials."""
    row = await acting_primary_cluster(rt)
    if body.server_id == rt.identity.id:
        raise InvalidInput("a server cannot be its own replica", field="server_id")
    grant = await asyncio.to_thread(attach_replica, rt.settings, cluster_id=row.cluster_id, key_check=row.key_check,
                                    generation=row.generation, server_id=body.server_id, host=body.host)
    await _register(rt, body, ServerRole.READONLY)
    return dataclasses.asdict(grant)


class SecondaryRequest(ReplicaRequest):
    db_user: str = Field(pattern="^[a-z_][a-z0-9_]{0,62}$")


@router.post("/secondaries", responses=errors(401, 409, 422, 503))
async def secondaries(body: SecondaryRequest, _: Peer, rt: RuntimeDep) -> dict[str, Any]:
    """Let a secondary of this cluster (back) in after a failover: the hba lines for its existing login."""
    row = await acting_primary_cluster(rt)
    grant = await asyncio.to_thread(attach_secondary, rt.settings, cluster_id=row.cluster_id, key_check=row.key_check,
                                    generation=row.generation, host=body.host, db_user=body.db_user)
    await _register(rt, body, ServerRole.SECONDARY)
    return dataclasses.asdict(grant)
