"""The schedules lease: scheduled jobs (the database backup, retention, …) run on exactly one app
server of the cluster at a time, the primary by preference.

The lease is a session-level PostgreSQL advisory lock taken on a connection of its own.  Why an
advisory lock rather than a lease row with compare-and-set and an expiry:

- it dies with its session: a holder that is killed (``kill -9``, a crash, a reboot) loses it
  the moment PostgreSQL sees the connection close, with no expiry to wait out and no clock to
  trust; a holder whose host vanishes loses it when the server-side TCP keepalives (set short on
  this connection) give up on it;
- PostgreSQL guarantees mutual exclusion by itself, and it needs no table (no migration).

What the lock cannot say — who should hold it — is decided by :func:`decide`, a pure function
of what one cycle observed (:class:`LeaseView`).  The primary takes a free lease at once; a
secondary takes it only when it is free and the primary has not heartbeat for
``primary_grace`` seconds (or, when no primary heartbeat is known, when the lease has stayed
free for ``free_grace`` seconds), and hands it back as soon as the primary is seen alive again.

:class:`ScheduleLease` runs that cycle; :class:`ScheduledJobs` runs async callables every
interval while the lease is held (the HA agent runs both on every app server).  On a database that an HA
engine runs, the lock lives on the engine's primary and dies with it: after the engine's failover the
lease is free again on the new primary, taken by the next cycle.  A connection pooler in front of the
database (PgBouncer) must pool by session for this connection, or the lock is not the session's.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

from safehold.domain import ServerRole
from safehold.storage import locks
from safehold.storage.db import DB_ERRORS, AsyncConnection, AsyncEngine, DbTarget, database_time

log = logging.getLogger(__name__)

#: The advisory lock's two int4 keys: Safehold's namespace ("SHLD") and the lease.
NAMESPACE = 0x53484C44
SCHEDULES = 1
APPLICATION_PREFIX = "safehold-lease "
#: Roles that take a free lease at once (a standalone server is its cluster's primary).
PREFERRED = (ServerRole.PRIMARY, ServerRole.STANDALONE)
_T = TypeVar("_T")


class LeaseAction(StrEnum):
    ACQUIRE = "acquire"
    KEEP = "keep"
    RELEASE = "release"
    WAIT = "wait"


@dataclass(frozen=True)
class LeaseConfig:
    primary_grace: float = 30.0  # a primary not heartbeating for this long is presumed down
    free_grace: float = 60.0  # without any primary heartbeat: take a lease that stayed free this long


@dataclass(frozen=True)
class LeaseView:
    """What one cycle saw.  Ages are seconds by the database's clock; None means unknown."""

    role: ServerRole
    held_by_me: bool
    holder: str | None = None  # the server id of another holder ("" if it cannot be told); None: free
    holder_heartbeat_age: float | None = None
    primary_heartbeat_age: float | None = None  # the freshest heartbeat of another primary server
    free_for: float = 0.0  # how long this server has seen the lease free


@dataclass(frozen=True)
class Decision:
    action: LeaseAction
    reason: str  # one sentence, logged and asserted in tests


def decide(view: LeaseView, config: LeaseConfig) -> Decision:
    """Who should hold the lease, from this server's point of view."""
    primary_alive = view.primary_heartbeat_age is not None and view.primary_heartbeat_age <= config.primary_grace
    if view.role not in (*PREFERRED, ServerRole.SECONDARY):
        if view.held_by_me:
            return Decision(LeaseAction.RELEASE, f"a {view.role} server does not run schedules; releasing")
        return Decision(LeaseAction.WAIT, f"a {view.role} server does not run schedules")
    preferred = view.role in PREFERRED
    if view.held_by_me:
        if not preferred and primary_alive:
            return Decision(LeaseAction.RELEASE, f"the primary is alive again (heartbeat {view.primary_heartbeat_age:.0f}s "
                                                 "ago); handing the lease back")
        return Decision(LeaseAction.KEEP, f"I am the {view.role} and hold the lease")
    if view.holder is not None:
        who = view.holder or "another server"
        stale = view.holder_heartbeat_age is not None and view.holder_heartbeat_age > config.primary_grace
        if stale:
            return Decision(LeaseAction.WAIT, f"{who} holds the lease but has not heartbeat for "
                                              f"{view.holder_heartbeat_age:.0f}s; it is released when its "
                                              "connection dies")
        if preferred:
            return Decision(LeaseAction.WAIT, f"{who} holds the lease; it hands it back to me, the {view.role}")
        return Decision(LeaseAction.WAIT, f"{who} holds the lease")
    if preferred:
        return Decision(LeaseAction.ACQUIRE, f"the lease is free and I am the {view.role}; taking it")
    if primary_alive:
        return Decision(LeaseAction.WAIT, f"the lease is free but the primary is alive (heartbeat "
                                          f"{view.primary_heartbeat_age:.0f}s ago); it takes it")
    if view.primary_heartbeat_age is not None:
        return Decision(LeaseAction.ACQUIRE, f"the lease is free and the primary has not heartbeat for "
                                             f"{view.primary_heartbeat_age:.0f}s; taking it")
    if view.free_for >= config.free_grace:
        return Decision(LeaseAction.ACQUIRE, f"the lease has been free for {view.free_for:.0f}s and no primary "
                                             "heartbeat is known; taking it")
    return Decision(LeaseAction.WAIT, f"the lease is free for {view.free_for:.0f}s, no primary heartbeat is "
                                      f"known; waiting {config.free_grace:.0f}s for the primary")


