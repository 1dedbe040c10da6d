"""The HA agent of one server: the loops that gather observations and carry out decisions.

- primary / secondary: heartbeat into the server registry;
- read-only: check the other app servers over HTTPS (to redirect users to them, or serve
  them itself in read-only emergency mode), and ship its audit spool to the primary database
  whenever that database is reachable.

- fenced (superseded by a newer primary): redirect users to the acting primary, write nothing.

Before each heartbeat a primary/secondary asks its peers for their generation (fencing, see
services.fencing).  When the server's mode changes — promoted, fenced, turned into a replica by a
switchover — its loops are replaced by those of the new mode.

Each loop re-reads the truth every cycle and never raises: an error is logged and the next cycle
tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import ssl
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from safehold.audit.spool import ship
from safehold.config import CONFIG_NAME, load_settings
from safehold.domain import ServerRole
from safehold.errors import DatabaseError, SafeholdError
from safehold.ha.lease import ScheduleLease, run_schedules
from safehold.ha.monitor import monitor_once
from safehold.ha.policy import EventKind, PeerObservation, redirect_target
from safehold.services.fencing import (
    fence_database,
    find_newer_primary,
    peer_reports,
    superseded_by,
)
from safehold.services.runtime import Runtime, in_cluster, public_url
from safehold.storage import audit as audit_store
from safehold.storage import cluster as cluster_store
from safehold.storage import replication
from safehold.storage import servers as server_store
from safehold.storage.db import DbTarget, app_target

log = logging.getLogger(__name__)


class ModeChanged(Exception):  # noqa: N818 - a signal, not an error
    """The server's mode changed: its loops are replaced by those of the new mode."""


def data_age(view: replication.ReplicaView, now: dt.datetime) -> float | None:
    """How old a replica's data may be: nothing while it streams and has replayed all it received;
    else the time since it last heard from the primary."""
    if not view.in_recovery:
        return None
    if view.streaming and not view.replay_backlog_bytes:
        return 0.0
    if view.last_msg_receipt_time is not None:
        return max(0.0, (now - view.last_msg_receipt_time).total_seconds())
    return view.replay_delay_seconds


