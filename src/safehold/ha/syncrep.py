"""Synchronous mode: a commit on the primary is acknowledged only once a read-only replica has flushed
it too, so a failover loses no acknowledged write.

Opt-in per cluster (``ha.synchronous``).  The read-only servers' replicas are named in the primary's
``synchronous_standby_names`` as ``ANY 1 ("id1", "id2")`` (each replica's ``application_name`` is its
server id).  While no synchronous standby is connected, commits wait; once none has been for longer
than ``ha.sync_degrade_after`` seconds the primary degrades to asynchronous replication and a
``RaiseAlarm SyncStandbyMissing <message>`` event is logged; when a standby streams again
synchronous replication is restored and a ``ClearAlarm <text>`` event is logged.

The decision is pure (:func:`decide_sync`, tested as a table); :class:`SyncGuard` gathers the
observation and carries it out on the server whose bundled database is the primary, every
``ha.check_interval``: it reads ``pg_stat_replication`` and the server registry through a superuser
connection of its own and changes the setting with ``ALTER SYSTEM`` + ``pg_reload_conf()``, neither of
which waits for a synchronous standby, so the guard keeps working while commits are blocked.  Its
own event inserts commit with ``synchronous_commit = local`` and happen after degrading, so they never
wait for a standby either.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass

from safehold.config import Settings, load_settings
from safehold.domain import ServerRole
from safehold.errors import SafeholdError
from safehold.ha.policy import EventKind
from safehold.storage import ha as ha_store
from safehold.storage import replication, system_settings
from safehold.storage import servers as server_store
from safehold.storage.db import AsyncConnection, AsyncEngine, make_engine, owner_target

log = logging.getLogger(__name__)

#: The RaiseAlarm condition (first script argument) while the primary runs asynchronously for want of
#: a synchronous standby.
SYNC_CONDITION = "SyncStandbyMissing"
#: The subject of the guard's events in the HA event log.
SUBJECT = "synchronous replication"
SETTING = system_settings.SYNC_NAMES


# --- the pure part ------------------------------------------------------------------------------------


def quote_standby_name(name: str) -> str:
    """A standby name as synchronous_standby_names wants it: double-quoted, inner quotes doubled."""
    if not name or any(c in name for c in "\0\r\n"):
        raise ValueError(f"{name!r} cannot be a standby name")
    return '"' + name.replace('"', '""') + '"'


def desired_sync_names(standby_app_names: Iterable[str]) -> str:
    """synchronous_standby_names for these standbys: any one of them acknowledges a commit.

    Unique and sorted, so the same standbys always give the same text; no standby gives the empty
    string, i.e. asynchronous replication."""
    names = sorted(set(standby_app_names))
    if not names:
        return ""
    return "ANY 1 (" + ", ".join(quote_standby_name(n) for n in names) + ")"


@dataclass(frozen=True)
class SyncView:
    """What the primary reports in one cycle."""

    standbys: tuple[str, ...]  # application names of the registered read-only servers (their ids)
    streaming: frozenset[str]  # the connected standbys whose WAL sender is streaming
    current: str  # synchronous_standby_names in effect now ('' = asynchronous)


@dataclass(frozen=True)
class SyncGuardState:
    """What the guard remembers between cycles (``None`` before its first cycle)."""

    missing_since: float | None = None  # since when no standby streams while synchronous mode is on
    alarm: bool = False  # a RaiseAlarm of the guard's is outstanding


@dataclass(frozen=True)
class SetSyncNames:
    """Set synchronous_standby_names (``""``: reset it, i.e. asynchronous)."""

    value: str


@dataclass(frozen=True)
class RaiseAlarm:
    condition: str
    message: str


@dataclass(frozen=True)
class ClearAlarm:
    text: str


SyncAction = SetSyncNames | RaiseAlarm | ClearAlarm


def _names(names: Collection[str]) -> str:
    return ", ".join(sorted(names))


def decide_sync(state: SyncGuardState | None, view: SyncView, *, enabled: bool, now: float,
                degrade_after: float) -> tuple[SyncGuardState, list[SyncAction]]:
    """The next state and what to do, from what the primary reports now.

    - off: asynchronous (the setting is reset); an outstanding alarm is cleared;
    - on, a registered standby streams: every registered standby is named (``ANY 1``); an
      outstanding alarm is cleared ("restored");
    - on, none streams: commits keep waiting for one for ``degrade_after`` seconds (counted from
      when the guard first saw none), then the setting is reset (asynchronous) and an alarm is
      raised, once.  A guard that starts with none streaming and the setting already empty takes
      it that the limit has passed: it raises the alarm at once (never hides a failure) and does
      not make commits wait again.

    Setting changes come before alarm events in the list, so the events are logged once commits no
    longer wait.  ``now`` is a monotonic clock in seconds."""
    alarm = state.alarm if state is not None else False
    actions: list[SyncAction] = []
    if not enabled:
        if view.current:
            actions.append(SetSyncNames(""))
        if alarm:
            actions.append(ClearAlarm("synchronous mode is off: replication is asynchronous by choice"))
        return SyncGuardState(), actions
    streaming = frozenset(view.streaming) & frozenset(view.standbys)
    if streaming:
        wanted = desired_sync_names(view.standbys)
        if view.current != wanted:
            actions.append(SetSyncNames(wanted))
        if alarm:
            actions.append(ClearAlarm(f"synchronous replication restored with {_names(streaming)}"))
        return SyncGuardState(), actions
    if state is not None and state.missing_since is not None:
        missing_since = state.missing_since
    elif state is None and not view.current:
        missing_since = now - degrade_after  # already asynchronous when the guard started
    else:
        missing_since = now
    missing_for = now - missing_since
    if missing_for < degrade_after:
        wanted = desired_sync_names(view.standbys)
        if view.current != wanted:
            actions.append(SetSyncNames(wanted))
        return SyncGuardState(missing_since=missing_since, alarm=alarm), actions
    if view.current:
        actions.append(SetSyncNames(""))
    if not alarm:
        who = "no read-only server is registered" if not view.standbys else \
            f"no synchronous standby has been connected for {missing_for:.0f} s"
        actions.append(RaiseAlarm(SYNC_CONDITION, f"{who} (limit {degrade_after:g} s): the primary "
                                                  "replicates asynchronously; commits no longer wait for a "
                                                  "read-only replica"))
    return SyncGuardState(missing_since=missing_since, alarm=True), actions


def describe(actions: Sequence[SyncAction]) -> str:
    """One sentence for the log."""
    parts = []
    for a in actions:
        if isinstance(a, SetSyncNames):
            parts.append(f"{SETTING} set to {a.value!r}" if a.value else f"{SETTING} reset (asynchronous)")
        elif isinstance(a, RaiseAlarm):
            parts.append(f"alarm {a.condition}: {a.message}")
        else:
            parts.append(f"alarm cleared: {a.text}")
    return "; ".join(parts) or "no action"


# --- the side effects -------------------------------------------------------------------------------


def guard_runs_on(settings: Settings) -> bool:
    """Whether this server's bundled database is the cluster's primary (a standalone's is too: it
    becomes a primary the moment a setup pack is taken)."""
    return settings.database.mode == "bundled" and settings.server.role in (ServerRole.PRIMARY,
                                                                            ServerRole.STANDALONE)


def superuser_engine(settings: Settings) -> AsyncEngine:
    """One autocommit connection as the bundled database's superuser.  Its commits never wait for a
    standby (synchronous_commit = local) and no statement runs longer than 10 s."""
    return make_engine(owner_target(settings), pool_size=1, autocommit=True, connect_timeout=5,
                       application_name="safehold-sync-guard",
                       options="-c synchronous_commit=local -c statement_timeout=10000")


async def observe(conn: AsyncConnection) -> SyncView | None:
    """The registered read-only servers, the standbys streaming now and the current setting; None
    when the database is itself a standby (nothing to guard)."""
    view = await replication.primary_view(conn)
    if view.in_recovery:
        return None
    standbys = tuple(sorted(str(r.id) for r in await server_store.all_servers(conn)
                            if r.role == ServerRole.READONLY.value))
    streaming = frozenset(s.application_name for s in view.standbys
                          if s.application_name and s.state == "streaming")
    current = await system_settings.current_setting(conn, SETTING)
    return SyncView(standbys=standbys, streaming=streaming, current=current)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, SafeholdError):
        return exc.message
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first[:200]}" if first else type(exc).__name__


class SyncGuard:
    """Keeps the primary's synchronous_standby_names in line with ``ha.synchronous`` and with the
    standbys that are there, and raises/clears the alarm.  ``ha.synchronous`` and
    ``ha.sync_degrade_after`` are re-read from the server's configuration file every cycle, so
    'safehold ha sync' takes effect without a restart."""

    def __init__(self, settings: Settings, reported_by: str, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.reported_by = reported_by
        self.clock = clock
        self.state: SyncGuardState | None = None
        self.last_error: str | None = None
        self._engine: AsyncEngine | None = None

    @property
    def interval(self) -> float:
        return self.settings.ha.check_interval

    def _wanted(self) -> tuple[bool, float]:
        """(synchronous, degrade after) from the configuration file; the last known on a bad file."""
        try:
            fresh = load_settings(self.settings.data_dir)
        except SafeholdError as exc:
            log.warning("sync guard: cannot re-read the configuration (%s); keeping the last one", exc.message)
        else:
            self.settings = self.settings.model_copy(update={"ha": self.settings.ha.model_copy(update={
                "synchronous": fresh.ha.synchronous, "sync_degrade_after": fresh.ha.sync_degrade_after})})
        return self.settings.ha.synchronous, self.settings.ha.sync_degrade_after

    async def step(self) -> list[SyncAction]:
        """One cycle: observe, decide, act.  Never raises (but lets a cancellation through): on an
        error the state stays as it was and the next cycle re-reads the truth."""
        try:
            return await asyncio.wait_for(self._step(), timeout=max(10.0, 3 * self.interval))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - reconcile next cycle; never die
            self.last_error = _reason(exc)
            log.warning("sync guard: %s", self.last_error)
            await self.close()  # a stuck or broken connection is replaced next cycle
            return []

    async def _step(self) -> list[SyncAction]:
        enabled, degrade_after = self._wanted()
        if self._engine is None:
            self._engine = superuser_engine(self.settings)
        async with self._engine.connect() as conn:
            view = await observe(conn)
            if view is None:
                self.last_error = None
                return []
            before = self.state
            state, actions = decide_sync(before, view, enabled=enabled, now=self.clock(),
                                         degrade_after=degrade_after)
            for a in actions:
                if isinstance(a, SetSyncNames):
                    await system_settings.set_sync_names(conn, a.value)  # a failure keeps the old state: retried
            alarms = [a for a in actions if not isinstance(a, SetSyncNames)]
            if alarms:
                try:
                    await ha_store.add_events(conn, self.reported_by, [_event(a) for a in alarms])
                except Exception as exc:  # noqa: BLE001 - the alarm is decided again next cycle
                    log.warning("sync guard: alarm not logged yet (%s)", _reason(exc))
                    state = dataclasses.replace(state, alarm=before.alarm if before is not None else False)
        self.state = state
        self.last_error = None
        if actions:
            log.warning("sync guard: %s", describe(actions))
        return actions

    async def run_forever(self) -> None:
        """Every ``ha.check_interval`` until cancelled."""
        try:
            while True:
                await self.step()
                await asyncio.sleep(self.interval)
        finally:
            await self.close()

    async def close(self) -> None:
        if self._engine is not None:
            engine, self._engine = self._engine, None
            await engine.dispose()


def _event(a: RaiseAlarm | ClearAlarm) -> tuple[str, str, str, tuple[str, ...]]:
    if isinstance(a, RaiseAlarm):
        return EventKind.RAISE_ALARM.value, SUBJECT, a.message, (a.condition, a.message)
    return EventKind.CLEAR_ALARM.value, SUBJECT, a.text, (a.text,)


async def apply_now(settings: Settings, enabled: bool) -> tuple[SyncView, str | None]:
    """For 'safehold ha sync': make the running primary follow ``enabled`` at once, as far as it can
    without a guard.  Off: reset.  On: name the registered standbys when one of them streams now
    (else leave it to the server's guard, so commits do not wait for a standby that is not there).
    Returns the view before and the value set (None: nothing changed)."""
    engine = superuser_engine(settings)
    try:
        async with engine.connect() as conn:
            view = await observe(conn)
            if view is None:
                raise SafeholdError("this server's database is a standby: synchronous mode is set on the "
                                    "primary")
            wanted: str | None = None
            if not enabled:
                wanted = ""
            elif frozenset(view.streaming) & frozenset(view.standbys):
                wanted = desired_sync_names(view.standbys)
            if wanted is None or wanted == view.current:
                return view, None
            await system_settings.set_sync_names(conn, wanted)
            return view, wanted
    finally:
        await engine.dispose()
