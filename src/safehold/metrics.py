"""Prometheus metrics of one server (its own registry, so several can live in one process).  A server with
several workers keeps them in files that every worker's /metrics sums (prometheus_client's multiprocess mode,
set up by the supervisor).  Every metric is described in docs/METRICS.md.

Counters add up over the workers by nature.  A gauge that describes the server's state (its role, mode, fence,
generation, replication, spool; :class:`HaState`) is set by the worker that answers the scrape, just before it
answers, from that worker's own view (each worker follows a role change itself), and read back as the most
recent value any live worker set (``livemostrecent``): a value another worker set earlier, or a dead worker
left, never wins.  Such a gauge says "no sample" with NaN (:data:`NO_SAMPLE`), which :meth:`Metrics.collected`
leaves out: a worker cannot remove a label set from the shared files, but it can outdate it.  That is how a
label set that stopped being current reads 0 (a role or mode the server no longer has), or disappears (a
failover input no longer configured, the replication lag of a server that is no longer a replica).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

from safehold.domain import ServerMode, ServerRole

#: what a state gauge is set to when it has no value now: left out of the scrape
NO_SAMPLE = math.nan
#: the values of ``safehold_ha_mode``'s label: /ha/local's modes, and ``redirecting`` for a read-only server
#: that sends its users to the primary or a secondary (/ha/local says read-only-emergency for both)
REDIRECTING = "redirecting"
MODES = (ServerMode.READ_WRITE.value, REDIRECTING, ServerMode.READ_ONLY_EMERGENCY.value, ServerMode.FENCED.value)
ROLES = tuple(r.value for r in ServerRole)


@dataclass(frozen=True)
class InputReport:
    """One input of the automatic failover (its gateway, a witness target) as the watch last confirmed it."""

    kind: str  # witness or gateway
    target: str
    reachable: bool | None  # None: unknown (not probed yet, or it cannot be: no ping program)


@dataclass(frozen=True)
class HaState:
    """What the HA gauges show, gathered by the worker that answers the scrape (``web/metrics_view.py``)."""

    role: ServerRole
    fenced: bool
    redirecting: bool  # a read-only server that sends its users on (not fenced)
    generation: int
    lag_bytes: int | None = None  # None: not a replica and no standby known, or not readable now
    data_age_seconds: float | None = None  # a read-only server's replica; None: unknown, or not a replica
    spool_backlog: int | None = 0  # audit records in the local spool not yet shipped (0: no spool; None: unknown)
    inputs: tuple[InputReport, ...] = ()


@dataclass(frozen=True)
class HaGauges:
    """The value of every HA gauge's label set (NO_SAMPLE: leave it out)."""

    role: Mapping[str, float]
    mode: Mapping[str, float]
    fenced: float
    generation: float
    lag_bytes: float
    data_age_seconds: float
    spool_backlog: float
    inputs: Mapping[tuple[str, str], float] = field(default_factory=dict)


def mode_of(state: HaState) -> str:
    if state.fenced:
        return ServerMode.FENCED.value
    if state.role == ServerRole.READONLY:
        return REDIRECTING if state.redirecting else ServerMode.READ_ONLY_EMERGENCY.value
    return ServerMode.READ_WRITE.value


def _or_none(value: float | None) -> float:
    return NO_SAMPLE if value is None else float(value)


def ha_gauges(state: HaState, shown_inputs: Iterable[tuple[str, str]] = ()) -> HaGauges:
    """Every HA gauge's values for ``state``: 1 for the current role and mode and 0 for the others (each
    scrape sets them all, so none keeps a 1 from before a role change); NO_SAMPLE for what is unknown; an
    input of automatic failover ``shown_inputs`` named before but no longer configured: NO_SAMPLE too."""
    mode = mode_of(state)
    inputs: dict[tuple[str, str], float] = dict.fromkeys(shown_inputs, NO_SAMPLE)
    for i in state.inputs:
        inputs[(i.kind, i.target)] = NO_SAMPLE if i.reachable is None else float(i.reachable)
    return HaGauges(
        role={r: float(r == state.role.value) for r in ROLES},
        mode={m: float(m == mode) for m in MODES},
        fenced=float(state.fenced),
        generation=float(state.generation),
        lag_bytes=_or_none(state.lag_bytes),
        data_age_seconds=_or_none(state.data_age_seconds),
        spool_backlog=_or_none(state.spool_backlog),
        inputs=inputs,
    )


