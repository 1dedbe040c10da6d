"""The HA monitor: one cycle compares the cluster's state with the last one and logs each transition
once.  It runs on the schedules-lease holder only (the primary by preference), so two servers never
log the same transition; the last snapshot lives in the database, so a restart or a new lease holder
does not log it again either."""

from __future__ import annotations

import logging
from typing import Any

from safehold.domain import ServerRole
from safehold.ha.policy import Event, Health, Liveness, Snapshot, transitions
from safehold.ha.status import ClusterView, cluster_view
from safehold.runtime import Runtime
from safehold.storage import ha as ha_store

log = logging.getLogger(__name__)
REPLICAS = "read-only replicas"


def snapshot_of(view: ClusterView) -> Snapshot:
    """The parts of the cluster view (``GET /ha/status``) that transitions are computed from."""
    ha = {REPLICAS: view.ha_status} if view.ha_status else {}
    rep = {REPLICAS: view.replication_status} if view.replication_status else {}
    servers = {s.name: s.status for s in view.servers}
    standbys = frozenset(s.name for s in view.servers if s.role == ServerRole.READONLY)
    # (a primary that was standalone when it last started is still registered as such)
    active = next((s.name for role in (ServerRole.PRIMARY, ServerRole.STANDALONE) for s in view.servers
                   if s.role == role), "")
    return Snapshot(ha, rep, servers, standbys, active)


def to_json(s: Snapshot) -> dict[str, Any]:
    return {"ha": dict(s.ha), "replication": dict(s.replication), "servers": dict(s.servers),
            "standbys": sorted(s.standbys)}


def from_json(d: dict[str, Any] | None) -> Snapshot | None:
    if not d:
        return None
    return Snapshot({k: Health(v) for k, v in d.get("ha", {}).items()},
                    {k: Health(v) for k, v in d.get("replication", {}).items()},
                    {k: Liveness(v) for k, v in d.get("servers", {}).items()},
                    frozenset(d.get("standbys", [])))


async def monitor_once(rt: Runtime) -> list[Event]:
    now = snapshot_of(await cluster_view(rt))
    async with rt.write() as conn:
        before = from_json(await ha_store.last_snapshot(conn))
        events = transitions(before, now)
        await ha_store.add_events(conn, rt.identity.id, [(e.kind.value, e.subject, e.message, e.args)
                                                           for e in events])
        await ha_store.save_snapshot(conn, to_json(now))
    for e in events:
        log.warning("HA event %s: %s", e.kind.value, e.message)
    return events
