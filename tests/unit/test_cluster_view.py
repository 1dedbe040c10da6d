"""The typed cluster view: ``GET /api/v1/ha/status`` keeps its JSON, and the HA monitor's snapshot of it, as
tables (no servers)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from safehold.ha.monitor import snapshot_of
from safehold.ha.patroni import EngineMember, EngineView
from safehold.ha.peers import BacklogReport, LocalReport
from safehold.ha.policy import Health, Liveness, Snapshot
from safehold.ha.status import (
    BacklogTotal,
    ClusterAlarm,
    ClusterView,
    ConfirmedStatus,
    DatabaseStatus,
    ServerBacklog,
    ServerStatus,
    ThisServer,
    backlog_total,
)
from safehold.runtime import Fence

ACTIVE, INACTIVE = Liveness.ACTIVE, Liveness.INACTIVE


def server(name: str, role: str, status: Liveness = ACTIVE) -> ServerStatus:
    return ServerStatus(id=f"id-{name}", name=name, role=role, status=status)


def view(*servers: ServerStatus, ha: Health | None = None, rep: Health | None = None,
         engine: EngineView | None = None) -> ClusterView:
    return ClusterView(cluster_id="c1", generation=2, server=ThisServer("id-a", "a", "primary", "read-write"),
                       fence=None, servers=servers, databases=(), ha_status=ha, replication_status=rep,
                       replication_lag_bytes=None, replication_lag_seconds=None, audit_backlog=BacklogTotal(),
                       alarms=(), engine=engine)


def test_the_status_json_keeps_its_field_names_and_shapes() -> None:
    v = ClusterView(
        cluster_id="c1", generation=3, server=ThisServer("id-a", "a", "readonly", "read-only-emergency"),
        fence=Fence(4, "id-p", "p", "https://p:8443"),
        servers=(ServerStatus("id-a", "a", "readonly", ACTIVE, "host-a", None, "https://a:8443", 8443, 2,
                              "2026-01-01T00:00:00+00:00", INACTIVE),),
        databases=(DatabaseStatus("db", 5432, "primary", 2, 1),), ha_status=Health.ALIVE,
        replication_status=Health.FAILED, replication_lag_bytes=10, replication_lag_seconds=0.5,
        audit_backlog=BacklogTotal(1, 2, "2026-01-01T00:00:00+00:00", (
            ServerBacklog("id-a", "a", True, 1, 2, "2026-01-01T00:00:00+00:00"), ServerBacklog("id-b", "b", False))),
        alarms=(ClusterAlarm("a", "X", "y"),), confirmed=ConfirmedStatus(Health.ALIVE, None, 3))
    expected: dict[str, Any] = {
        "cluster_id": "c1", "generation": 3,
        "server": {"id": "id-a", "name": "a", "role": "readonly", "mode": "read-only-emergency"},
        "fence": {"generation": 4, "acting_primary_id": "id-p", "acting_primary_name": "p",
                  "acting_primary_url": "https://p:8443"},
        "servers": [{"id": "id-a", "name": "a", "hostname": "host-a", "dns_name": None, "role": "readonly",
                     "url": "https://a:8443", "port": 8443, "status": "active", "confirmed_status": "inactive",
                     "sessions": 2, "last_seen": "2026-01-01T00:00:00+00:00", "failover_inputs": []}],
        "databases": [{"host": "db", "port": 5432, "role": "primary", "servers_configured": 2, "servers_active": 1}],
        "ha_status": "Alive", "replication_status": "Failed",
        "confirmed": {"ha_status": "Alive", "replication_status": None, "confirm_checks": 3},
        "replication_lag_bytes": 10, "replication_lag_seconds": 0.5,
        "audit_backlog": {"pending": 1, "shipped": 2, "oldest_pending": "2026-01-01T00:00:00+00:00", "servers": [
            {"id": "id-a", "name": "a", "reported": True, "pending": 1, "shipped": 2,
             "oldest_pending": "2026-01-01T00:00:00+00:00", "error": None},
            {"id": "id-b", "name": "b", "reported": False, "pending": None, "shipped": None, "oldest_pending": None,
             "error": None}]},
        "alarms": [{"server": "a", "condition": "X", "message": "y"}],
        "engine": None,
    }
    assert v.to_json() == expected
    assert list(v.to_json()) == list(expected)
    assert list(v.to_json()["servers"][0]) == list(expected["servers"][0])


R = "read-only replicas"


@pytest.mark.parametrize(("cluster", "expected"), [
    pytest.param(view(server("a", "standalone")), Snapshot({}, {}, {"a": ACTIVE}, frozenset(), "a"),
                 id="a standalone server: no replica, it is the active one"),
    pytest.param(view(server("a", "primary"), server("b", "secondary", INACTIVE), server("r", "readonly"),
                      ha=Health.ALIVE, rep=Health.FAILED),
                 Snapshot({R: Health.ALIVE}, {R: Health.FAILED}, {"a": ACTIVE, "b": INACTIVE, "r": ACTIVE},
                          frozenset({"r"}), "a"), id="a cluster"),
    pytest.param(view(server("s", "secondary"), server("old", "standalone"), server("p", "primary")),
                 Snapshot({}, {}, {"s": ACTIVE, "old": ACTIVE, "p": ACTIVE}, frozenset(), "p"),
                 id="the primary before a server still registered as standalone"),
    pytest.param(view(server("r", "readonly", INACTIVE), ha=Health.FAILED, rep=Health.FAILED),
                 Snapshot({R: Health.FAILED}, {R: Health.FAILED}, {"r": INACTIVE}, frozenset({"r"}), ""),
                 id="no primary registered"),
    pytest.param(view(server("a", "standalone"), ha=Health.FAILED, rep=Health.FAILED,
                      engine=EngineView("demo", (EngineMember("m0", "leader", "running"),))),
                 Snapshot({}, {}, {"a": ACTIVE}, frozenset(), "a"),
                 id="an HA engine: its replicas' statuses are its own snapshot's, one per member"),
])
def test_the_monitor_snapshot(cluster: ClusterView, expected: Snapshot) -> None:
    assert snapshot_of(cluster) == expected


@dataclass(frozen=True)
class Row:
    """A registry row as ``backlog_total`` reads it."""

    id: str
    name: str
    role: str


RO, RO2, PRIMARY = Row("id-r", "r", "readonly"), Row("id-r2", "r2", "readonly"), Row("id-p", "p", "primary")


def spool(pending: int, shipped: int, oldest: str | None = None) -> LocalReport:
    return LocalReport(audit_backlog=BacklogReport(pending, shipped, oldest))


def own(row: Row, pending: int, shipped: int, oldest: str | None = None) -> ServerBacklog:
    return ServerBacklog(row.id, row.name, True, pending, shipped, oldest)


@pytest.mark.parametrize(("mine", "reports", "expected"), [
    pytest.param(None, {RO: spool(2, 5, "t1")},
                 BacklogTotal(2, 5, "t1", (own(RO, 2, 5, "t1"),)), id="the primary: the read-only server's report"),
    pytest.param(own(RO, 2, 5, "t1"), {PRIMARY: LocalReport()},
                 BacklogTotal(2, 5, "t1", (own(RO, 2, 5, "t1"),)), id="the read-only server: its own spool, the same"),
    pytest.param(own(RO, 2, 5, "t1"), {RO: spool(2, 5, "t1"), PRIMARY: LocalReport()},
                 BacklogTotal(2, 5, "t1", (own(RO, 2, 5, "t1"),)),
                 id="a command beside the read-only server asks it too: its spool counted once, not twice"),
    pytest.param(None, {RO: None, RO2: spool(1, 1, "t2")},
                 BacklogTotal(1, 1, "t2", (ServerBacklog(RO.id, RO.name, False), own(RO2, 1, 1, "t2"))),
                 id="a read-only server that did not answer: unknown, not zero"),
    pytest.param(own(RO, 0, 3), {PRIMARY: spool(4, 9, "t0")},
                 BacklogTotal(4, 12, "t0", (own(RO, 0, 3), own(PRIMARY, 4, 9, "t0"))),
                 id="a fenced server's spool is counted too, whoever looks"),
    pytest.param(None, {PRIMARY: None}, BacklogTotal(), id="no read-only server"),
])
def test_each_spool_is_counted_once_and_an_unknown_one_is_said(mine: ServerBacklog | None,
                                                               reports: dict[Row, LocalReport | None],
                                                               expected: BacklogTotal) -> None:
    assert backlog_total(mine, list(reports), list(reports.values())) == expected
