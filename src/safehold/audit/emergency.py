"""A read-only server's emergency periods in the cluster's HA event log.

While a read-only server serves users itself (read-only emergency mode) the servers that log HA events — the
primary and the secondaries — are down, and the read-only server cannot write to its replica.  So it audits
the start and the end of each period (:data:`BEGAN`, :data:`ENDED`: system records in its own chain, spooled
like every record it makes), and when its spool reaches the primary database the records stored there for the
first time are also logged as ``EmergencyMode`` events, in the same transaction: each period once, however
often a batch is sent again.  The event's time is when it reached the database; its message says when the
period began and ended.

Every path that stores a read-only server's spool does so through :func:`shipper`: its shipper while a primary
database answers, and its take-over when it is promoted (the records then go into its own database).  A
period that ends *because* the server was promoted is recorded by the promoted server itself, in its own
database: :func:`record` logs its event at once.

(Below the HA layer, so that the runtime's take-over can use it: the event's name is spelt here, and
``ha.policy.EventKind.EMERGENCY_MODE`` is this name.)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from safehold.audit.chain import AuditEvent, ChainedRecord
from safehold.storage import audit as audit_store
from safehold.storage import ha as ha_store
from safehold.storage.db import AsyncEngine

BEGAN = "emergency_mode_began"
ENDED = "emergency_mode_ended"
#: the HA event's kind
EVENT = "EmergencyMode"


def events_of(records: Sequence[ChainedRecord]) -> list[tuple[str, str, str]]:
    """The HA events the emergency records among ``records`` stand for (pure)."""
    return [e for r in records for e in _events(r.event, r.server_id)]


def _events(event: AuditEvent, server_id: str) -> list[tuple[str, str, str]]:
    d = event.detail or {}
    name = str(d.get("server") or server_id)
    if event.action == BEGAN:
        return [(EVENT, name, f"{name} began serving users in read-only emergency mode at "
                              f"{d.get('began', event.at)}: no primary or secondary answered")]
    if event.action == ENDED:
        return [(EVENT, name, f"{name} served users in read-only emergency mode from {d.get('began', '?')} to "
                              f"{d.get('ended', event.at)} ({d.get('seconds', '?')} s)")]
    return []


def shipper(engine: AsyncEngine) -> Callable[[Sequence[ChainedRecord]], Awaitable[None]]:
    """``send`` for the spool's shipper: each batch stored in one transaction, with the events of the emergency
    records stored for the first time."""

    async def send(records: Sequence[ChainedRecord]) -> None:
        async with engine.begin() as conn:
            fresh = await audit_store.insert_shipped(conn, records)
            if fresh and (events := events_of(fresh)):
                await ha_store.add_events(conn, fresh[0].server_id, events)

    return send


async def record(rt: Any, event: AuditEvent) -> None:
    """Audit ``event`` (the start or the end of a period) on ``rt``, a server's runtime: spooled on a read-only
    server (its event follows when shipped); written to its own database by a server that writes, which then
    logs its event too (a period that ended because the server was promoted)."""
    await rt.record_audit(event)
    if rt.spool is None and rt.fence is None and (events := _events(event, rt.identity.id)):
        async with rt.write() as conn:
            await ha_store.add_events(conn, rt.identity.id, events)
