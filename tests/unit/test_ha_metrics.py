"""The HA metrics without servers: what each gauge shows for a state (a table), how /metrics reads them back
when several worker processes share them (prometheus_client's real multiprocess files in a temporary
directory, each "worker" with a process id of its own), the failover inputs taken from an agent, and the
alert dispatcher's count of deliveries."""

from __future__ import annotations

import contextlib
import datetime as dt
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest, values
from prometheus_client.multiprocess import mark_process_dead
from prometheus_client.parser import text_string_to_metric_families

from safehold.alerts.base import AlertError
from safehold.alerts.dispatch import DELIVERED, DROPPED, FAILED, Dispatcher
from safehold.alerts.events import AlertEvent
from safehold.alerts.settings import AlertsSection, RetrySection
from safehold.config import ServerSection, Settings
from safehold.domain import ServerRole
from safehold.metrics import HaState, InputReport, Metrics, ha_gauges
from safehold.web.metrics_view import failover_inputs

NAN = "no sample"
ROLES = ("standalone", "primary", "secondary", "readonly")
MODES = ("read-write", "redirecting", "read-only-emergency", "fenced")


def ones(names: tuple[str, ...], current: str) -> dict[str, float]:
    return {n: float(n == current) for n in names}


def shown(value: float) -> float | str:
    return NAN if math.isnan(value) else value


# --- what each gauge gets from a state ------------------------------------------------------------------

W1 = InputReport("witness", "10.0.0.1", True)
W2 = InputReport("witness", "10.0.0.2:443", False)
GW = InputReport("gateway", "10.0.0.254", None)

# (state, role, mode, fenced, generation, lag, data age, backlog)
TABLE: list[tuple[HaState, str, str, float, float, float | str, float | str, float | str]] = [
    (HaState(ServerRole.STANDALONE, fenced=False, redirecting=False, generation=1),
     "standalone", "read-write", 0, 1, NAN, NAN, 0),
    (HaState(ServerRole.PRIMARY, fenced=False, redirecting=False, generation=3, lag_bytes=4096),
     "primary", "read-write", 0, 3, 4096, NAN, 0),
    (HaState(ServerRole.SECONDARY, fenced=False, redirecting=False, generation=3, lag_bytes=0),
     "secondary", "read-write", 0, 3, 0, NAN, 0),
    # a read-only server sending its users on, and one serving them itself
    (HaState(ServerRole.READONLY, fenced=False, redirecting=True, generation=2, lag_bytes=0, data_age_seconds=0.5,
             spool_backlog=0), "readonly", "redirecting", 0, 2, 0, 0.5, 0),
    (HaState(ServerRole.READONLY, fenced=False, redirecting=False, generation=2, lag_bytes=None,
             data_age_seconds=42.0, spool_backlog=7), "readonly", "read-only-emergency", 0, 2, NAN, 42.0, 7),
    # how old its data is, or its spool, may be unknown: no sample, never a 0 that looks fine
    (HaState(ServerRole.READONLY, fenced=False, redirecting=False, generation=2, data_age_seconds=None,
             spool_backlog=None), "readonly", "read-only-emergency", 0, 2, NAN, NAN, NAN),
    # a superseded primary: fenced wins over redirecting
    (HaState(ServerRole.PRIMARY, fenced=True, redirecting=True, generation=1, spool_backlog=2),
     "primary", "fenced", 1, 1, NAN, NAN, 2),
]


@pytest.mark.parametrize(("state", "role", "mode", "fenced", "generation", "lag", "age", "backlog"), TABLE)
def test_each_gauge_for_a_state(state: HaState, role: str, mode: str, fenced: float, generation: float,
                                lag: float | str, age: float | str, backlog: float | str) -> None:
    g = ha_gauges(state)
    assert dict(g.role) == ones(ROLES, role)  # every role: 1 for the current one, 0 for the others
    assert dict(g.mode) == ones(MODES, mode)
    assert (g.fenced, g.generation) == (fenced, generation)
    assert (shown(g.lag_bytes), shown(g.data_age_seconds), shown(g.spool_backlog)) == (lag, age, backlog)
    assert dict(g.inputs) == {}


@pytest.mark.parametrize(("inputs", "before", "expected"), [
    ((), (), {}),
    ((W1, W2, GW), (), {("witness", "10.0.0.1"): 1.0, ("witness", "10.0.0.2:443"): 0.0,
                        ("gateway", "10.0.0.254"): NAN}),
    # a target no longer configured (or the watch stopped): what was shown before is outdated
    ((W1,), (("witness", "10.0.0.1"), ("witness", "10.0.0.9")), {("witness", "10.0.0.1"): 1.0,
                                                                  ("witness", "10.0.0.9"): NAN}),
    ((), (("gateway", "10.0.0.254"),), {("gateway", "10.0.0.254"): NAN}),
])
def test_failover_inputs_up_down_unknown_and_gone(inputs: tuple[InputReport, ...],
                                                  before: tuple[tuple[str, str], ...],
                                                  expected: dict[tuple[str, str], float | str]) -> None:
    state = HaState(ServerRole.READONLY, fenced=False, redirecting=True, generation=1, inputs=inputs)
    assert {k: shown(v) for k, v in ha_gauges(state, before).inputs.items()} == expected


