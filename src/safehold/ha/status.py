"""The HA view of the cluster, as one server sees it: servers, databases, HA and replication status.

:func:`local_report` is what this server says about itself to its peers (``GET /api/v1/ha/local``);
:func:`cluster_view` gathers the registry, this server's database and every peer's report into a
:class:`ClusterView` (``GET /api/v1/ha/status``, the HA monitor, the HA page and ``safehold ha status``)."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from safehold.config import Settings
from safehold.domain import ServerRole
from safehold.errors import DatabaseError
from safehold.ha.failover_inputs import InputState
from safehold.ha.patroni import EngineView, read_engine
from safehold.ha.peers import (
    AlarmReport,
    BacklogReport,
    DatabaseReport,
    FenceReport,
    LeaseReport,
    LocalReport,
    PeerClient,
)
from safehold.ha.policy import (
    Health,
    Liveness,
    ReplicaObservation,
    Thresholds,
    ha_status,
    replication_status,
)
from safehold.runtime import Fence, Runtime, engine_managed, public_url
from safehold.runtime.writelease import clock
from safehold.storage import ha as ha_store
from safehold.storage import replication
from safehold.storage import servers as server_store
from safehold.storage.db import app_target, primary_target


def local_report(rt: Runtime, data_age: float | None, alarm: tuple[str, str] | None = None,
                 wal: tuple[bool, str] | None = None, *, promoting: bool = False,
                 inputs: Sequence[InputState] = ()) -> LocalReport:
    db = rt.settings.database
    now = clock()
    lease = rt.lease
    return LocalReport(
        server_id=rt.identity.id, server_name=rt.identity.name, role=rt.identity.role.value,
        cluster_id=rt.cluster_id, generation=rt.generation, mode=rt.mode,
        fence=FenceReport(**dataclasses.asdict(rt.fence)) if rt.fence is not None else None,
        database=DatabaseReport(db.host, db.port, db.mode,
                                "replica" if rt.identity.role == ServerRole.READONLY else "primary"),
        audit_backlog=BacklogReport.from_json(rt.spool.backlog().as_dict()) if rt.spool is not None else None,
        data_age_seconds=data_age, url=public_url(rt.settings),
        alarm=AlarmReport(*alarm) if alarm else None,
        database_ok=wal is not None, wal_lsn=wal[1] if wal is not None else None,
        write_lease=None if lease is None else LeaseReport(lease.duration, lease.valid(now),
                                                           round(lease.remaining(now), 3),
                                                           lease.how.value if lease.how else None),
        promoting=promoting, failover_inputs=tuple(inputs),
    )


async def wal_now(rt: Runtime, timeout: float) -> tuple[bool, str] | None:
    """This server's database's WAL position, or None when it does not answer within ``timeout``."""
    try:
        async with asyncio.timeout(timeout):
            async with rt.read() as conn:
                return await replication.wal_position(conn)
    except (DatabaseError, TimeoutError):
        return None


E = TypeVar("E", Health, Liveness)
#: the subject of the HA and replication status of the read-only servers' replicas, summed up, in the HA
#: monitor's snapshot (its events say "HA status of read-only replicas is Failed")
REPLICAS = "read-only replicas"


def _overall(statuses: list[Health]) -> Health:
    """Alive only when there is a replica and every replica is Alive."""
    return Health.ALIVE if statuses and Health.FAILED not in statuses else Health.FAILED


# --- the cluster view: what GET /api/v1/ha/status answers, and what the HA monitor compares -------------------


@dataclass(frozen=True)
class ServerStatus:
    """A registered server as this one sees it."""

    id: str
    name: str
    role: str
    status: Liveness
    hostname: str | None = None
    dns_name: str | None = None
    url: str | None = None
    port: int | None = None
    sessions: int = 0
    # when it last answered: its own heartbeat (a primary or secondary writes it), or, for a read-only server
    # (it cannot write its row), when the HA monitor last got an answer from it; ISO 8601
    last_seen: str | None = None
    # as the HA monitor confirmed it (held for ha.status_confirm_checks checks); None: not confirmed yet
    confirmed_status: Liveness | None = None
    # a read-only server's automatic failover inputs (gateway, witnesses) as its watch confirmed them
    failover_inputs: tuple[InputState, ...] = ()

    @property
    def active(self) -> bool:
        return self.status is Liveness.ACTIVE

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "hostname": self.hostname, "dns_name": self.dns_name,
                "role": self.role, "url": self.url, "port": self.port, "status": self.status.value,
                "confirmed_status": self.confirmed_status.value if self.confirmed_status is not None else None,
                "sessions": self.sessions, "last_seen": self.last_seen,
                "failover_inputs": [i.to_json() for i in self.failover_inputs]}


@dataclass(frozen=True)
class DatabaseStatus:
    """The primary database, or a read-only server's replica, and how many app servers use it."""

    host: str
    port: int
    role: str  # primary or replica
    servers_configured: int
    servers_active: int


