"""From the HA event log to the alert channels: each cycle, the schedules-lease holder hands the
events logged since the last cycle to its dispatcher, exactly once across the cluster.

The cursor (the last event id handed out) is kept in the database and locked while a relay reads
after it, so a new lease holder continues where the old one stopped and two holders never hand
out the same event.  The very first run starts at the newest event: history is not replayed.
Events are published after the cursor commits: a crash in between loses them (at most once),
never sends them twice.  A read-only server cannot write the cursor; it calls
``dispatcher.publish`` directly for what it sees itself.
"""

from __future__ import annotations

import logging
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from safehold.alerts.events import AlertEvent
from safehold.storage import alerts as alerts_store
from safehold.storage.db import AsyncConnection

log = logging.getLogger(__name__)
BATCH = 500


class RelayRuntime(Protocol):
    """What the relay needs of :class:`safehold.runtime.Runtime`."""

    cluster_id: str

    def write(self) -> AbstractAsyncContextManager[AsyncConnection]: ...


class Publisher(Protocol):
    """:class:`safehold.alerts.dispatch.Dispatcher`, or anything that takes events the same way."""

    def publish(self, event: AlertEvent) -> None: ...


async def relay_once(rt: RelayRuntime, dispatcher: Publisher, *, batch: int = BATCH) -> list[AlertEvent]:
    """Publish the events logged after the cursor (oldest first, at most ``batch``) and advance
    it; returns them.  Raises what ``rt.write()`` raises (DatabaseError, ReadOnlyMode): the caller's
    next cycle tries again."""
    async with rt.write() as conn:
        cursor, created = await alerts_store.claim_cursor(conn)
        if created:
            log.info("alerts: relaying HA events after id %d (earlier ones are not replayed)", cursor)
            return []
        rows = await alerts_store.events_after(conn, cursor, batch)
        if not rows:
            return []
        names = await alerts_store.server_names(conn)
        await alerts_store.set_cursor(conn, int(rows[-1].id))
    events = [AlertEvent.from_row(r, cluster_id=rt.cluster_id, server_names=names) for r in rows]
    for e in events:
        dispatcher.publish(e)
    return events