# --- the runner ---------------------------------------------------------------------------

OnAcquire = Callable[[], Awaitable[None]]
OnRelease = Callable[[bool], Awaitable[None]]  # called with lost=True when the lease was lost


@dataclass(frozen=True)
class LeaseHolder:
    server_id: str  # "" when it cannot be told (the holder is not a ScheduleLease)
    pid: int  # its database backend
    mine: bool


@dataclass(frozen=True)
class _Observation:
    holder: LeaseHolder | None
    servers: list[Any]
    now: dt.datetime


async def _nothing(*_: object) -> None:
    return None


class ScheduleLease:
    """Hold the schedules lease when :func:`decide` says so, on a connection of its own.

    ``engine`` only lends its URL (or ``target`` says where, as an engine-run database's URL needs): the
    lease opens unpooled connections, so closing one really ends the session (and the lock with it).  ``step`` runs one cycle; ``run`` cycles every
    ``poll_interval`` seconds until cancelled, then releases."""

    def __init__(
        self, engine: AsyncEngine | DbTarget, *, server_id: str, role: ServerRole, config: LeaseConfig | None = None,
        poll_interval: float = 2.0, key: int = SCHEDULES, timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.server_id, self.role, self.key = server_id, ServerRole(role), key
        self.config = config or LeaseConfig()
        self.poll_interval, self.timeout, self._clock = poll_interval, timeout, clock
        where = engine if isinstance(engine, DbTarget) else engine.url
        self._engine = locks.session_engine(where, application_name=f"{APPLICATION_PREFIX}{server_id}",
                                            timeout=timeout)
        self._conn: AsyncConnection | None = None
        self._free_since: float | None = None
        self.holding = False
        self.holder: LeaseHolder | None = None
        self.last: Decision | None = None

    # one cycle

    async def step(self, on_acquire: OnAcquire = _nothing, on_release: OnRelease = _nothing) -> Decision:
        try:
            seen = await asyncio.wait_for(self._observe(), self.timeout)
        except (*DB_ERRORS, OSError, TimeoutError) as exc:
            return await self._lost(on_release, f"the database cannot be reached ({type(exc).__name__})")
        self.holder = seen.holder
        mine = seen.holder is not None and seen.holder.mine
        if self.holding and not mine:
            return await self._lost(on_release, "the lease was lost with its session")
        if mine and not self.holding:  # cannot happen; never let a forgotten lock linger
            await self._drop_connection()
            self.holder = None
            return self._say(Decision(LeaseAction.WAIT, "dropped a session holding the lease unknowingly"))
        decision = decide(self._view(seen), self.config)
        if decision.action == LeaseAction.ACQUIRE:
            taken = await self._try(lambda conn: locks.try_lock(conn, NAMESPACE, self.key), "taken")
            if taken is not None and taken.ok:
                self.holding, self._free_since = True, None
                self.holder = LeaseHolder(self.server_id, taken.pid, True)
                await on_acquire()
            else:
                decision = Decision(LeaseAction.WAIT, "another server took the lease first")
        elif decision.action == LeaseAction.RELEASE:
            await on_release(False)
            self.holding, self.holder = False, None
            released = await self._try(lambda conn: locks.unlock(conn, NAMESPACE, self.key), "released")
            if not released:
                await self._drop_connection()
        return self._say(decision)

    async def run(self, on_acquire: OnAcquire = _nothing, on_release: OnRelease = _nothing) -> None:
        """Cycle until cancelled; then stop the jobs (``on_release(False)``) and release."""
        try:
            while True:
                await self.step(on_acquire, on_release)
                await asyncio.sleep(self.poll_interval)
        finally:
            if self.holding:
                self.holding = False
                await on_release(False)
            await self.close()

    async def close(self) -> None:
        """End the lease's session (which releases the lock if it is held)."""
        self.holding = False
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()
        await self._engine.dispose()

    # what it sees

    def _view(self, seen: _Observation) -> LeaseView:
        now = self._clock()
        other = seen.holder if seen.holder is not None and not seen.holder.mine else None
        if seen.holder is None:
            self._free_since = now if self._free_since is None else self._free_since
        else:
            self._free_since = None
        return LeaseView(
            role=self.role, held_by_me=self.holding, holder=other.server_id if other else None,
            holder_heartbeat_age=self._age(seen, lambda r: other is not None and str(r.id) == other.server_id),
            primary_heartbeat_age=self._age(seen, lambda r: str(r.id) != self.server_id and r.role in PREFERRED),
            free_for=0.0 if self._free_since is None else now - self._free_since,
        )

    @staticmethod
    def _age(seen: _Observation, which: Callable[[Any], bool]) -> float | None:
        beats = [r.last_heartbeat for r in seen.servers if which(r) and r.last_heartbeat is not None]
        return max(0.0, (seen.now - max(beats)).total_seconds()) if beats else None

    async def _connection(self) -> AsyncConnection:
        if self._conn is None or self._conn.closed or self._conn.invalidated:
            self._conn = await self._engine.connect()
        return self._conn

    async def _observe(self) -> _Observation:
        from safehold.storage import servers as server_store

        conn = await self._connection()
        holder = None
        seen = await locks.holder(conn, NAMESPACE, self.key)
        if seen is not None:
            name = seen.application_name
            holder = LeaseHolder(name[len(APPLICATION_PREFIX):] if name.startswith(APPLICATION_PREFIX) else "",
                                 seen.pid, seen.mine)
        servers = await server_store.all_servers(conn)
        now = await database_time(conn)
        return _Observation(holder, list(servers), now)

    async def _try(self, call: Callable[[AsyncConnection], Awaitable[_T]], what: str) -> _T | None:
        """Take or release the lock; its answer, or None (and the session dropped) if that failed."""
        try:
            conn = await self._connection()
            return await asyncio.wait_for(call(conn), self.timeout)
        except (*DB_ERRORS, OSError, TimeoutError) as exc:
            log.warning("schedules lease could not be %s: %s", what, type(exc).__name__)
            await self._drop_connection()
            return None

    async def _lost(self, on_release: OnRelease, reason: str) -> Decision:
        await self._drop_connection()
        was_holding, self.holding, self.holder = self.holding, False, None
        if was_holding:
            await on_release(True)
        return self._say(Decision(LeaseAction.RELEASE if was_holding else LeaseAction.WAIT, reason))

    async def _drop_connection(self) -> None:
        """Close the session for good: a lock it may still hold goes with it."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.invalidate()
            with contextlib.suppress(Exception):
                await conn.close()

    def _say(self, decision: Decision) -> Decision:
        """Log a decision when it differs from the last one by more than a number (an age)."""
        if self.last is None or _shape(decision.reason) != _shape(self.last.reason):
            log.info("schedules lease (%s): %s", self.role, decision.reason)
        self.last = decision
        return decision


def _shape(reason: str) -> str:
    return re.sub(r"\d+", "#", reason)


# --- jobs while holding -------------------------------------------------------------------


Job = Callable[[], Awaitable[None]]


class ScheduledJobs:
    """Call each job every ``interval`` seconds (first call one interval after the lease is taken)
    while the lease is held.  A job that raises is logged and called again next interval.

    Give :meth:`start` and :meth:`stop` to :meth:`ScheduleLease.run`.  A lease handed back
    lets the running call finish; a lost lease cancels it."""

    def __init__(self, jobs: Mapping[str, tuple[float, Job]]) -> None:
        self.jobs = dict(jobs)
        self.runs: dict[str, int] = dict.fromkeys(self.jobs, 0)
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()

    @property
    def running(self) -> bool:
        return any(not t.done() for t in self._tasks)

    async def start(self) -> None:
        await self.stop(True)
        self._stop = asyncio.Event()
        self._tasks = [asyncio.get_running_loop().create_task(self._loop(name, every, job), name=f"job {name}")
                       for name, (every, job) in self.jobs.items()]

    async def stop(self, lost: bool) -> None:
        self._stop.set()
        tasks, self._tasks = self._tasks, []
        if lost:
            for task in tasks:
                task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _loop(self, name: str, every: float, job: Job) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), every)
            if self._stop.is_set():
                return
            try:
                await job()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("scheduled job %s failed", name)
            self.runs[name] += 1


async def run_schedules(lease: ScheduleLease, jobs: Mapping[str, tuple[float, Job]]) -> None:
    """Run ``jobs`` on whichever server holds the lease; returns only when cancelled."""
    runner = ScheduledJobs(jobs)
    await lease.run(runner.start, runner.stop)