@dataclass(frozen=True)
class ServerBacklog:
    """One server's audit spool (a read-only server's, or a fenced one's), as the server itself reports it
    (``GET /ha/local``; this server: its own spool).  ``reported`` False: it did not answer, so its backlog is
    unknown — not zero."""

    id: str
    name: str
    reported: bool
    pending: int | None = None
    shipped: int | None = None  # the highest record number known to be in the primary database
    oldest_pending: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class BacklogTotal:
    """The audit records of the read-only (and fenced) servers not yet in the primary database: ``pending`` and
    ``shipped`` sum what the servers in ``servers`` reported; one that did not answer is listed there with
    ``reported`` False and counted in no sum, so two servers' views agree on what they know and say what
    they do not."""

    pending: int = 0
    shipped: int = 0
    oldest_pending: str | None = None
    servers: tuple[ServerBacklog, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"pending": self.pending, "shipped": self.shipped, "oldest_pending": self.oldest_pending,
                "servers": [dataclasses.asdict(b) for b in self.servers]}


@dataclass(frozen=True)
class ConfirmedStatus:
    """The HA and replication status as the HA monitor confirmed them: a new state counts once it held for
    ``confirm_checks`` consecutive checks (what is logged and alerted); the view's own ``ha_status`` and
    ``replication_status`` are the latest check's, which may flap."""

    ha_status: Health | None
    replication_status: Health | None
    confirm_checks: int

    def to_json(self) -> dict[str, Any]:
        return {"ha_status": self.ha_status.value if self.ha_status is not None else None,
                "replication_status": self.replication_status.value if self.replication_status is not None else None,
                "confirm_checks": self.confirm_checks}


@dataclass(frozen=True)
class ClusterAlarm:
    server: str
    condition: str
    message: str


@dataclass(frozen=True)
class ThisServer:
    id: str
    name: str
    role: str
    mode: str


@dataclass(frozen=True)
class ClusterView:
    """The cluster as one server sees it: ``GET /api/v1/ha/status`` answers :meth:`to_json`."""

    cluster_id: str
    generation: int
    server: ThisServer
    fence: Fence | None
    servers: tuple[ServerStatus, ...]
    databases: tuple[DatabaseStatus, ...]
    ha_status: Health | None  # None: the cluster has no read-only server
    replication_status: Health | None
    replication_lag_bytes: int | None
    replication_lag_seconds: float | None
    audit_backlog: BacklogTotal
    alarms: tuple[ClusterAlarm, ...]
    engine: EngineView | None = None  # the external HA engine's members (ha.patroni_urls), beside the servers
    confirmed: ConfirmedStatus | None = None  # None: the HA monitor has confirmed nothing yet

    def to_json(self) -> dict[str, Any]:
        return {
            "cluster_id": self.cluster_id,
            "generation": self.generation,
            "server": dataclasses.asdict(self.server),
            "fence": dataclasses.asdict(self.fence) if self.fence is not None else None,
            "servers": [x.to_json() for x in self.servers],
            "databases": [dataclasses.asdict(x) for x in self.databases],
            "ha_status": self.ha_status.value if self.ha_status is not None else None,
            "replication_status": self.replication_status.value if self.replication_status is not None else None,
            "confirmed": self.confirmed.to_json() if self.confirmed is not None else None,
            "replication_lag_bytes": self.replication_lag_bytes,
            "replication_lag_seconds": self.replication_lag_seconds,
            "audit_backlog": self.audit_backlog.to_json(),
            "alarms": [dataclasses.asdict(x) for x in self.alarms],
            "engine": self.engine.to_json() if self.engine is not None else None,
        }


async def cluster_status(rt: Runtime, *, live_peers: dict[str, bool] | None = None,
                         own_alarm: tuple[str, str] | None = None, ask_self: bool = False,
                         own_inputs: Sequence[InputState] = ()) -> dict[str, Any]:
    """:func:`cluster_view` as JSON (the pages and the CLI read it so)."""
    return (await cluster_view(rt, live_peers=live_peers, own_alarm=own_alarm, ask_self=ask_self,
                               own_inputs=own_inputs)).to_json()