# --- reading them back ----------------------------------------------------------------------------------


def scrape(metrics: Metrics) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """/metrics as Prometheus parses it: family -> label set -> value."""
    text = generate_latest(metrics.collected()).decode()
    return {f.name: {tuple(sorted(s.labels.items())): s.value for s in f.samples}
            for f in text_string_to_metric_families(text)}


def ha_view(metrics: Metrics) -> dict[str, Any]:
    got = scrape(metrics)

    def one(name: str) -> float | None:
        samples = got.get(name, {})
        assert len(samples) <= 1, samples
        return next(iter(samples.values()), None)

    return {
        "role": {dict(k)["role"]: v for k, v in got["safehold_ha_role"].items()},
        "mode": {dict(k)["mode"]: v for k, v in got["safehold_ha_mode"].items()},
        "fenced": one("safehold_ha_fenced"), "generation": one("safehold_ha_generation"),
        "lag": one("safehold_replication_lag_bytes"), "age": one("safehold_replication_data_age_seconds"),
        "backlog": one("safehold_audit_spool_backlog"),
        "inputs": {(dict(k)["kind"], dict(k)["target"]): v for k, v in got["safehold_failover_input_up"].items()},
        "info": {dict(k)["role"] for k in got["safehold_server_info"]},
    }


READONLY = HaState(ServerRole.READONLY, fenced=False, redirecting=True, generation=1, lag_bytes=0,
                   data_age_seconds=3.0, inputs=(W1, W2))
PROMOTED = HaState(ServerRole.PRIMARY, fenced=False, redirecting=False, generation=2, lag_bytes=None)


def test_one_process_leaves_out_what_has_no_sample() -> None:
    m = Metrics()
    m.show_identity("id-1", "ro-1", "readonly", "1.0")
    m.show_ha(READONLY)
    view = ha_view(m)
    assert view["role"] == ones(ROLES, "readonly") and view["mode"] == ones(MODES, "redirecting")
    assert (view["fenced"], view["generation"], view["lag"], view["age"], view["backlog"]) == (0, 1, 0, 3.0, 0)
    assert view["inputs"] == {("witness", "10.0.0.1"): 1.0, ("witness", "10.0.0.2:443"): 0.0}
    m.show_identity("id-1", "ro-1", "primary", "1.0")
    m.show_ha(PROMOTED)
    view = ha_view(m)
    assert view["role"] == ones(ROLES, "primary") and view["mode"] == ones(MODES, "read-write")
    assert (view["generation"], view["lag"], view["age"]) == (2, None, None)
    assert view["inputs"] == {} and view["info"] == {"primary"}


