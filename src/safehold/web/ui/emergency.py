"""Since when this read-only server has served users itself (read-only emergency mode), from its memory.

The outage that puts a read-only server in emergency mode is not in the HA event log: the events are
logged in the cluster's database by the primary or a secondary (the schedules-lease holder), which are
the servers that are down, and a read-only server cannot write to its replica.  What the read-only
server does know is when it began to serve users itself: its HA agent decides, every check interval,
whether to redirect them to an active primary or secondary or to serve them (emergency mode).  A
watcher, started with the pages (:func:`watch`, the lifespan of the ``/ui`` router), notes when that
decision turns to emergency mode and forgets it when it turns back; the HA dashboard and the mode banner
show it.  It lives in the worker's memory: a restart starts it again, and each worker of a server
watches its own agent (they decide within one check interval of each other).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request

from safehold.domain import ServerRole

log = logging.getLogger(__name__)

#: How often the watcher looks at the agent's decision (it changes at most once per check interval).
POLL_SECONDS = 0.5


@dataclass
class EmergencyClock:
    """When the current period of emergency mode began (None: not in emergency mode)."""

    since: dt.datetime | None = None

    def observe(self, serving: bool, now: dt.datetime) -> None:
        if not serving:
            self.since = None
        elif self.since is None:
            self.since = now


def serving_itself(rt: Any, agent: Any) -> bool:
    """Whether the agent's last decision is to serve users here (emergency mode): a read-only server, not
    fenced, that asked its peers (until its first peer check it has none: no decision yet), found none
    healthy and redirects nowhere."""
    if rt is None or agent is None or rt.identity.role != ServerRole.READONLY or rt.fence is not None:
        return False
    peers = list(agent.peers)
    return agent.redirect is None and bool(peers) and not any(p.healthy for p in peers)


def for_how_long(since: dt.datetime, now: dt.datetime) -> str:
    """A duration as the pages say it: "40 s", "12 min", "3 h 05 min", "2 d 4 h"."""
    seconds = max(0, int((now - since).total_seconds()))
    if seconds < 60:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def since(request: Request) -> dt.datetime | None:
    """When this worker saw its server begin to serve users in emergency mode (None: it does not)."""
    clock: EmergencyClock | None = getattr(request.app.state, "emergency", None)
    return clock.since if clock is not None else None


async def _watch(app: FastAPI, clock: EmergencyClock) -> None:
    while True:
        state = app.state
        rt, agent = getattr(state, "runtime", None), getattr(state, "agent", None)
        began, now = clock.since, dt.datetime.now(dt.UTC)
        clock.observe(serving_itself(rt, agent), now)
        if began != clock.since and rt is not None and agent is not None and agent.first_worker:
            await _audit_period(rt, began, clock.since, now)  # once per server: its first worker
        await asyncio.sleep(POLL_SECONDS)


async def _audit_period(rt: Any, began: dt.datetime | None, since: dt.datetime | None, now: dt.datetime) -> None:
    """The start or the end of an emergency period, in this server's audit chain: spooled, and logged as an HA
    event once shipped, or at once by a server promoted meanwhile (safehold.audit.emergency)."""
    from safehold.audit.emergency import BEGAN, ENDED, record
    from safehold.errors import SafeholdError
    from safehold.runtime import system_event

    detail: dict[str, object] = {"server": rt.identity.name}
    if since is not None:
        action, detail["began"] = BEGAN, since.isoformat(timespec="seconds")
    elif began is not None:
        action = ENDED
        detail.update(began=began.isoformat(timespec="seconds"), ended=now.isoformat(timespec="seconds"),
                      seconds=int((now - began).total_seconds()))
    else:
        return
    try:
        await record(rt, system_event(action, detail=detail))
    except SafeholdError as exc:  # the spool cannot be written: its own alarm says so
        log.warning("the %s record could not be written: %s", action, exc.message)


@contextlib.asynccontextmanager
async def watch(app: FastAPI) -> AsyncIterator[None]:
    """The pages' lifespan (entered after the app's own, so its runtime and agent are set): the watcher."""
    clock = EmergencyClock()
    app.state.emergency = clock
    task = asyncio.get_running_loop().create_task(_watch(app, clock), name="emergency-clock")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
