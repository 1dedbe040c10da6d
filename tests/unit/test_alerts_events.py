"""AlertEvent: from an ha_events row, and the event script's arguments for each kind (the seed's)."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace

import pytest

from safehold.alerts.events import SEVERITY, AlertEvent, Severity
from safehold.ha.policy import EventKind

AT = dt.datetime(2025, 1, 2, 3, 4, 5, 123456, tzinfo=dt.UTC)


def event(kind: str, subject: str = "ro-1", args: tuple[str, ...] = ()) -> AlertEvent:
    return AlertEvent(kind=kind, subject=subject, message="m", at=AT, args=args)


@pytest.mark.parametrize(("kind", "subject", "args", "argv"), [
    ("Failover", "vault-2", ("vault-2", "vault-1"), ["Failover", "vault-2", "vault-1"]),
    ("StandbyOffline", "ro-1", ("ro-1", "vault-1"), ["StandbyOffline", "ro-1", "vault-1"]),
    ("ManualSwitch", "vault-2", ("vault-2", "vault-1"), ["ManualSwitch", "vault-2", "vault-1"]),
    ("RaiseAlarm", "sync", ("SyncDegraded", "no synchronous replica for 30 s"),
     ["RaiseAlarm", "SyncDegraded", "no synchronous replica for 30 s"]),
    ("ClearAlarm", "sync", ("synchronous replication is back",), ["ClearAlarm", "synchronous replication is back"]),
    ("HAFailed", "read-only replicas", (), ["HAFailed", "read-only replicas"]),
    ("ServerInactive", "vault-1", (), ["ServerInactive", "vault-1"]),
    ("Fenced", "vault-1", (), ["Fenced", "vault-1"]),
])
def test_script_arguments_are_the_seeds(kind: str, subject: str, args: tuple[str, ...], argv: list[str]) -> None:
    assert event(kind, subject, args).script_args() == argv


def test_every_event_kind_has_a_severity() -> None:
    assert {k.value for k in EventKind} <= set(SEVERITY)
    assert event("Failover").severity is Severity.CRITICAL
    assert event("SomethingNew").severity is Severity.WARNING


def test_from_row_names_the_reporting_server() -> None:
    row = SimpleNamespace(id=17, at=AT, kind="StandbyOffline", subject="ro-1", message="standby ro-1 is offline",
                          reported_by="3f2b8c1e-9a4d-4e6f-8b7a-1c2d3e4f5a6b", args=["ro-1", "vault-1"])
    e = AlertEvent.from_row(row, cluster_id="c-1", server_names={"3f2b8c1e-9a4d-4e6f-8b7a-1c2d3e4f5a6b": "vault-1"})
    assert (e.id, e.kind, e.args, e.server_name, e.cluster_id) == (17, "StandbyOffline", ("ro-1", "vault-1"),
                                                                   "vault-1", "c-1")
    assert e.server == "vault-1"
    unknown = AlertEvent.from_row(SimpleNamespace(**{**row.__dict__, "args": None}))
    assert unknown.server == row.reported_by and unknown.args == ()


def test_time_is_rfc3339_utc_with_microseconds() -> None:
    assert event("HAAlive").at_text() == "2025-01-02T03:04:05.123456Z"
    local = AT.astimezone(dt.timezone(dt.timedelta(hours=2)))
    assert AlertEvent("HAAlive", "s", "m", local).at_text() == "2025-01-02T03:04:05.123456Z"


def test_local_event_comes_from_the_runtime() -> None:
    rt = SimpleNamespace(identity=SimpleNamespace(id="sid", name="vault-1"), cluster_id="cid")
    e = AlertEvent.local("Fenced", "vault-1", "fenced", ["vault-1"], rt, now=AT)
    assert (e.server_id, e.server_name, e.cluster_id, e.id, e.args) == ("sid", "vault-1", "cid", None, ("vault-1",))
    assert e.to_json()["server"] == {"id": "sid", "name": "vault-1"}