class Workers:
    """Metrics of several "worker processes" sharing one directory, as a server's workers do (each with the
    multiprocess value class of its own process id)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.classes: dict[int, Any] = {}
        self.metrics: dict[int, Metrics] = {}

    @contextlib.contextmanager
    def worker(self, pid: int) -> Iterator[Metrics]:
        """Run as worker ``pid``: what it sets goes to its own files."""
        cls = self.classes.setdefault(pid, values.MultiProcessValue(lambda: pid))
        previous, values.ValueClass = values.ValueClass, cls
        try:
            if pid not in self.metrics:
                self.metrics[pid] = Metrics()
            yield self.metrics[pid]
        finally:
            values.ValueClass = previous

    def answer(self, pid: int, state: HaState, role: str) -> dict[str, Any]:
        """A scrape answered by worker ``pid`` seeing ``state``."""
        with self.worker(pid) as m:
            m.show_identity("id-1", "ro-1", role, "1.0")
            m.show_ha(state)
            return ha_view(m)


@pytest.fixture()
def workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Workers]:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    w = Workers(tmp_path)
    yield w
    for cls in w.classes.values():
        cls.close_all_files()


def test_several_workers_a_stale_value_never_wins(workers: Workers) -> None:
    # both workers answered as a read-only server
    for pid in (1001, 1002):
        view = workers.answer(pid, READONLY, "readonly")
        assert view["role"]["readonly"] == 1 and view["inputs"][("witness", "10.0.0.2:443")] == 0
    # worker 1001 took over: its answer says primary, and the other's readonly=1 of before reads 0
    view = workers.answer(1001, PROMOTED, "primary")
    assert view["role"] == ones(ROLES, "primary") and view["mode"] == ones(MODES, "read-write")
    assert (view["generation"], view["lag"], view["age"]) == (2, None, None)
    assert view["inputs"] == {} and view["info"] == {"primary"}  # gone, though 1002 showed them last
    # worker 1002 follows: the same answer from either worker
    assert workers.answer(1002, PROMOTED, "primary") == workers.answer(1001, PROMOTED, "primary")


def test_several_workers_a_dead_worker_leaves_nothing(workers: Workers) -> None:
    workers.answer(1001, READONLY, "readonly")
    fenced = HaState(ServerRole.PRIMARY, fenced=True, redirecting=True, generation=1, spool_backlog=4)
    with workers.worker(1002) as m:
        m.show_ha(fenced)  # the newest values: 1002's
    mark_process_dead(1002, str(workers.directory))  # as the supervisor does for a worker that died
    with workers.worker(1003) as m:
        view = ha_view(m)  # the replacement answers before it set anything: 1001's values stand
    assert view["role"] == ones(ROLES, "readonly") and (view["fenced"], view["backlog"]) == (0, 0)


def test_several_workers_counters_add_up(workers: Workers) -> None:
    for pid, n in ((1001, 2), (1002, 3)):
        with workers.worker(pid) as m:
            for _ in range(n):
                m.failover_decisions.labels("none").inc()
            m.count_alert("webhook", DELIVERED)
    with workers.worker(1001) as m:
        got = scrape(m)
    assert got["safehold_failover_decisions"] == {(("decision", "none"),): 5.0}
    assert got["safehold_alert_deliveries"] == {(("channel", "webhook"), ("result", "delivered")): 2.0}


# --- the agent's failover inputs ------------------------------------------------------------------------


@dataclass(frozen=True)
class FakeInput:
    kind: str
    target: str
    reachable: Any


@pytest.mark.parametrize(("agent", "expected"), [
    (None, ()),
    (object(), ()),  # an agent without failover_inputs (yet)
    (type("Agent", (), {"failover_inputs": None})(), ()),
    (type("Agent", (), {"failover_inputs": (FakeInput("witness", "10.0.0.1", True),
                                            FakeInput("gateway", "10.0.0.254", None))})(),
     (InputReport("witness", "10.0.0.1", True), InputReport("gateway", "10.0.0.254", None))),
    # an entry of another shape is left out, never shown wrongly
    (type("Agent", (), {"failover_inputs": [FakeInput("witness", "10.0.0.1", "yes"), object(),
                                            FakeInput("witness", "10.0.0.2", False)]})(),
     (InputReport("witness", "10.0.0.2", False),)),
])
def test_failover_inputs_from_the_agent(agent: Any, expected: tuple[InputReport, ...]) -> None:
    assert failover_inputs(agent) == expected


def test_an_enum_kind_is_shown_by_its_value() -> None:
    from enum import StrEnum

    class Kind(StrEnum):
        WITNESS = "witness"

    agent = type("Agent", (), {"failover_inputs": (FakeInput(Kind.WITNESS, "10.0.0.1", False),)})()
    m = Metrics()
    m.show_ha(HaState(ServerRole.READONLY, fenced=False, redirecting=True, generation=1,
                      inputs=failover_inputs(agent)))
    assert ha_view(m)["inputs"] == {("witness", "10.0.0.1"): 0.0}


# --- alert deliveries -----------------------------------------------------------------------------------


class Channel:
    def __init__(self, name: str, fail: bool = False) -> None:
        self.name, self.fail = name, fail

    def target(self) -> str:
        return self.name

    def check(self) -> None:
        pass

    def send(self, event: AlertEvent) -> str:
        if self.fail:
            raise AlertError("refused", transient=False)
        return "sent"


def test_the_dispatcher_counts_each_delivery_by_channel_and_result() -> None:
    m = Metrics()
    settings = Settings(server=ServerSection(id="3f2b8c1e-9a4d-4e6f-8b7a-1c2d3e4f5a6b", name="vault-1"),
                        alerts=AlertsSection(retry=RetrySection(attempts=2, initial_delay=0.01), queue_size=2))
    d = Dispatcher(settings, channels={"webhook": Channel("webhook"), "syslog": Channel("syslog", fail=True),
                                       "email": Channel("email")}, counted=m.count_alert)
    at = dt.datetime(2025, 1, 2, tzinfo=dt.UTC)
    for i in range(3):  # not started: the third event does not fit any queue
        d.publish(AlertEvent("HAFailed", "ro", f"event {i}", at, id=i))
    d.start()
    try:
        assert d.wait_idle(5)
    finally:
        d.stop(2)
    got = scrape(m)["safehold_alert_deliveries"]
    assert {(dict(k)["channel"], dict(k)["result"]): v for k, v in got.items()} == {
        ("webhook", DELIVERED): 2, ("webhook", DROPPED): 1, ("syslog", FAILED): 2, ("syslog", DROPPED): 1,
        ("email", DELIVERED): 2, ("email", DROPPED): 1}


def test_a_broken_counter_stops_no_delivery() -> None:
    def broken(channel: str, result: str) -> None:
        raise RuntimeError("the metrics files are gone")

    settings = Settings(server=ServerSection(id="3f2b8c1e-9a4d-4e6f-8b7a-1c2d3e4f5a6b", name="vault-1"))
    sent = Channel("webhook")
    d = Dispatcher(settings, channels={"webhook": sent}, counted=broken)
    d.start()
    try:
        d.publish(AlertEvent("HAFailed", "ro", "event", dt.datetime(2025, 1, 2, tzinfo=dt.UTC), id=1))
        assert d.wait_idle(5)
        assert d.status()["webhook"]["delivered"] == 1
    finally:
        d.stop(2)

