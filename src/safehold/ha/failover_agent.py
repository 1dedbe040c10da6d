"""The automatic failover executor: ping, decide (:mod:`safehold.ha.failover`), carry out.

:class:`FailoverWatch` runs on a read-only server with ``ha.failover.enabled``. Every
``ping_interval`` seconds it probes the primary database (and the primary app, for the message),
probes its gateway and witness targets in the rounds where the decision needs them, and carries out
the one action decided: promote (once: then it returns), raise or clear an alarm. Side effects are
the injected callables; it never raises (an error is logged and the next round re-reads the truth)
and it stops cleanly when its task is cancelled.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from safehold.config import Settings
from safehold.domain import ServerRole
from safehold.errors import DatabaseError
from safehold.ha.failover import (
    Action,
    Decision,
    FailoverPolicy,
    FailoverState,
    Observation,
    ReplicaReport,
    WriterReport,
    decide,
    needs_witnesses,
    validate_policy,
)
from safehold.ha.peers import PeerClient, cluster_ssl_context
from safehold.ha.probe import (
    Target,
    default_gateway,
    parse_target,
    ping_program,
    probe_database_async,
    target_reachable_async,
)
from safehold.runtime import Runtime
from safehold.storage import replication
from safehold.storage import servers as server_store
from safehold.storage.db import AsyncEngine

log = logging.getLogger(__name__)

MISCONFIGURED = "FailoverMisconfigured"
PROMOTION_FAILED = "PromotionFailed"

Promote = Callable[[], Awaitable[None]]
RaiseAlarm = Callable[[str, str], Awaitable[None]]
ClearAlarm = Callable[[str], Awaitable[None]]
DatabaseProbe = Callable[[str, int, float], Awaitable[bool]]
AppProbe = Callable[[str, float], Awaitable[bool]]
TargetProbe = Callable[[Target, float], Awaitable[bool | None]]
UrlSource = Callable[[], Awaitable[str | None]]
WriterSource = Callable[[], Awaitable[WriterReport | None]]
ReplicaSource = Callable[[], Awaitable[ReplicaReport | None]]


@dataclass(frozen=True)
class Probes:
    """How the watch reaches things (tests replace them)."""

    database: DatabaseProbe = probe_database_async
    app: AppProbe | None = None  # (url, timeout); default: HTTPS verified with the cluster CA
    target: TargetProbe = target_reachable_async
    gateway: Callable[[], str | None] = default_gateway
    ping_available: Callable[[], bool] = lambda: ping_program() is not None


def registry_primary_url(engine: AsyncEngine) -> UrlSource:
    """Where the primary app answers, from the server registry in this server's (replica) database."""

    async def url() -> str | None:
        async with engine.connect() as conn:
            rows = await server_store.all_servers(conn)
        return next((r.url for r in rows if r.role == ServerRole.PRIMARY and r.url), None)

    return url


