"""The HA agent of one server: the loops that gather observations and carry out decisions.

- primary / secondary: heartbeat into the server registry;
- read-only: check the other app servers over HTTPS (to redirect users to them, or serve
  them itself in read-only emergency mode), and ship its audit spool to the primary database
  whenever that database is reachable.

- fenced (superseded by a newer primary): redirect users to the acting primary, write nothing.

Before each heartbeat a primary/secondary asks its peers for their generation (fencing, see
services.fencing).  When the server's mode changes — promoted, fenced, turned into a replica by a
switchover — its step says so (:class:`After`) and its loops are replaced by those of the new mode.

Each cycle of the heartbeat, the peer check and the fenced watch reads the truth into a view, asks the
pure decision of :mod:`safehold.ha.cycle` for one action and one sentence, logs the sentence when it
changes and carries the action out.  One long action at a time: while a promotion runs (its lock is
held) the peer check does nothing else.  A loop never raises: an error is logged and the next cycle
re-reads the truth.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Coroutine
from enum import Enum
from pathlib import Path
from typing import Any

from safehold.audit import emergency as emergency_log
from safehold.audit.delivery import AuditDelivery
from safehold.audit.spool import ship
from safehold.config import CONFIG_NAME, Settings, load_settings
from safehold.domain import ServerRole
from safehold.errors import DatabaseError, SafeholdError
from safehold.ha.cycle import (
    PROMOTION_GRACE,
    FencedAction,
    FencedView,
    ReadOnlyAction,
    ReadOnlyView,
    WriterAction,
    WriterDecision,
    WriterView,
    data_age,
    decide_fenced,
    decide_readonly,
    decide_writer,
    fenced_needs_peers,
    lease_alarm,
    readonly_needs_peers,
)
from safehold.ha.fencing import (
    ConfirmedLeases,
    clear_fence,
    clear_promoting,
    confirmation_from,
    fence_database,
    peer_reports,
    promoting_marked,
    role_on_disk,
    save_fence,
    superseded_by,
    take_override,
)
from safehold.ha.lease import ScheduleLease, run_schedules
from safehold.ha.lsn import lag_bytes
from safehold.ha.monitor import monitor_once
from safehold.ha.peers import LocalReport, PeerClient, primary_wal
from safehold.ha.policy import Event, EventKind, PeerObservation
from safehold.ha.shared_view import VIEW_FILE, FollowsFirstWorker, SharedViewFile
from safehold.ha.watchdog import cycle_went_well
from safehold.runtime import Fence, Runtime, engine_managed, in_cluster
from safehold.runtime.shared import SharedCounter
from safehold.runtime.writelease import Confirmation, clock
from safehold.storage import cluster as cluster_store
from safehold.storage import replication
from safehold.storage import servers as server_store
from safehold.storage.db import AsyncEngine, app_target, make_engine, primary_target

#: runs the automatic failover watch (``make_watch(settings)``) with the cluster's policy; see
#: ``services.cluster_settings.follow_failover``
FailoverFollower = Callable[[Runtime, Callable[[Any], Any]], Coroutine[Any, Any, None]]

log = logging.getLogger(__name__)


SPOOL_FAILED = "AuditSpoolFailed"
#: when a worker of this server last answered /ha/local in a way that may confirm a writer's lease (ms)
LEASE_ANSWERS = "run/lease-answers"


class After(Enum):
    """What a loop's step asks of its loop: the next cycle as usual, again after the retry delay (a state
    about to change), or new loops (the server's mode changed: they are replaced by those of the new mode)."""

    NEXT = "next"
    SOON = "soon"
    NEW_MODE = "new_mode"


class HaAgent(FollowsFirstWorker):
    def __init__(self, rt: Runtime, *, backup: Callable[[Runtime], Awaitable[Path]] | None = None,
                 follow_failover: FailoverFollower | None = None, first_worker: bool = True) -> None:
        """``backup`` makes the scheduled backup (``backup.every_minutes``) and ``follow_failover`` runs the
        automatic failover watch with the cluster's policy on a read-only server: both are services, handed in
        by the web layer (HA does not import the services).  ``first_worker``: this process runs what a server
        with several workers runs once (the synchronous-mode guard; on a read-only server the audit shipper and
        the automatic failover watch)."""
        self.rt = rt
        self.first_worker = first_worker
        self._view_file = SharedViewFile(rt.settings.data_dir / VIEW_FILE, rt.settings.ha.check_interval)
        self._check_lock = asyncio.Lock()  # one peer check (and take-over) at a time: the loop's, or a request's
        self._backup = backup
        self._follow_failover = follow_failover
        self.peers: list[PeerObservation] = []
        self.redirect: PeerObservation | None = None
        self.last_ship_error: str | None = None
        self.data_age_seconds: float | None = None  # how stale a read-only server's data may be
        self._caught_up_at: dt.datetime | None = None  # when the replica last had all the primary had
        self._tasks: list[asyncio.Task[None]] = []
        self._primary_db: AsyncEngine | None = None
        self.lease: ScheduleLease | None = None
        self.alerts: Any = None  # the alert dispatcher (safehold.alerts), set by the app
        self._promote_lock = asyncio.Lock()
        self._follow_lock = asyncio.Lock()  # one follow of the database at a time: the heartbeat's, or a request's
        # the writers' leases /ha/local confirmed, on any worker of this server
        self._leases = ConfirmedLeases(rt.settings.ha.write_lease, SharedCounter(rt.settings.data_dir / LEASE_ANSWERS))
        self._config_mtime: int | None = None
        self.alarm: tuple[str, str] | None = None  # a raised alarm only this server knows of (condition, message)
        self._said: dict[str, str] = {}  # each loop's last decision, logged when it changes
        self._incomplete_since: float | None = None  # since when a promotion of this server looks interrupted
        self._client = PeerClient.for_settings(rt.settings)  # the peers' /ha/local and health checks
        self._watch: Any = None  # the automatic failover watch, while one runs here

    @property
    def interval(self) -> float:
        return self.rt.settings.ha.check_interval

    @property
    def client(self) -> PeerClient:
        return self._client

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._watch_spool(loop)
        if self.rt.fence is not None:
            self._tasks.append(loop.create_task(self._every(self.fenced_watch), name="ha-fenced"))
        elif self.rt.readonly:
            self._tasks.append(loop.create_task(self._every(self.check_peers), name="ha-peers"))
            if not self.first_worker:  # each worker watches for itself; the rest is done once per server
                return
            self._tasks.append(loop.create_task(self._every(self.ship_audit), name="ha-audit-shipper"))
            if self._follow_failover is not None and not engine_managed(self.rt.settings):
                # the automatic failover watch, with the cluster's policy as this replica holds it (re-read)
                self._tasks.append(loop.create_task(self._follow_failover(self.rt, self._failover_watch),
                                                    name="ha-failover"))
        else:
            self.rt.confirm_writer = self.confirm_writer
            self._tasks.append(loop.create_task(self._every(self.heartbeat, retry=0.5), name="ha-heartbeat"))
            # schedules (the HA monitor) run on exactly one primary/secondary: the lease holder
            self.lease = ScheduleLease(app_target(self.rt.settings), server_id=self.rt.identity.id, role=self.rt.identity.role,
                                       poll_interval=self.interval)
            jobs = {"ha-monitor": (self.interval, self.monitor)}
            if self.rt.settings.backup.every_minutes:
                jobs["backup"] = (self.rt.settings.backup.every_minutes * 60.0, self.backup)
            if self.alerts is not None:  # channels may be configured later (cluster settings)
                jobs["alerts"] = (self.interval, self.relay_alerts)
            jobs["audit-sinks"] = (self.rt.settings.audit.interval, AuditDelivery(self.rt).run)  # audit streaming
            self._tasks.append(loop.create_task(run_schedules(self.lease, jobs), name="ha-schedules"))
            from safehold.ha.syncrep import SyncGuard, guard_runs_on

            if self.first_worker and guard_runs_on(self.rt.settings):  # sync mode, on the primary database's server
                guard = SyncGuard(self.rt.settings, self.rt.identity.id)
                self._tasks.append(loop.create_task(guard.run_forever(), name="ha-sync-guard"))

    def _watch_spool(self, loop: asyncio.AbstractEventLoop) -> None:
        """The local audit spool's failures (a full disk, a fork of the chain) raise the alarm AuditSpoolFailed;
        its recovery clears it.  The spool calls from the thread that appended: hand over to the loop."""
        spool = self.rt.spool
        if spool is None:
            return

        spool.on_failure = lambda message: loop.call_soon_threadsafe(self._spool_alarm, message)
        spool.on_recovered = lambda: loop.call_soon_threadsafe(self._spool_alarm, None)
        if spool.last_error:
            self._spool_alarm(spool.last_error)

    def _spool_alarm(self, message: str | None) -> None:
        if message is not None and (self.alarm is None or self.alarm[0] == SPOOL_FAILED):
            self.alarm = (SPOOL_FAILED, message)
            self.publish(EventKind.RAISE_ALARM, self.rt.identity.name, message, self.alarm)
        elif message is None and self.alarm is not None and self.alarm[0] == SPOOL_FAILED:
            self.alarm = None
            text_ = "the local audit spool is written again"
            self.publish(EventKind.CLEAR_ALARM, self.rt.identity.name, text_, (text_,))

    async def _restart(self) -> None:
        """Replace the loops by those of the server's new mode."""
        await self._stop_loops()
        self.redirect = None
        self.peers = []
        self._said, self._incomplete_since = {}, None
        self.start()

    async def _stop_loops(self) -> None:
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        self._tasks.clear()
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self.lease is not None:
            with contextlib.suppress(Exception):
                await self.lease.close()
            self.lease = None

    async def monitor(self) -> None:
        await monitor_once(self.rt)

    async def relay_alerts(self) -> None:
        """The events logged in the database since the last cycle go to the alert channels (the lease
        holder only, so each goes out once)."""
        from safehold.alerts.relay import relay_once

        await relay_once(self.rt, self.alerts)

    async def backup(self) -> None:
        if self._backup is None:
            return
        out = await self._backup(self.rt)
        log.info("scheduled backup written to %s", out)

    async def stop(self) -> None:
        await self._stop_loops()
        await self._client.aclose()
        if self._primary_db is not None:
            await self._primary_db.dispose()

    async def _every(self, step: Callable[[], Awaitable[After | None]], *, retry: float | None = None) -> None:
        """Run ``step`` every check interval; after a failure (or when the step says so), again after ``retry``
        seconds if given (the heartbeat: a primary whose database went away notices at once what it came back
        as); when the step says the mode changed, the loops are replaced.  The same failure is logged once per
        half minute, not every cycle."""
        loop = asyncio.get_running_loop()
        said, said_at = "", 0.0
        while True:
            soon = False
            try:
                after = await step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - reconcile next cycle; never die
                self.share()
                soon = True
                text = str(exc) if isinstance(exc, SafeholdError) else type(exc).__name__
                if text != said or loop.time() - said_at > 30:
                    log.warning("%s: %s", step.__name__, text)
                    said, said_at = text, loop.time()
            else:
                self.share()
                said = ""
                cycle_went_well(step.__name__)  # systemd's watchdog (ha/watchdog.py)
                if after is After.NEW_MODE:
                    loop.create_task(self._restart(), name="ha-restart")
                    return
                soon = after is After.SOON
            await asyncio.sleep(retry if soon and retry is not None else self.interval)

    def _say(self, loop: str, sentence: str, level: int = logging.WARNING) -> None:
        """Log a loop's decision when it differs from its last one (not every cycle)."""
        if self._said.get(loop) != sentence:
            self._said[loop] = sentence
            log.log(level, "%s: %s", loop, sentence)

    def _publish(self, event: Event | None) -> None:
        """Carry out a decision's event: this server's alarm is raised or cleared, and the channels told (once
        per server: a read-only server's other workers follow its first one)."""
        if event is None or self.followed() is not None:
            return
        if event.kind is EventKind.RAISE_ALARM:
            self.alarm = (event.args[0], event.message)
        elif event.kind is EventKind.CLEAR_ALARM:
            self.alarm = None
        self.publish(event.kind, event.subject, event.message, event.args)

    @property
    def _alarm_condition(self) -> str | None:
        return None if self.alarm is None else self.alarm[0]

    # --- primary / secondary ------------------------------------------------------------

    async def heartbeat(self) -> After:
        """Read (the peers, the database, the settings file when it matters), decide (ha.cycle), act."""
        started = clock()
        confirmation, newer = await self._ask_peers()
        view, loaded = await self._writer_view(started, confirmation, newer)
        return await self._carry_out(view, decide_writer(view), loaded)

    async def _writer_view(self, started: float, confirmation: Confirmation, newer: Fence | None
                           ) -> tuple[WriterView, Settings | None]:
        """The heartbeat's view, and the settings file when it was read: when the database is a replica
        (follow it?) or a standalone server's file changed ('ha pack' may have made it a primary)."""
        replica = await self._database_is_replica()
        loaded = None
        if replica or self._settings_changed():
            loaded = await asyncio.to_thread(load_settings, self.rt.settings.data_dir)
        override = newer is None and await asyncio.to_thread(take_override, self.rt.settings)
        rt = self.rt
        return WriterView(rt.identity.name, rt.identity.role, replica, loaded.server.role if loaded else None, newer,
                          confirmation, override, rt.lease, started, clock(), self._alarm_condition), loaded

    async def _carry_out(self, view: WriterView, d: WriterDecision, loaded: Settings | None) -> After:
        self._say("heartbeat", d.sentence, logging.INFO if d.action is WriterAction.HEARTBEAT else logging.WARNING)
        if d.action is WriterAction.FOLLOW and loaded is not None:
            async with self._follow_lock:
                if self.rt.readonly:  # a request followed it first (follow_demotion): its restart replaces us
                    return After.NEXT
                await self._become_readonly(loaded)
            return After.NEW_MODE
        if d.action is WriterAction.FENCE and view.newer is not None:
            await asyncio.to_thread(save_fence, self.rt.settings, view.newer)
            await self.rt.become_fenced(view.newer)
            await asyncio.to_thread(fence_database, self.rt.settings)
            self._publish(d.event)
            return After.NEW_MODE
        if d.confirmation is Confirmation.OVERRIDE:
            log.warning("write lease: an operator overrode the confirmation ('safehold ha override-lease'); "
                        "this server writes again without having heard from a peer")
        if d.confirmation is not None:
            self.rt.renew_lease(view.started, d.confirmation)
        self._publish(d.event)
        if d.action is WriterAction.WAIT:
            return After.SOON
        adopt = d.action is WriterAction.ADOPT and loaded is not None
        if adopt and loaded is not None:  # the primary from now on, not only from its next start
            self.rt.settings = loaded
            self.rt.identity = dataclasses.replace(self.rt.identity, role=ServerRole.PRIMARY)
            self.rt.begin_lease()
            log.info("this server is now the primary of cluster %s", loaded.ha.cluster_id)
        async with self.rt.write() as conn:
            if adopt:
                await server_store.set_role(conn, self.rt.identity.id, ServerRole.PRIMARY)
            await server_store.heartbeat(conn, self.rt.identity.id)
        return After.NEXT

    def _settings_changed(self) -> bool:
        """Whether a standalone server's settings file changed since it last looked."""
        if self.rt.identity.role != ServerRole.STANDALONE:
            return False
        try:
            mtime = (self.rt.settings.data_dir / CONFIG_NAME).stat().st_mtime_ns
        except OSError:
            return False
        changed, self._config_mtime = mtime != self._config_mtime, mtime
        return changed

    async def _ask_peers(self) -> tuple[Confirmation, Fence | None]:
        if not in_cluster(self.rt.settings) or engine_managed(self.rt.settings):
            return Confirmation.CONFIRMED, None  # no peer can supersede a writer of an engine's database
        async with self.rt.read() as conn:
            row = await cluster_store.get(conn)
            urls = [r.url for r in await server_store.all_servers(conn) if r.id != self.rt.identity.id and r.url]
        if row is None:
            return Confirmation.UNCONFIRMED, None
        self.rt.generation = row.generation
        reports = await peer_reports(self.rt.settings, urls, self._client)
        fence = superseded_by(row.cluster_id, row.generation, reports)
        if fence is not None:
            self.rt.fence = fence  # refuse writes from this instant, before anything slower
        return confirmation_from(row.cluster_id, row.generation, urls, reports), fence

    async def confirm_writer(self) -> None:
        """A write found the lease expired (this server stalled): ask the peers now.  Renews the lease, or
        sets the fence at once and leaves the rest of the fencing to a task of its own (the caller may be
        the audit writer, which the fencing stops)."""
        started = clock()
        confirmation, fence = await self._ask_peers()
        if fence is not None:
            async def fence_and_restart() -> None:  # the heartbeat's decision: fence, or follow the database
                view, loaded = await self._writer_view(started, confirmation, fence)
                await self._carry_out(view, decide_writer(view), loaded)
                await self._restart()

            asyncio.get_running_loop().create_task(fence_and_restart(), name="ha-fence")
            return
        self.rt.renew_lease(started, confirmation)
        self._publish(lease_alarm(self.rt.identity.name, self.rt.lease, clock(), self._alarm_condition))

    async def _database_is_replica(self) -> bool:
        """Whether this server's database is in recovery (a switchover or a rejoin made it a replica of the
        acting primary); False when it cannot be read, or when an engine manages the database (its failover
        is the engine's: the URL leads to the writable member)."""
        if engine_managed(self.rt.settings):
            return False
        try:
            async with self.rt.read() as conn:
                return (await replication.replica_view(conn)).in_recovery
        except DatabaseError:
            return False

    async def _become_readonly(self, settings: Settings) -> None:
        """Follow the database: carry on as a read-only server, forgetting any fence (each worker of the
        server for itself: they share its audit spool and its sessions)."""
        await self.rt.become_readonly(settings)
        await asyncio.to_thread(clear_fence, settings)

    def publish(self, kind: EventKind, subject: str, message: str, args: tuple[str, ...]) -> None:
        """An event this server cannot log in a database (fenced, or a read-only server): alerts only."""
        log.warning("HA event %s: %s", kind.value, message)
        dispatcher = self.alerts
        if dispatcher is not None:
            from safehold.alerts.events import AlertEvent

            dispatcher.publish(AlertEvent.local(kind.value, subject, message, args, self.rt))

    # --- fenced -------------------------------------------------------------------------

    async def fenced_watch(self) -> After:
        """Redirect users to the acting primary while it answers; notice an even newer generation; follow
        the database when an operator has rejoined it as a replica (ha.cycle.decide_fenced)."""
        fence = self.rt.fence
        replica = fence is not None and await self._database_is_replica()
        loaded = await asyncio.to_thread(load_settings, self.rt.settings.data_dir) if replica else None
        view = FencedView(fence, replica, loaded.server.role if loaded else None)
        if fence is not None and fenced_needs_peers(view):
            url = fence.acting_primary_url
            answers = await self._client.healthy(url) if url else False
            reports = await peer_reports(self.rt.settings, [url] if url else [], self._client)
            view = dataclasses.replace(view, acting_answers=answers,
                                       newer=superseded_by(self.rt.cluster_id, fence.generation, reports))
        d = decide_fenced(view)
        self._say("fenced server", d.sentence)
        if d.action is FencedAction.RESTART:
            return After.NEW_MODE
        if d.action is FencedAction.FOLLOW and loaded is not None:
            await self._become_readonly(loaded)
            return After.NEW_MODE
        self.redirect = d.target
        if d.fence is not None:
            await self.rt.become_fenced(d.fence)
        return After.NEXT

    # --- read-only ----------------------------------------------------------------------

    async def check_peers(self) -> After:
        """Read (the replica, the cluster row, the settings file once promoted, the other servers when they
        matter), decide (ha.cycle.decide_readonly: take over, redirect, or emergency mode), act.  Another worker
        of the server follows the first one's decision, and only takes over itself."""
        async with self._check_lock:
            if not self.rt.readonly:  # a request made this worker take over meanwhile (follow_takeover)
                return After.NEW_MODE
            return await self._check_peers()

    async def follow_takeover(self) -> None:
        """Before a request on a read-only worker: if another worker of this server (or 'safehold ha promote')
        has made it the primary, take over first, so no request is answered as if it were still read-only."""
        if self.rt.fence is not None or role_on_disk(self.rt.settings) != ServerRole.PRIMARY:
            return
        async with self._check_lock:
            if self.rt.readonly and await self._check_peers() is After.NEW_MODE:
                self.redirect = None  # at once: the request that found the take-over is answered here
                asyncio.get_running_loop().create_task(self._restart(), name="ha-restart")

    async def follow_demotion(self) -> None:
        """Before a request on a primary's or secondary's worker: if the server was made read-only (a switchover
        back; another worker, or the command, rewrote its role) and its database is a replica already, follow
        it first, so that no request is answered as a writer on a database that refuses writes."""
        if self.rt.readonly or self.rt.fence is not None or role_on_disk(self.rt.settings) != ServerRole.READONLY:
            return
        async with self._follow_lock:
            if self.rt.readonly or not await self._database_is_replica():
                return
            await self._become_readonly(await asyncio.to_thread(load_settings, self.rt.settings.data_dir))
            self._say("heartbeat", "the database is a replica now: following it as a read-only server")
        asyncio.get_running_loop().create_task(self._restart(), name="ha-restart")

    async def _check_peers(self) -> After:
        try:
            async with self.rt.read() as conn:
                rows = await server_store.all_servers(conn)
                db = await replication.replica_view(conn)
                row = await cluster_store.get(conn)
        except DatabaseError:
            self.data_age_seconds = None  # the replica cannot be read: how old its data is, is unknown
            raise
        if row is not None:
            self.rt.generation = row.generation
        # an engine that promoted the replica this server reads is the engine's business: never a take-over
        promoted = not db.in_recovery and not engine_managed(self.rt.settings)
        if not promoted and self.followed() is not None:
            return After.NEXT  # the first worker decides; this one answers as it did
        loaded = await asyncio.to_thread(load_settings, self.rt.settings.data_dir) if promoted else None
        view = ReadOnlyView(self.rt.identity.id, self.rt.identity.name, promoted,
                            row.acting_primary if row else None, row.generation if row else None,
                            loaded.server.role if loaded else None, promoting=self._promote_lock.locked(),
                            alarm=self._alarm_condition, now=asyncio.get_running_loop().time(),
                            incomplete_since=self._incomplete_since, grace=max(PROMOTION_GRACE, 3 * self.interval))
        if readonly_needs_peers(view):
            candidates = [r for r in rows if r.id != self.rt.identity.id and r.url
                          and r.role in (ServerRole.PRIMARY, ServerRole.SECONDARY, ServerRole.STANDALONE)]
            asked_at = dt.datetime.now(dt.UTC)
            reports = await self._client.locals([r.url for r in candidates])
            results = [rep is not None and rep.database_ok is not False for rep in reports]
            await self._freshness(db, asked_at, reports)
            view = dataclasses.replace(view, peers=tuple(
                PeerObservation(r.id, r.name, ServerRole.PRIMARY if r.role == ServerRole.STANDALONE
                                else ServerRole(r.role), r.url, ok)
                for r, ok in zip(candidates, results, strict=True)))
        d = decide_readonly(view)
        self._incomplete_since = d.incomplete_since
        self._say("read-only server", d.sentence)
        self._publish(d.event)
        if d.action is ReadOnlyAction.TAKE_OVER and loaded is not None and row is not None:
            await self.rt.become_primary(loaded, row.generation)  # a promotion by 'safehold ha promote'
            await asyncio.to_thread(clear_promoting, self.rt.settings)  # it reports the new generation now
            return After.NEW_MODE
        if d.action is not ReadOnlyAction.WAIT:
            self.peers = list(view.peers or ())
            self.redirect = d.target
        return After.NEXT

    async def _freshness(self, view: replication.ReplicaView, asked_at: dt.datetime,
                         reports: list[LocalReport | None]) -> None:
        """Update :attr:`data_age_seconds`: the primary database's WAL position as the app servers on it
        reported it (the furthest), against how far the replica has replayed now."""
        furthest = primary_wal(reports)
        if furthest is not None and view.in_recovery:
            try:
                async with self.rt.read() as conn:
                    now_view = await replication.replica_view(conn)
            except DatabaseError:
                self.data_age_seconds = None
                return
            if lag_bytes(furthest, now_view.replay_lsn) == 0:
                self._caught_up_at = asked_at
            view = now_view
        self.data_age_seconds = data_age(view, dt.datetime.now(dt.UTC), self._caught_up_at)

    async def promote_self(self, *, reason: EventKind, wait_lsn: str | None = None, note: str = "",
                           timeout: float = 30) -> int:
        """Promote this read-only server in-process (the peer API for a switchover, or the automatic
        failover policy); returns the new generation."""
        from safehold.ha import promote as steps

        async with self._promote_lock:  # from here /ha/local says "promoting": no writer's lease is confirmed
            generation = await steps.promote_running(self.rt, self._leases, reason=reason, wait_lsn=wait_lsn,
                                                     note=note, timeout=timeout)
            asyncio.get_running_loop().create_task(self._restart(), name="ha-restart")
            return generation

    def promoting(self) -> bool:
        """What /ha/local says about a promotion of this server: while one is under way (here, or by 'safehold
        ha promote') it confirms no writer's lease; any other answer may confirm one (its time is noted)."""
        if self.rt.identity.role != ServerRole.READONLY:  # only a read-only server's answers count (and are noted)
            return False
        asked, settings = clock(), self.rt.settings  # another worker may have taken over (the settings file says)
        return self._leases.answer(self._promote_lock.locked() or promoting_marked(settings)
                                   or role_on_disk(settings) not in (None, ServerRole.READONLY), asked)

    def _failover_watch(self, settings: Any = None) -> Any:
        """Automatic failover (opt-in): ping the primary; promote this server after the configured number of
        failed rounds, unless its own side of the network is down (then only an alarm)."""
        from safehold.ha.failover_agent import watch_for

        # with the cluster's failover policy (services.cluster_settings); kept for its gateway and witnesses
        self._watch = watch_for(self, settings or self.rt.settings)
        return self._watch

    def _primary_engine(self) -> AsyncEngine:
        if self._primary_db is None:
            try:
                target = primary_target(self.rt.settings)
            except DatabaseError as exc:
                raise SafeholdError(f"{exc.message}: the audit spool cannot be shipped") from None
            self._primary_db = make_engine(target, pool_size=1, connect_timeout=5)
        return self._primary_db

    async def ship_audit(self) -> None:
        if self.rt.fence is not None or self.rt.spool is None or not self.rt.spool.backlog().pending:
            return
        try:
            shipped = await ship(self.rt.spool, emergency_log.shipper(self._primary_engine()))
        except SafeholdError:
            raise
        except Exception as exc:  # noqa: BLE001 - the primary database is down: keep the backlog
            self.last_ship_error = type(exc).__name__
            raise SafeholdError(f"audit spool not shipped yet (primary database unreachable: "
                                f"{type(exc).__name__})") from None
        self.last_ship_error = None
        log.info("shipped %d audit record(s) to the primary database", shipped)