async def cluster_view(rt: Runtime, *, live_peers: dict[str, bool] | None = None,
                       own_alarm: tuple[str, str] | None = None, ask_self: bool = False,
                       own_inputs: Sequence[InputState] = ()) -> ClusterView:
    """Servers (active or not), databases, HA and replication status, the read-only servers' audit backlog
    and the alarms.  ``own_alarm``, ``own_inputs``: this server's own alarm and automatic failover inputs
    (its agent's); ``ask_self``: ask this server's own /ha/local too (a command beside the running server has
    no agent)."""
    s = rt.settings
    now = dt.datetime.now(dt.UTC)
    stale_after = dt.timedelta(seconds=max(3 * s.ha.check_interval, 5))
    # an HA engine's replicas are its own: their status comes from the engine (ha.patroni_urls), not from
    # pg_stat_replication, whose details an unprivileged login cannot see
    engine_run = engine_managed(s) and not rt.readonly
    async with rt.read() as conn:
        rows = await server_store.all_servers(conn)
        sessions = await server_store.session_counts(conn)
        view = await replication.replica_view(conn) if rt.readonly else None
        primary = None if rt.readonly or engine_run else await replication.primary_view(conn)
        stored = await ha_store.read_snapshot(conn)
    async with PeerClient.for_settings(s) as client:
        # every server's own report: read-only servers' databases and backlogs, and every server's alarm
        asked = [r.url if r.url and (r.id != rt.identity.id or ask_self) else None for r in rows]
        reports, engine = await asyncio.gather(asyncio.gather(*(client.local(u) if u else _nothing() for u in asked)),
                                               _engine(rt))
    servers: list[ServerStatus] = []
    alarms: list[ClusterAlarm] = []
    if own_alarm is not None:
        alarms.append(ClusterAlarm(rt.identity.name, *own_alarm))
    for r, report in zip(rows, reports, strict=True):
        alarm = report.alarm if report is not None else None
        if alarm is not None and not (r.id == rt.identity.id and own_alarm is not None):
            alarms.append(ClusterAlarm(r.name, alarm.condition, alarm.message))
        if r.id == rt.identity.id:
            active = True
        elif r.role == ServerRole.READONLY:
            active = report is not None
        elif live_peers is not None and r.id in live_peers:
            active = live_peers[r.id]
        else:
            active = r.last_heartbeat is not None and now - r.last_heartbeat < stale_after
        servers.append(ServerStatus(
            id=r.id, name=r.name, hostname=r.hostname, dns_name=r.dns_name, role=r.role, url=r.url, port=r.port,
            status=Liveness.ACTIVE if active else Liveness.INACTIVE, sessions=sessions.get(r.id, 0),
            last_seen=now.isoformat() if r.id == rt.identity.id else
            (r.last_heartbeat.isoformat() if r.last_heartbeat else None),
            confirmed_status=_confirmed(stored, "servers", r.name, Liveness),
            failover_inputs=tuple(own_inputs) if r.id == rt.identity.id and own_inputs
            else report.failover_inputs if report is not None else (),
        ))

    replicas: list[ReplicaObservation] = []
    if primary is not None:
        for link in primary.standbys:
            replicas.append(ReplicaObservation(link.application_name or link.slot_name or "replica", link.connected,
                                               link.state, link.lag_bytes, link.replay_lag_seconds))
    elif view is not None:
        replicas.append(ReplicaObservation(rt.identity.name, view.streaming, "streaming" if view.streaming
                                           else view.receiver_status, view.replay_backlog_bytes,
                                           view.replay_delay_seconds if not view.streaming else 0.0))
    elif engine is not None and engine.reachable:
        replicas.extend(m.observation() for m in engine.members if not m.is_leader)
    thresholds = Thresholds(s.ha.lag_threshold_seconds, s.ha.lag_threshold_bytes)
    ha = [ha_status(r) for r in replicas]
    rep = [replication_status(r, thresholds) for r in replicas]
    readonly_reports = [rep_ for r, rep_ in zip(rows, reports, strict=True) if rep_ is not None
                        and r.role == ServerRole.READONLY]
    active_app = sum(1 for x in servers if x.active and x.role != ServerRole.READONLY)
    configured_app = sum(1 for x in servers if x.role != ServerRole.READONLY)
    db_host, db_port = _primary_address(s, rt.readonly)
    databases = [DatabaseStatus(db_host, db_port, "primary", configured_app, active_app)]
    for report in readonly_reports:
        is_up = any(x.id == report.server_id and x.active for x in servers)
        databases.append(DatabaseStatus(report.database.host, report.database.port, "replica", 1, 1 if is_up else 0))
    backlog = _backlog(rt, rows, reports)
    has_replicas = bool(replicas) or (not engine_run and any(x.role == ServerRole.READONLY for x in servers))
    return ClusterView(
        cluster_id=rt.cluster_id, generation=rt.generation,
        server=ThisServer(rt.identity.id, rt.identity.name, rt.identity.role.value, rt.mode),
        fence=rt.fence, servers=tuple(servers), databases=tuple(databases),
        ha_status=_overall(ha) if has_replicas else None,
        replication_status=_overall(rep) if has_replicas else None,
        replication_lag_bytes=max((r.lag_bytes or 0 for r in replicas), default=None),
        replication_lag_seconds=None if engine_run else max((r.lag_seconds or 0.0 for r in replicas), default=None),
        audit_backlog=backlog, alarms=tuple(alarms), engine=engine,
        confirmed=None if stored is None else ConfirmedStatus(
            _confirmed(stored, "ha", REPLICAS, Health), _confirmed(stored, "replication", REPLICAS, Health),
            s.ha.status_confirm_checks),
    )