class FailoverWatch:
    def __init__(self, settings: Settings, *, promote: Promote, raise_alarm: RaiseAlarm, clear_alarm: ClearAlarm,
                 primary_url: UrlSource | None = None, probes: Probes | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 writer: WriterSource | None = None, replica: ReplicaSource | None = None,
                 clock: Callable[[], float] = time.monotonic, state: FailoverState | None = None) -> None:
        self.settings = settings
        self.section = settings.ha.failover
        self._timeout = min(settings.ha.peer_timeout, self.section.ping_interval)
        self.policy = FailoverPolicy.from_section(self.section, probe_timeout=self._timeout,
                                                  writer_lease=settings.ha.write_lease)
        self._writer = writer
        self._replica = replica
        self.state = state or FailoverState()
        self._clock = clock
        self.rounds = 0
        self.last_decision: Decision | None = None
        self._promote = promote
        self._raise_alarm = raise_alarm
        self._clear_alarm = clear_alarm
        self._primary_url = primary_url
        self._probes = probes or Probes()
        self._sleep = sleep
        self._witnesses: list[Target] = []
        self._gateway: Target | None = None
        self._ssl: ssl.SSLContext | None = None
        self._prepared = False

    @property
    def primary_db(self) -> tuple[str | None, int | None]:
        return self.settings.ha.primary_db_host, self.settings.ha.primary_db_port

    # --- setup ---------------------------------------------------------------------------------

    def problems(self) -> list[str]:
        """Why the watch cannot run (a file edited by hand; 'safehold ha failover' refuses these)."""
        out = list(validate_policy(self.section, own_addresses=()))
        host, port = self.primary_db
        if not host or not port:
            out.append("ha.primary_db_host / ha.primary_db_port are not set: the primary database is unknown")
        return out

    def _prepare(self) -> None:
        self._prepared = True
        self._witnesses = [parse_target(t) for t in self.section.witness_targets]
        if self.section.gateway is not None:
            self._gateway = parse_target(self.section.gateway)
        else:
            gw = self._probes.gateway()
            self._gateway = Target(gw) if gw else None
        icmp = [str(t) for t in [*self._witnesses, *([self._gateway] if self._gateway else [])] if t.port is None]
        if icmp and not self._probes.ping_available():
            log.warning("automatic failover: there is no 'ping' program: %s cannot be pinged (a witness counts "
                        "as unreachable, the gateway as unknown)", ", ".join(icmp))
        if self._gateway is None and not self._witnesses:
            log.warning("automatic failover: no gateway known and no witness configured; this server cannot "
                        "tell its own network failure from the primary's")

    # --- probing -------------------------------------------------------------------------------

    async def _app_ok(self) -> bool | None:
        if self._primary_url is None:
            return None
        try:
            url = await self._primary_url()
        except Exception as exc:  # noqa: BLE001 - the app result is informational only
            log.debug("automatic failover: no primary URL: %s", exc)
            return None
        if url is None:
            return None
        if self._probes.app is not None:
            return await self._probes.app(url, self._timeout)
        if self._ssl is None:
            self._ssl = cluster_ssl_context(self.settings)
        async with PeerClient(self._ssl, self._timeout) as client:
            return await client.healthy(url)

    async def _target_ok(self, target: Target) -> bool | None:
        try:
            return await self._probes.target(target, self._timeout)
        except Exception as exc:  # noqa: BLE001 - an unreachable target
            log.debug("automatic failover: probing %s failed: %s", target, exc)
            return False

    async def _bounded(self, source: Callable[[], Awaitable[Any]] | None) -> Any:
        """What a source says within the ping timeout (None: it said nothing, or failed)."""
        if source is None:
            return None
        try:
            async with asyncio.timeout(self._timeout):
                return await source()
        except Exception as exc:  # noqa: BLE001 - no answer proves nothing more than "unknown"
            log.debug("automatic failover: %s", exc)
            return None

    async def observe(self) -> Observation:
        host, port = self.primary_db
        assert host is not None and port is not None  # checked by problems()
        now = self._clock()
        db_ok, app_ok, writer = await asyncio.gather(self._probes.database(host, port, self._timeout),
                                                     self._app_ok(), self._bounded(self._writer))
        # the replica is read after the primary's position: what arrived meanwhile counts for it
        replica = await self._bounded(self._replica)
        if not needs_witnesses(self.state, db_ok, self.policy):
            return Observation(primary_db_ok=db_ok, primary_app_ok=app_ok, now=now, writer=writer, replica=replica)
        targets: Sequence[Target] = [*self._witnesses, *([self._gateway] if self._gateway else [])]
        results = await asyncio.gather(*(self._target_ok(t) for t in targets))
        witnesses = tuple(bool(r) for r in results[:len(self._witnesses)])  # no answer: unreachable
        gateway_ok = results[len(self._witnesses)] if self._gateway else None  # no ping: unknown
        return Observation(primary_db_ok=db_ok, primary_app_ok=app_ok, gateway_ok=gateway_ok,
                           witnesses_ok=witnesses, now=now, writer=writer, replica=replica)

    # --- one round -----------------------------------------------------------------------------

    async def round(self) -> Decision:
        """Probe, decide and carry out; returns the decision (never raises but on cancellation)."""
        self.rounds += 1
        if not self._prepared:
            problems = self.problems()
            if problems:
                self.last_decision = Decision(Action.NONE, "misconfigured: " + "; ".join(problems))
                return self.last_decision
            self._prepare()
        try:
            obs = await self.observe()
        except Exception as exc:  # noqa: BLE001 - a broken probe proves nothing: skip the round
            log.error("automatic failover: probing failed, round skipped: %s", exc)
            self.last_decision = Decision(Action.NONE, f"probing failed, round skipped: {exc}")
            return self.last_decision
        before = self.state
        self.state, decision = decide(before, obs, self.policy)
        self.last_decision = decision
        if before.contact is None and self.state.contact is not None:
            log.warning("automatic failover: heard from the primary (its WAL at %s; this replica %s): the lag "
                        "guard is armed", self.state.contact.primary_lsn,
                        "streaming" if self.state.contact.streaming else "NOT streaming")
        self._log_round(before, obs, decision)
        await self._carry_out(decision)
        return decision

    def _log_round(self, before: FailoverState, obs: Observation, decision: Decision) -> None:
        if before.promoted:
            return
        host, port = self.primary_db
        if not obs.primary_db_ok:
            app = {True: "; its app answers", False: "; its app does not answer", None: ""}[obs.primary_app_ok]
            log.warning("automatic failover: ping %d/%d failed: primary database %s:%s unreachable%s",
                        self.state.consecutive_failures, self.policy.ping_iterations, host, port, app)
        elif obs.primary_db_ok and before.consecutive_failures:
            log.warning("automatic failover: primary database %s:%s reachable again after %d failed pings",
                        host, port, before.consecutive_failures)
        if decision.action is not Action.NONE:
            log.warning("automatic failover: %s: %s", decision.action.value, decision.message)

    async def _carry_out(self, decision: Decision) -> None:
        try:
            if decision.action is Action.PROMOTE:
                await self._promote()
            elif decision.action is Action.RAISE_ALARM:
                await self._raise_alarm(decision.condition or "", decision.message)
            elif decision.action is Action.CLEAR_ALARM:
                await self._clear_alarm(decision.message)
        except Exception as exc:  # noqa: BLE001 - reported, never raised
            log.error("automatic failover: %s failed: %s", decision.action.value, exc)
            if decision.action is Action.PROMOTE:
                # not retried automatically: a half-done promotion is for the operator to look at
                await self._safe_alarm(PROMOTION_FAILED, f"the automatic promotion of this server failed: {exc}; "
                                                         "check it and promote by hand ('safehold ha promote')")

    async def _safe_alarm(self, condition: str, message: str) -> None:
        try:
            await self._raise_alarm(condition, message)
        except Exception as exc:  # noqa: BLE001
            log.error("automatic failover: raising the alarm %s failed: %s", condition, exc)

    # --- the loop ------------------------------------------------------------------------------

    async def run_forever(self) -> None:
        """Ping every ``ping_interval`` seconds until the promotion has been ordered (then return)
        or the task is cancelled. A misconfigured policy raises the alarm FailoverMisconfigured and
        returns at once."""
        problems = self.problems()
        if problems:
            log.error("automatic failover is not running: %s", "; ".join(problems))
            await self._safe_alarm(MISCONFIGURED, "automatic failover is not running: " + "; ".join(problems))
            return
        self._prepare()
        host, port = self.primary_db
        log.info("automatic failover: watching the primary database %s:%s every %gs, promoting after %d failed "
                 "pings", host, port, self.section.ping_interval, self.policy.ping_iterations)
        while not self.state.promoted:
            started = time.monotonic()
            await self.round()
            if self.state.promoted:
                break
            await self._sleep(max(0.0, self.section.ping_interval - (time.monotonic() - started)))
        log.info("automatic failover: promotion ordered; the watch has ended")


async def replica_report(rt: Runtime) -> ReplicaReport | None:
    """What this read-only server's replica says of its primary now (None: it cannot be read, or it was
    promoted)."""
    try:
        async with rt.read() as conn:
            view = await replication.replica_view(conn)
    except DatabaseError:
        return None
    if not view.in_recovery:
        return None
    heard = (None if view.last_msg_receipt_time is None
             else max(0.0, (dt.datetime.now(dt.UTC) - view.last_msg_receipt_time).total_seconds()))
    return ReplicaReport(view.streaming, view.receive_lsn, heard)
