"""The HA agent of one server: the loops that gather observations and carry out decisions.

- primary / secondary: heartbeat into the server registry;
- read-only: check the other app servers over HTTPS (to redirect users to them, or serve
  them itself in read-only emergency mode), and ship its audit spool to the primary database
  whenever that database is reachable.

Each loop re-reads the truth every cycle and never raises: an error is logged and the next cycle
tries again.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import ssl
from collections.abc import Sequence

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from safehold.audit.chain import ChainedRecord
from safehold.audit.spool import ship
from safehold.domain import ServerRole
from safehold.errors import SafeholdError
from safehold.ha.lease import ScheduleLease, run_schedules
from safehold.ha.monitor import monitor_once
from safehold.ha.policy import PeerObservation, redirect_target
from safehold.services.runtime import Runtime
from safehold.storage import audit as audit_store
from safehold.storage import replication
from safehold.storage import servers as server_store
from safehold.storage.db import DbTarget, app_target

log = logging.getLogger(__name__)


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
        ctx = ssl.create_default_context(cafile=str(rt.settings.path(rt.settings.http.tls_ca)))
        self._http = httpx.AsyncClient(verify=ctx, timeout=rt.settings.ha.peer_timeout)

    @property
    def interval(self) -> float:
        return self.rt.settings.ha.check_interval

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.rt.readonly:
            self._tasks.append(loop.create_task(self._every(self.check_peers), name="ha-peers"))
            self._tasks.append(loop.create_task(self._every(self.ship_audit), name="ha-audit-shipper"))
        else:
            self._tasks.append(loop.create_task(self._every(self.heartbeat), name="ha-heartbeat"))
            # schedules (the HA monitor) run on exactly one primary/secondary: the lease holder
            self.lease = ScheduleLease(self.rt.engine, server_id=self.rt.identity.id, role=self.rt.identity.role,
                                       poll_interval=self.interval)
            jobs = {"ha-monitor": (self.interval, self.monitor)}
            if self.rt.settings.backup.every_minutes:
                jobs["backup"] = (self.rt.settings.backup.every_minutes * 60.0, self.backup)
            self._tasks.append(loop.create_task(run_schedules(self.lease, jobs), name="ha-schedules"))

    async def monitor(self) -> None:
        await monitor_once(self.rt)

    async def backup(self) -> None:
        from safehold.services.backup import scheduled_backup

        out = await scheduled_backup(self.rt)
        log.info("scheduled backup written to %s", out)

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except asyncio.CancelledError:
                pass
        self._tasks.clear()
        if self.lease is not None:
            await self.lease.close()
        await self._http.aclose()
        if self._primary_db is not None:
            await self._primary_db.dispose()

    async def _every(self, step) -> None:  # type: ignore[no-untyped-def]
        while True:
            try:
                await step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - reconcile next cycle; never die
                log.warning("%s: %s", step.__name__, exc if isinstance(exc, SafeholdError) else type(exc).__name__)
            await asyncio.sleep(self.interval)

    # --- primary / secondary ------------------------------------------------------------

    async def heartbeat(self) -> None:
        async with self.rt.write() as conn:
            await server_store.heartbeat(conn, self.rt.identity.id)

    # --- read-only ----------------------------------------------------------------------

    async def check_peers(self) -> None:
        async with self.rt.read() as conn:
            rows = await server_store.all_servers(conn)
            view = await replication.replica_view(conn)
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

    async def _send(self, records: Sequence[ChainedRecord]) -> None:
        async with self._primary_engine().begin() as conn:
            await audit_store.insert_shipped(conn, records)

    async def ship_audit(self) -> None:
        if self.rt.spool is None or not self.rt.spool.backlog().pending:
            return
        try:
            shipped = await ship(self.rt.spool, self._send)
        except SafeholdError:
            raise
        except Exception as exc:  # noqa: BLE001 - the primary database is down: keep the backlog
            self.last_ship_error = type(exc).__name__
            raise SafeholdError(f"audit spool not shipped yet (primary database unreachable: "
                                f"{type(exc).__name__})") from None
        self.last_ship_error = None
        log.info("shipped %d audit record(s) to the primary database", shipped)
