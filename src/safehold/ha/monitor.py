"""The HA monitor: one cycle compares the cluster's state with the last one and logs each transition
once.  It runs on the schedules-lease holder only (the primary by preference), so two servers never
log the same transition; the last snapshot lives in the database, so a restart or a new lease holder
does not log it again either."""

from __future__ import annotations

import logging
from typing import Any

from safehold.domain import ServerRole
from safehold.ha.patroni import EngineSnapshot, engine_snapshot, engine_transitions
from safehold.ha.policy import Event, Health, Liveness, Snapshot, Thresholds, transitions
from safehold.ha.status import ClusterView, cluster_view
from safehold.runtime import Runtime
from safehold.storage import ha as ha_store

log = logging.getLogger(__name__)
REPLICAS = "read-only replicas"


def snapshot_of(view: ClusterView) -> Snapshot:
    """The parts of the cluster view (``GET /ha/status``) that transitions are computed from.  With an HA
    engine, its replicas are the replicas: their HA and replication status are the engine snapshot's, one per
    member (:mod:`safehold.ha.patroni`), not the view's summary of them."""
    summary = view.engine is None
    ha = {REPLICAS: view.ha_status} if view.ha_status and summary else {}
    rep = {REPLICAS: view.replication_status} if view.replication_status and summary else {}
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
    """One cycle: the servers' and databases' transitions, and the external HA engine's when
    ``ha.patroni_urls`` names one (its snapshot is kept under ``engine`` beside the rest)."""
    view = await cluster_view(rt)
    now = snapshot_of(view)
    async with rt.write() as conn:
        stored = await ha_store.last_snapshot(conn)
        before = from_json(stored)
        events = transitions(before, now)
        saved = to_json(now)
        if view.engine is not None:
            engine_before = EngineSnapshot.from_json((stored or {}).get("engine"))
            limits = Thresholds(rt.settings.ha.lag_threshold_seconds, rt.settings.ha.lag_threshold_bytes)
            engine_now = engine_snapshot(engine_before, view.engine, limits)
            events += engine_transitions(engine_before, engine_now)
            saved["engine"] = engine_now.to_json()
        await ha_store.add_events(conn, rt.identity.id, [(e.kind.value, e.subject, e.message, e.args)
                                                           for e in events])
        await ha_store.save_snapshot(conn, saved)
    for e in events:
        log.warning("HA event %s: %s", e.kind.value, e.message)
    return events