class _Present:
    """The samples of ``source`` but a gauge's NO_SAMPLE ones."""

    def __init__(self, source: CollectorRegistry | MultiProcessCollector) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        for family in self.source.collect():
            if family.type == "gauge":
                family.samples = [s for s in family.samples if not math.isnan(s.value)]
            yield family


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "safehold_http_requests", "HTTP requests handled", ["method", "route", "status"], registry=r
        )
        self.latency = Histogram(
            "safehold_http_request_seconds", "HTTP request latency", ["method", "route"], registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.retrievals = Counter(
            "safehold_password_retrievals", "Audited password retrievals", ["result"], registry=r
        )
        self.audit_records = Counter("safehold_audit_records", "Audit records written", registry=r)
        self.audit_batches = Counter("safehold_audit_commits", "Audit group commits", registry=r)
        self.audit_failures = Counter(
            "safehold_audit_failures", "Audit writes that failed (actions refused)", registry=r
        )
        self.logins = Counter("safehold_logins", "Login attempts", ["result"], registry=r)
        self.pool_size = Gauge("safehold_db_pool_size", "Database connections in the pool", registry=r,
                               multiprocess_mode="livesum")
        self.pool_checked_out = Gauge(
            "safehold_db_pool_checked_out", "Database connections in use", registry=r, multiprocess_mode="livesum"
        )
        self.pool_overflow = Gauge("safehold_db_pool_overflow", "Overflow connections open", registry=r,
                                   multiprocess_mode="livesum")
        # the most recent: a role that is no longer the server's is outdated at each scrape (show_identity)
        self.info = Gauge("safehold_server_info", "This server", ["server_id", "name", "role", "version"],
                          registry=r, multiprocess_mode="livemostrecent")
        # --- HA state (set at scrape time: show_ha) ---
        self.ha_role = Gauge("safehold_ha_role", "1 for this server's role, 0 for the others", ["role"],
                             registry=r, multiprocess_mode="livemostrecent")
        self.ha_mode = Gauge("safehold_ha_mode", "1 for what this server does with users now, 0 for the others",
                             ["mode"], registry=r, multiprocess_mode="livemostrecent")
        self.ha_fenced = Gauge("safehold_ha_fenced", "1 while a newer primary superseded this server", registry=r,
                               multiprocess_mode="livemostrecent")
        self.ha_generation = Gauge("safehold_ha_generation", "The cluster generation this server's database holds",
                                   registry=r, multiprocess_mode="livemostrecent")
        self.replication_lag = Gauge(
            "safehold_replication_lag_bytes", "WAL bytes not yet replayed: by this read-only server's replica, "
            "or by the furthest behind standby of this writer's database", registry=r,
            multiprocess_mode="livemostrecent")
        self.data_age = Gauge("safehold_replication_data_age_seconds",
                              "How old a read-only server's data may be", registry=r,
                              multiprocess_mode="livemostrecent")
        self.spool_backlog = Gauge("safehold_audit_spool_backlog",
                                   "Audit records in this server's local spool not yet shipped", registry=r,
                                   multiprocess_mode="livemostrecent")
        self.failover_input_up = Gauge(
            "safehold_failover_input_up", "Whether an input of automatic failover answers (1) or not (0)",
            ["kind", "target"], registry=r, multiprocess_mode="livemostrecent")
        # --- events (counted where they happen) ---
        self.alert_deliveries = Counter("safehold_alert_deliveries", "Alert deliveries by channel and outcome",
                                        ["channel", "result"], registry=r)
        # the automatic failover watch's decision each round (ha/failover_agent.py: .labels(decision).inc())
        self.failover_decisions = Counter("safehold_failover_decisions", "Decisions of the automatic failover",
                                          ["decision"], registry=r)

    def count_alert(self, channel: str, result: str) -> None:
        """One event's delivery on one channel ended (``result``: delivered, failed or dropped, as
        alerts/dispatch.py tells it)."""
        self.alert_deliveries.labels(channel, result).inc()

    def show_identity(self, server_id: str, name: str, role: str, version: str) -> None:
        """``safehold_server_info`` for this server as it is now; its other roles outdated."""
        for other in ROLES:
            self.info.labels(server_id, name, other, version).set(1 if other == role else NO_SAMPLE)

    def show_ha(self, state: HaState) -> None:
        """Set every HA gauge to ``state`` (before a scrape is answered).  ``state.inputs`` are all the inputs
        of automatic failover (the workers share them): any other that a worker showed is outdated."""
        g = ha_gauges(state, self._inputs_visible())
        for role, value in g.role.items():
            self.ha_role.labels(role).set(value)
        for mode, value in g.mode.items():
            self.ha_mode.labels(mode).set(value)
        self.ha_fenced.set(g.fenced)
        self.ha_generation.set(g.generation)
        self.replication_lag.set(g.lag_bytes)
        self.data_age.set(g.data_age_seconds)
        self.spool_backlog.set(g.spool_backlog)
        for (kind, target), value in g.inputs.items():
            self.failover_input_up.labels(kind, target).set(value)

    def _inputs_visible(self) -> set[tuple[str, str]]:
        """The failover inputs /metrics shows now (set by any worker)."""
        return {(s.labels["kind"], s.labels["target"]) for family in self.collected().collect()
                if family.name == "safehold_failover_input_up" for s in family.samples}

    def collected(self) -> CollectorRegistry:
        """What /metrics shows: this registry, or the sum over the workers when there are several; without
        the gauges' NO_SAMPLE values."""
        directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        registry = CollectorRegistry()
        registry.register(_Present(MultiProcessCollector(None, path=directory) if directory else self.registry))
        return registry