class HaAgent:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.peers: list[PeerObservation] = []
        self.redirect: PeerObservation | None = None
        self.last_ship_error: str | None = None
        self.data_age_seconds: float | None = None  # how stale a read-only server's data may be
        self._tasks: list[asyncio.Task[None]] = []
        self._primary_db: AsyncEngine | None = None
        self.lease: ScheduleLease | None = None
        self.alerts: Any = None  # the alert dispatcher (safehold.alerts), set by the app
        self._promote_lock = asyncio.Lock()
        self._config_mtime: int | None = None
        self.alarm: tuple[str, str] | None = None  # a raised alarm only this server knows of (condition, message)
        ctx = ssl.create_default_context(cafile=str(rt.settings.path(rt.settings.http.tls_ca)))
        self._http = httpx.AsyncClient(verify=ctx, timeout=rt.settings.ha.peer_timeout)

    @property
    def interval(self) -> float:
        return self.rt.settings.ha.check_interval

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.rt.fence is not None:
            self._tasks.append(loop.create_task(self._every(self.fenced_watch), name="ha-fenced"))
        elif self.rt.readonly:
            self._tasks.append(loop.create_task(self._every(self.check_peers), name="ha-peers"))
            self._tasks.append(loop.create_task(self._every(self.ship_audit), name="ha-audit-shipper"))
            from safehold.services.cluster_settings import follow_failover

            # the automatic failover watch, with the cluster's policy as this replica holds it (re-read)
            self._tasks.append(loop.create_task(follow_failover(self.rt, self._failover_watch), name="ha-failover"))
        else:
            self._tasks.append(loop.create_task(self._every(self.heartbeat, retry=0.5), name="ha-heartbeat"))
            # schedules (the HA monitor) run on exactly one primary/secondary: the lease holder
            self.lease = ScheduleLease(self.rt.engine, server_id=self.rt.identity.id, role=self.rt.identity.role,
                                       poll_interval=self.interval)
            jobs = {"ha-monitor": (self.interval, self.monitor)}
            if self.rt.settings.backup.every_minutes:
                jobs["backup"] = (self.rt.settings.backup.every_minutes * 60.0, self.backup)
            if self.alerts is not None:  # channels may be configured later (cluster settings)
                jobs["alerts"] = (self.interval, self.relay_alerts)
            self._tasks.append(loop.create_task(run_schedules(self.lease, jobs), name="ha-schedules"))
            from safehold.ha.syncrep import SyncGuard, guard_runs_on

            if guard_runs_on(self.rt.settings):  # synchronous mode, on the server of the primary database
                guard = SyncGuard(self.rt.settings, self.rt.identity.id)
                self._tasks.append(loop.create_task(guard.run_forever(), name="ha-sync-guard"))

    async def _restart(self) -> None:
        """Replace the loops by those of the server's new mode."""
        await self._stop_loops()
        self.redirect = None
        self.peers = []
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
        from safehold.services.backup import scheduled_backup

        out = await scheduled_backup(self.rt)
        log.info("scheduled backup written to %s", out)

    async def stop(self) -> None:
        await self._stop_loops()
        await self._http.aclose()
        if self._primary_db is not None:
            await self._primary_db.dispose()

    async def _every(self, step, *, retry: float | None = None) -> None:  # type: ignore[no-untyped-def]
        """Run ``step`` every check interval; after a failure, again after ``retry`` seconds if given (the
        heartbeat: a primary whose database went away notices at once what it came back as).  The same
        failure is logged once per half minute, not every cycle."""
        loop = asyncio.get_running_loop()
        said, said_at = "", 0.0
        while True:
            failed = False
            try:
                await step()
            except ModeChanged:
                loop.create_task(self._restart(), name="ha-restart")
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - reconcile next cycle; never die
                failed = True
                text = str(exc) if isinstance(exc, SafeholdError) else type(exc).__name__
                if text != said or loop.time() - said_at > 30:
                    log.warning("%s: %s", step.__name__, text)
                    said, said_at = text, loop.time()
            else:
                said = ""
            await asyncio.sleep(retry if failed and retry is not None else self.interval)

    # --- primary / secondary ------------------------------------------------------------

    async def heartbeat(self) -> None:
        await self.check_generation()
        role = await self._adopted_role()
        try:
            async with self.rt.write() as conn:
                if role is not None:
                    await server_store.set_role(conn, self.rt.identity.id, role)
                await server_store.heartbeat(conn, self.rt.identity.id)
        except DatabaseError:
            await self._follow_database()
            raise

    async def _adopted_role(self) -> ServerRole | None:
        """A standalone server that 'ha pack' or 'ha add-secondary' made a primary (in its settings file)
        is the primary from now on, not only from its next start."""
        if self.rt.identity.role != ServerRole.STANDALONE:
            return None
        path = self.rt.settings.data_dir / CONFIG_NAME
        try:
            mtime = path.stat().st_mtime_ns
        except OSError:
            return None
        if mtime == self._config_mtime:
            return None
        self._config_mtime = mtime
        settings = await asyncio.to_thread(load_settings, self.rt.settings.data_dir)
        if settings.server.role != ServerRole.PRIMARY:
            return None
        self.rt.settings = settings
        self.rt.identity = dataclasses.replace(self.rt.identity, role=ServerRole.PRIMARY)
        log.info("this server is now the primary of cluster %s", settings.ha.cluster_id)
        return ServerRole.PRIMARY

    async def check_generation(self) -> None:
        """Fencing: a peer of this cluster with a higher generation superseded this server."""
        if not in_cluster(self.rt.settings):
            return
        async with self.rt.read() as conn:
            row = await cluster_store.get(conn)
            urls = [r.url for r in await server_store.all_servers(conn) if r.id != self.rt.identity.id and r.url]
        if row is None:
            return
        self.rt.generation = row.generation
        fence = await find_newer_primary(self.rt.settings, row.cluster_id, row.generation, urls, self._http)
        if fence is None:
            return
        await self.rt.become_fenced(fence)
        await asyncio.to_thread(fence_database, self.rt.settings)
        self.publish(EventKind.FENCED, self.rt.identity.name, fence.message(),
                     (self.rt.identity.name, fence.acting_primary_name))
        raise ModeChanged()

    async def _follow_database(self) -> None:
        """A primary whose bundled database became a replica (switchover, rejoin) follows it: it reads its
        settings again and, when they say read-only, carries on as a read-only server."""
        try:
            async with self.rt.read() as conn:
                view = await replication.replica_view(conn)
        except DatabaseError:
            return
        if not view.in_recovery:
            return
        settings = await asyncio.to_thread(load_settings, self.rt.settings.data_dir)
        if settings.server.role == ServerRole.READONLY:
            await self.rt.become_readonly(settings)
            raise ModeChanged()

    def publish(self, kind: EventKind, subject: str, message: str, args: tuple[str, ...]) -> None:
        """An event this server cannot log in a database (fenced, or a read-only server): alerts only."""
        log.warning("HA event %s: %s", kind.value, message)
        dispatcher = self.alerts
        if dispatcher is not None:
            from safehold.alerts.events import AlertEvent

            dispatcher.publish(AlertEvent.local(kind.value, subject, message, args, self.rt))

    # --- fenced -------------------------------------------------------------------------

    async def fenced_watch(self) -> None:
        """Redirect users to the acting primary while it answers; notice an even newer generation; follow
        the database when an operator has rejoined it as a replica."""
        fence = self.rt.fence
        if fence is None:
            raise ModeChanged()
        await self._follow_database()
        ok = await self._healthy(fence.acting_primary_url) if fence.acting_primary_url else False
        self.redirect = (PeerObservation(fence.acting_primary_id, fence.acting_primary_name, ServerRole.PRIMARY,
                                         fence.acting_primary_url, True) if ok else None)
        reports = await peer_reports(self.rt.settings, [fence.acting_primary_url] if fence.acting_primary_url else [],
                                     self._http)
        newer = superseded_by(self.rt.cluster_id, fence.generation, reports)
        if newer is not None:
            await self.rt.become_fenced(newer)

    # --- read-only ----------------------------------------------------------------------

    async def check_peers(self) -> None:
        async with self.rt.read() as conn:
            rows = await server_store.all_servers(conn)
            view = await replication.replica_view(conn)
            row = await cluster_store.get(conn)
        if row is not None:
            self.rt.generation = row.generation
        if not view.in_recovery:
            await self._take_over(row)
        self.data_age_seconds = data_age(view, dt.datetime.now(dt.UTC))
        candidates = [r for r in rows if r.id != self.rt.identity.id and r.url
                      and r.role in (ServerRole.PRIMARY, ServerRole.SECONDARY, ServerRole.STANDALONE)]
        results = await asyncio.gather(*(self._healthy(r.url) for r in candidates))
        self.peers = [
            PeerObservation(r.id, r.name, ServerRole.PRIMARY if r.role == ServerRole.STANDALONE else ServerRole(r.role),
                            r.url, ok)
            for r, ok in zip(candidates, results, strict=True)
        ]
        target = redirect_target(self.peers)
        if (target and target.server_id) != (self.redirect and self.redirect.server_id):
            log.warning("read-only server: %s", f"redirecting users to {target.name} ({target.url})" if target
                        else "no primary or secondary is active: serving in read-only emergency mode")
        self.redirect = target

    async def _take_over(self, row: cluster_store.ClusterRow | None) -> None:
        """The replica was promoted (by 'safehold ha promote' while this server runs): once the promotion
        names this server the acting primary and its settings say so, it carries on as the primary."""
        if row is None or row.acting_primary != self.rt.identity.id:
            return
        settings = await asyncio.to_thread(load_settings, self.rt.settings.data_dir)
        if settings.server.role != ServerRole.PRIMARY:
            return
        await self.rt.become_primary(settings, row.generation)
        raise ModeChanged()

    async def promote_self(self, *, reason: EventKind, wait_lsn: str | None = None, note: str = "",
                           timeout: float = 30) -> int:
        """Promote this read-only server in-process (the peer API for a switchover, or the automatic
        failover policy); returns the new generation."""
        from safehold.ha.promote import promote_database, record_promotion, write_as_primary

        async with self._promote_lock:
            if not self.rt.readonly or self.rt.fence is not None:
                raise SafeholdError("this server is not a read-only server; nothing to promote")
            if wait_lsn:
                await self._wait_replayed(wait_lsn, timeout)
            await asyncio.to_thread(promote_database, self.rt.settings, lambda m: log.warning("promotion: %s", m))
            async with self.rt.engine.begin() as conn:
                promotion = await record_promotion(conn, self.rt.settings, url=public_url(self.rt.settings),
                                                   reason=reason, note=note)
            settings = await asyncio.to_thread(write_as_primary, self.rt.settings)
            await self.rt.become_primary(settings, promotion.generation)
            asyncio.get_running_loop().create_task(self._restart(), name="ha-restart")
            return promotion.generation

    def _failover_watch(self, settings: Any = None) -> Any:
        """Automatic failover (opt-in): ping the primary; promote this server after the configured number of
        failed rounds, unless its own side of the network is down (then only an alarm)."""
        from safehold.ha.failover_agent import FailoverWatch, registry_primary_url

        settings = settings or self.rt.settings  # with the cluster's failover policy (services.cluster_settings)
        n = settings.ha.failover.ping_iterations

        async def promote() -> None:
            await self.promote_self(reason=EventKind.FAILOVER,
                                    note=f"automatic failover after {n} failed pings of the primary")

        async def raise_alarm(condition: str, message: str) -> None:
            self.alarm = (condition, message)
            self.publish(EventKind.RAISE_ALARM, self.rt.identity.name, message, (condition, message))

        async def clear_alarm(text: str) -> None:
            self.alarm = None
            self.publish(EventKind.CLEAR_ALARM, self.rt.identity.name, text, (text,))

        return FailoverWatch(settings, promote=promote, raise_alarm=raise_alarm, clear_alarm=clear_alarm,
                             primary_url=registry_primary_url(self.rt.engine))

    async def _wait_replayed(self, lsn: str, timeout: float) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            async with self.rt.read() as conn:
                done = (await conn.execute(text("SELECT pg_last_wal_replay_lsn() >= CAST(:lsn AS pg_lsn)"),
                                           {"lsn": lsn})).scalar()
            if done:
                return
            if asyncio.get_running_loop().time() > deadline:
                raise SafeholdError(f"the replica did not replay up to {lsn} within {timeout:g} s; not promoting")
            await asyncio.sleep(0.05)

    async def _healthy(self, url: str) -> bool:
        try:
            r = await self._http.get(f"{url.rstrip('/')}/api/v1/health")
            return r.status_code == 200
        except (httpx.HTTPError, ssl.SSLError, OSError):
            return False

    def _primary_engine(self) -> AsyncEngine:
        if self._primary_db is None:
            s = self.rt.settings
            if not s.ha.primary_db_host or not s.ha.primary_db_port:
                raise SafeholdError("ha.primary_db_host/port are not set: the audit spool cannot be shipped")
            local = app_target(s)
            target = DbTarget(s.ha.primary_db_host, s.ha.primary_db_port, local.dbname, local.user, local.password,
                              local.sslrootcert)
            self._primary_db = create_async_engine(target.sqlalchemy_url(), pool_size=1, max_overflow=0,
                                                   pool_pre_ping=True, connect_args={"connect_timeout": 5})
        return self._primary_db

    async def ship_audit(self) -> None:
        if self.rt.fence is not None or self.rt.spool is None or not self.rt.spool.backlog().pending:
            return
        try:
            shipped = await ship(self.rt.spool, audit_store.shipper(self._primary_engine()))
        except SafeholdError:
            raise
        except Exception as exc:  # noqa: BLE001 - the primary database is down: keep the backlog
            self.last_ship_error = type(exc).__name__
            raise SafeholdError(f"audit spool not shipped yet (primary database unreachable: "
                                f"{type(exc).__name__})") from None
        self.last_ship_error = None
        log.info("shipped %d audit record(s) to the primary database", shipped)
