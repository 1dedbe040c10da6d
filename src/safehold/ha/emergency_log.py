"""A read-only server's emergency periods in the cluster's HA event log.

While a read-only server serves users itself (read-only emergency mode) the servers that log HA events — the
primary and the secondaries — are down, and the read-only server cannot write to its replica.  So it audits
the start and the end of each period (:data:`BEGAN`, :data:`ENDED`: system records in its own chain, spooled
like every record it makes), and when its spool reaches the primary database the records stored there for the
first time are also logged as ``EmergencyMode`` events, in the same transaction: each period once, however
often a batch is sent again.  The event's time is when it reached the database; its message says when the
period began and ended.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from safehold.audit.chain import ChainedRecord
from safehold.ha.policy import EventKind
from safehold.storage import audit as audit_store
from safehold.storage import ha as ha_store
from safehold.storage.db import AsyncEngine

BEGAN = "emergency_mode_began"
ENDED = "emergency_mode_ended"


def events_of(records: Sequence[ChainedRecord]) -> list[tuple[str, str, str]]:
    """The HA events the emergency records among ``records`` stand for (pure)."""
    events = []
    for r in records:
        d = r.event.detail or {}
        name = str(d.get("server") or r.server_id)
        if r.event.action == BEGAN:
            events.append((EventKind.EMERGENCY_MODE.value, name,
                           f"{name} began serving users in read-only emergency mode at {d.get('began', r.event.at)}: "
                           "no primary or secondary answered"))
        elif r.event.action == ENDED:
            events.append((EventKind.EMERGENCY_MODE.value, name,
                           f"{name} served users in read-only emergency mode from {d.get('began', '?')} to "
                           f"{d.get('ended', r.event.at)} ({d.get('seconds', '?')} s)"))
    return events


def shipper(engine: AsyncEngine) -> Callable[[Sequence[ChainedRecord]], Awaitable[None]]:
    """``send`` for the spool's shipper: each batch stored in one transaction, with the events of the emergency
    records stored for the first time."""

    async def send(records: Sequence[ChainedRecord]) -> None:
        async with engine.begin() as conn:
            fresh = await audit_store.insert_shipped(conn, records)
            if fresh and (events := events_of(fresh)):
                await ha_store.add_events(conn, fresh[0].server_id, events)

    return send
