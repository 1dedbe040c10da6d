"""The pages' pure helpers behind the operator-experience findings: a server's role shown only when its name
does not say it, the emergency-mode clock, and the failover warnings a primary shows."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace

import pytest

from safehold.config import FailoverSection
from safehold.domain import ServerRole
from safehold.web.ui.audit import role_note, server_tabs
from safehold.web.ui.emergency import EmergencyClock, for_how_long, serving_itself
from safehold.web.ui.settings import cluster_warnings

T0 = dt.datetime(2025, 3, 1, 8, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(("name", "role", "note"), [
    ("Primary", "primary", ""),
    ("primary", "primary", ""),
    ("PRIMARY", "primary", ""),
    ("readonly", "readonly", ""),
    ("Read-only", "readonly", ""),
    ("read only", "readonly", ""),
    ("Secondary", "secondary", ""),
    ("vault-1", "primary", "Primary"),
    ("primary-2", "primary", "Primary"),
    ("Primary", "secondary", "Secondary"),  # a renamed role: the name no longer says it
    (None, "readonly", "Read-only"),
])
def test_role_note(name: str | None, role: str, note: str) -> None:
    assert role_note(name, role) == note


def test_tabs_show_the_role_only_when_the_name_does_not() -> None:
    rows = [SimpleNamespace(id="2", name="Read-only", role="readonly"), SimpleNamespace(id="1", name="Primary",
                                                                                       role="primary"),
            SimpleNamespace(id="3", name="vault-b", role="secondary")]
    assert [(t["name"], t["note"]) for t in server_tabs(rows)] == [("Primary", ""), ("vault-b", "Secondary"),
                                                                  ("Read-only", "")]


def test_emergency_clock_keeps_the_start_of_the_period() -> None:
    clock = EmergencyClock()
    clock.observe(False, T0)
    assert clock.since is None
    clock.observe(True, T0 + dt.timedelta(seconds=1))
    clock.observe(True, T0 + dt.timedelta(seconds=30))
    assert clock.since == T0 + dt.timedelta(seconds=1)
    clock.observe(False, T0 + dt.timedelta(seconds=31))
    assert clock.since is None
    clock.observe(True, T0 + dt.timedelta(seconds=40))  # a new period
    assert clock.since == T0 + dt.timedelta(seconds=40)


def _rt(role: ServerRole, fence: object = None) -> SimpleNamespace:
    return SimpleNamespace(identity=SimpleNamespace(role=role), fence=fence)


def _agent(redirect: object = None, *healthy: bool) -> SimpleNamespace:
    return SimpleNamespace(redirect=redirect, peers=[SimpleNamespace(healthy=h) for h in healthy])


@pytest.mark.parametrize(("rt", "agent", "serving"), [
    (_rt(ServerRole.READONLY), _agent(None, False, False), True),
    (_rt(ServerRole.READONLY), _agent("primary", True, False), False),  # redirecting
    (_rt(ServerRole.READONLY), _agent(None), False),  # no peer check yet (just started)
    (_rt(ServerRole.READONLY, fence="newer"), _agent(None, False), False),
    (_rt(ServerRole.PRIMARY), _agent(None, False), False),
    (_rt(ServerRole.READONLY), None, False),
    (None, _agent(None, False), False),
])
def test_serving_itself(rt: object, agent: object, serving: bool) -> None:
    assert serving_itself(rt, agent) is serving


@pytest.mark.parametrize(("seconds", "text"), [
    (-3, "0 s"), (0, "0 s"), (59, "59 s"), (60, "1 min"), (3599, "59 min"), (3600, "1 h 00 min"),
    (3 * 3600 + 5 * 60, "3 h 05 min"), (2 * 86400 + 4 * 3600 + 59, "2 d 4 h"),
])
def test_for_how_long(seconds: int, text: str) -> None:
    assert for_how_long(T0, T0 + dt.timedelta(seconds=seconds)) == text


def test_cluster_warnings_on_a_primary_say_nothing_of_its_own_host() -> None:
    assert cluster_warnings(FailoverSection(), ["ro-1"]) == []  # disabled: nothing to warn about
    enabled = FailoverSection(enabled=True)
    warnings = cluster_warnings(enabled, [])
    assert len(warnings) == 2 and "no read-only server is registered" in warnings[0]
    assert "no witness target and no gateway" in warnings[1]
    assert not any("'ping'" in w for w in warnings)  # this host's ping program says nothing of theirs
    assert cluster_warnings(enabled.model_copy(update={"witness_targets": ["192.0.2.10:22"]}), ["ro-1"]) == []
    assert cluster_warnings(enabled.model_copy(update={"gateway": "192.0.2.1"}), ["ro-1"]) == []