def _confirmed(stored: dict[str, Any] | None, category: str, subject: str, kind: type[E]) -> E | None:
    """A subject's confirmed state in the HA monitor's stored snapshot (:mod:`safehold.ha.monitor`), or None."""
    part = (stored or {}).get(category)
    value = part.get(subject) if isinstance(part, dict) else None
    try:
        return kind(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _backlog(rt: Runtime, rows: list[Any], reports: list[LocalReport | None]) -> BacklogTotal:
    own = None
    if rt.spool is not None:
        b = BacklogReport.from_json(rt.spool.backlog().as_dict())
        own = ServerBacklog(rt.identity.id, rt.identity.name, True, b.pending, b.shipped, b.oldest_pending, b.error)
    return backlog_total(own, rows, reports)


def backlog_total(own: ServerBacklog | None, rows: Sequence[Any], reports: Sequence[LocalReport | None]) -> BacklogTotal:
    """Every spool of the cluster once: this server's own (``own``, read here and never also through its report: a
    command beside the running server asks that too), each read-only server's as it reported it or unknown
    when it did not answer, and a fenced server's as it reported it.  ``rows``: the registry (``id``, ``name``,
    ``role``), ``reports``: each one's ``/ha/local`` answer (None: none)."""
    spools = [own] if own is not None else []
    for r, report in zip(rows, reports, strict=True):
        if own is not None and r.id == own.id:
            continue
        if report is not None and (report.audit_backlog is not None or r.role == ServerRole.READONLY):
            b = report.audit_backlog or BacklogReport()
            spools.append(ServerBacklog(r.id, r.name, True, b.pending, b.shipped, b.oldest_pending, b.error))
        elif r.role == ServerRole.READONLY and report is None:
            spools.append(ServerBacklog(r.id, r.name, False))
    known = [b for b in spools if b.reported]
    return BacklogTotal(sum(b.pending or 0 for b in known), sum(b.shipped or 0 for b in known),
                        min((b.oldest_pending for b in known if b.oldest_pending), default=None), tuple(spools))


def _primary_address(s: Settings, readonly: bool) -> tuple[str, int]:
    """The primary database's address as this server knows it: an engine's members (the URL's hosts; the
    primary is whichever of them is writable), the bundled primary, or what a read-only server was told."""
    if s.database.mode == "external":
        members = primary_target(s).hosts() if readonly else app_target(s).hosts()
        return ",".join(h for h, _ in members), members[0][1] if members else 0
    if readonly:
        return s.ha.primary_db_host or "", s.ha.primary_db_port or 0
    return s.database.host, s.database.port


async def _nothing() -> LocalReport | None:
    return None


async def _engine(rt: Runtime) -> EngineView | None:
    """The external HA engine's view, when ``ha.patroni_urls`` names one."""
    ha = rt.settings.ha
    if not ha.patroni_urls:
        return None
    ca = rt.settings.path(ha.patroni_ca) if ha.patroni_ca is not None else None
    return await read_engine(ha.patroni_urls, timeout=ha.peer_timeout, ca=ca)


@dataclass(frozen=True, slots=True)
class HaEvent:
    """One logged HA transition (HA/replication Alive/Failed, a server active or inactive, StandbyOffline …)."""

    id: int
    at: dt.datetime
    kind: str
    subject: str
    message: str
    reported_by: str | None
    args: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "at": self.at.isoformat(), "kind": self.kind, "subject": self.subject,
                "message": self.message, "reported_by": self.reported_by, "args": list(self.args)}


def _event(r: Any) -> HaEvent:
    return HaEvent(r.id, r.at, r.kind, r.subject, r.message, r.reported_by, tuple(r.args or ()))


async def recent_events(rt: Runtime, limit: int = 100) -> list[HaEvent]:
    """The newest logged HA transitions first."""
    async with rt.read() as conn:
        rows = await ha_store.recent_events(conn, limit)
    return [_event(r) for r in rows]


async def events_page(rt: Runtime, limit: int = 100, offset: int = 0) -> tuple[list[HaEvent], int]:
    """One page of the logged HA transitions, newest first, and how many there are in all."""
    async with rt.read() as conn:
        rows = await ha_store.recent_events(conn, limit, offset)
        total = await ha_store.count_events(conn)
    return [_event(r) for r in rows], total
