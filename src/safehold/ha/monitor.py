"""The HA monitor: one cycle compares the cluster's state with the last one and logs each transition
once.  It runs on the schedules-lease holder only (the primary by preference), so two servers never
log the same transition; the last snapshot lives in the database, so a restart or a new lease holder
does not log it again either.

A new state is logged only once it held for ``ha.status_confirm_checks`` consecutive cycles
(:func:`safehold.ha.policy.confirm`): the snapshot kept in the database is the *confirmed* one, with the
states still being confirmed beside it.  The cycle also notes when each read-only server last answered
(its registry row's heartbeat): a read-only server cannot write its own row, so whoever watches it does."""

from __future__ import annotations

import logging
from typing import Any

from safehold.domain import ServerRole
from safehold.ha.patroni import EngineSnapshot, engine_snapshot, engine_transitions
from safehold.ha.policy import (
    CATEGORIES,
    Confirmed,
    Event,
    Health,
    Liveness,
    Snapshot,
    Streak,
    Thresholds,
    confirm,
    transitions,
)
from safehold.ha.status import REPLICAS, ClusterView, cluster_view
from safehold.runtime import Runtime
from safehold.storage import ha as ha_store
from safehold.storage import servers as server_store

log = logging.getLogger(__name__)


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
    inputs = {f"{s.name}: {i.label}": Health.ALIVE if i.reachable else Health.FAILED
              for s in view.servers for i in s.failover_inputs if i.reachable is not None}
    return Snapshot(ha, rep, servers, standbys, active, inputs)


def to_json(c: Confirmed) -> dict[str, Any]:
    """The confirmed snapshot as the database keeps it (the keys of earlier versions, ``streaks`` added)."""
    s = c.snapshot
    return {"ha": dict(s.ha), "replication": dict(s.replication), "servers": dict(s.servers),
            "standbys": sorted(s.standbys), "active": s.active, "inputs": dict(s.inputs),
            "streaks": [{"category": cat, "subject": subject, "state": st.state, "checks": st.checks}
                        for (cat, subject), st in sorted(c.streaks.items())]}


def from_json(d: dict[str, Any] | None) -> Confirmed | None:
    """What :func:`to_json` stored (a snapshot stored before streaks were kept has none)."""
    if not d:
        return None
    snapshot = Snapshot({k: Health(v) for k, v in d.get("ha", {}).items()},
                        {k: Health(v) for k, v in d.get("replication", {}).items()},
                        {k: Liveness(v) for k, v in d.get("servers", {}).items()},
                        frozenset(d.get("standbys", [])), str(d.get("active", "")),
                        {k: Health(v) for k, v in d.get("inputs", {}).items()})
    streaks: dict[tuple[str, str], Streak] = {}
    for x in d.get("streaks", []):
        if isinstance(x, dict) and x.get("category") in CATEGORIES and isinstance(x.get("checks"), int):
            streaks[(str(x["category"]), str(x.get("subject")))] = Streak(str(x.get("state")), x["checks"])
    return Confirmed(snapshot, streaks)


async def monitor_once(rt: Runtime) -> list[Event]:
    """One cycle: the servers' and databases' transitions, and the external HA engine's when
    ``ha.patroni_urls`` names one (its snapshot is kept under ``engine`` beside the rest)."""
    view = await cluster_view(rt)
    probe = snapshot_of(view)
    answered = [s.id for s in view.servers if s.role == ServerRole.READONLY and s.active]
    async with rt.write() as conn:
        stored = await ha_store.last_snapshot(conn)
        before = from_json(stored)
        now = confirm(before, probe, rt.settings.ha.status_confirm_checks)
        events = transitions(before.snapshot if before is not None else None, now.snapshot)
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
        for server_id in answered:  # it answered this cycle's /ha/local: its "last seen"
            await server_store.heartbeat(conn, server_id)
    for e in events:
        log.warning("HA event %s: %s", e.kind.value, e.message)
    return events
