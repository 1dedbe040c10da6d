"""The automatic failover executor: ping, decide (:mod:`safehold.ha.failover`), carry out.

:class:`FailoverWatch` runs on a read-only server with ``ha.failover.enabled``. Every
``ping_interval`` seconds it probes the primary database (and the primary app, for the message) and
its gateway and witness targets (every round, even while the primary answers: a dead witness is
reported at once, not found when it is needed; see :mod:`safehold.ha.failover_inputs`), and carries
out the one action decided: promote (once: then it returns), raise or clear an alarm. Side effects are
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
from safehold.ha import failover_inputs as inputs
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
from safehold.ha.peers import PeerClient, cluster_ssl_context, writer_report
from safehold.ha.policy import EventKind
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
CurrentAlarm = Callable[[], tuple[str, str] | None]
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
                 clock: Callable[[], float] = time.monotonic, state: FailoverState | None = None,
                 current_alarm: CurrentAlarm = lambda: None,
                 on_decision: Callable[[Decision], None] | None = None,
                 wall_clock: Callable[[], float] = time.time) -> None:
        """``current_alarm``: the alarm this server holds now (the witness alarm is raised only while no other
        holds it); ``on_decision``: told every round's decision (the metrics)."""
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
        self._current_alarm = current_alarm
        self._on_decision = on_decision
        self._wall_clock = wall_clock
        #: the gateway and witnesses as last confirmed (``ha/failover_inputs.py``), for /ha/local
        self.inputs: tuple[inputs.InputState, ...] = ()
        self._confirm_checks = settings.ha.status_confirm_checks

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
        self.inputs = inputs.initial([str(t) for t in self._witnesses], str(self._gateway) if self._gateway else None)
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
        # the targets, every round: whether the decision needs them now or not (their state is reported)
        targets: Sequence[Target] = [*self._witnesses, *([self._gateway] if self._gateway else [])]
        results = await asyncio.gather(*(self._target_ok(t) for t in targets))
        # a witness that cannot be asked (no ping program) counts as unreachable, the gateway as unknown
        witness_results: list[bool | None] = [bool(r) for r in results[:len(self._witnesses)]]
        gateway_ok = results[len(self._witnesses)] if self._gateway else None
        self.inputs = inputs.step(self.inputs, [*witness_results, *([gateway_ok] if self._gateway else [])],
                                  self._confirm_checks, self._wall_clock())
        if not needs_witnesses(self.state, db_ok, self.policy):
            return Observation(primary_db_ok=db_ok, primary_app_ok=app_ok, now=now, writer=writer, replica=replica)
        witnesses = tuple(bool(r) for r in witness_results)
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
        if self._on_decision is not None:
            self._on_decision(decision)
        await self._carry_out(decision)
        if not self.state.promoted:
            await self._witness_alarm()
        return decision

    async def _witness_alarm(self, *, ending: bool = False) -> None:
        """Raise, update or clear the witness alarm (after the decision: its alarms take the server's alarm
        first, and the witness alarm waits while another holds it)."""
        current = self._current_alarm()
        if current is not None and current[0] != inputs.WITNESS_UNREACHABLE:
            return
        ours = current[1] if current is not None else None
        step = inputs.alarm_step(() if ending else self.inputs, ours)
        if step.raise_text is not None:
            log.warning("automatic failover: %s", step.raise_text)
            await self._safe_alarm(inputs.WITNESS_UNREACHABLE, step.raise_text)
        elif step.clear_text is not None:
            log.warning("automatic failover: %s", "the watch has ended" if ending else step.clear_text)
            try:
                await self._clear_alarm("the automatic failover watch has ended" if ending else step.clear_text)
            except Exception as exc:  # noqa: BLE001
                log.error("automatic failover: clearing the alarm %s failed: %s", inputs.WITNESS_UNREACHABLE, exc)

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
        try:
            while not self.state.promoted:
                started = time.monotonic()
                await self.round()
                if self.state.promoted:
                    break
                await self._sleep(max(0.0, self.section.ping_interval - (time.monotonic() - started)))
        finally:  # promoted, or stopped (a policy change, shutdown): its targets are no longer watched here
            self.inputs = ()
            await asyncio.shield(self._witness_alarm(ending=True))
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


def watch_for(agent: Any, settings: Settings) -> FailoverWatch:
    """The watch a read-only server's HA agent runs (``ha/agent.py``) with the cluster's failover policy in
    ``settings``: it promotes through the agent, raises and clears the agent's alarm (told to the alert
    channels), and counts its decisions in the server's metrics."""
    rt: Runtime = agent.rt
    n = settings.ha.failover.ping_iterations

    async def promote() -> None:
        await agent.promote_self(reason=EventKind.FAILOVER, note=f"automatic failover after {n} failed pings of "
                                                                 "the primary")

    async def raise_alarm(condition: str, message: str) -> None:
        agent.alarm = (condition, message)
        agent.publish(EventKind.RAISE_ALARM, rt.identity.name, message, (condition, message))

    async def clear_alarm(text: str) -> None:
        agent.alarm = None
        agent.publish(EventKind.CLEAR_ALARM, rt.identity.name, text, (text,))

    async def writer() -> WriterReport | None:
        """The primary database's WAL position as the app servers on it report it now (the furthest), and
        the write lease of the one reporting it."""
        async with rt.read() as conn:
            rows = await server_store.all_servers(conn)
        urls = [r.url for r in rows if r.id != rt.identity.id and r.url
                and r.role in (ServerRole.PRIMARY, ServerRole.SECONDARY, ServerRole.STANDALONE)]
        return writer_report(await agent.client.locals(urls))

    def counted(decision: Decision) -> None:
        counter = getattr(rt.metrics, "failover_decisions", None)
        if counter is not None:
            counter.labels(decision.action.value).inc()

    return FailoverWatch(settings, promote=promote, raise_alarm=raise_alarm, clear_alarm=clear_alarm,
                         primary_url=registry_primary_url(rt.engine), writer=writer,
                         replica=lambda: replica_report(rt), current_alarm=lambda: agent.alarm,
                         on_decision=counted)
