"""The automatic failover policy as tables: rounds of pings in, one action per round out — no
servers, no mocks. Also target parsing and the validation of a failover configuration."""

from __future__ import annotations

from dataclasses import replace

import pytest

from safehold.config import FailoverSection
from safehold.ha.failover import (
    FAILOVER_NOT_ALLOWED,
    STANDBY_ISOLATED,
    Action,
    Contact,
    FailoverPolicy,
    FailoverState,
    Observation,
    ReplicaReport,
    decide,
    needs_witnesses,
    range_errors,
    validate_policy,
    warnings_for,
)
from safehold.ha.probe import Target, parse_target

N, P, R, C = Action.NONE, Action.PROMOTE, Action.RAISE_ALARM, Action.CLEAR_ALARM

UP = Observation(primary_db_ok=True, primary_app_ok=True)
DOWN = Observation(primary_db_ok=False, primary_app_ok=False)  # below the limit: own side not probed
APP_ONLY = Observation(primary_db_ok=False, primary_app_ok=True)  # the app answers, its database does not
DB_ONLY = Observation(primary_db_ok=True, primary_app_ok=False)  # the app died, its database did not
WIT_UP = Observation(False, False, gateway_ok=False, witnesses_ok=(False, True))  # at the limit
ALL_DOWN = Observation(False, False, gateway_ok=False, witnesses_ok=(False, False))
GW_UP = Observation(False, False, gateway_ok=True, witnesses_ok=(False, False))
GW_DOWN_ONLY = Observation(False, False, gateway_ok=False)  # a gateway, no witness
WIT_DOWN_ONLY = Observation(False, False, gateway_ok=None, witnesses_ok=(False,))  # no gateway known
BLIND = Observation(False, False)  # no gateway known, no witness configured


# these tables are about pings, witnesses and alarms: the replica streams and is caught up, the primary's write
# lease is out at once (the lag and lease guards have their own tables in test_failover_guards.py)
CAUGHT_UP = ReplicaReport(streaming=True, received_lsn="0/100")
HEARD = FailoverState(contact=Contact(at=0.0, primary_lsn="0/100", streaming=True, lease_seconds=None))


def replay(observations: list[Observation], policy: FailoverPolicy) -> tuple[list[Action], FailoverState]:
    state = HEARD
    actions = []
    for obs in observations:
        state, decision = decide(state, replace(obs, replica=obs.replica or CAUGHT_UP), policy)
        actions.append(decision.action)
    return actions, state


THREE = FailoverPolicy(ping_iterations=3, writer_lease=0.0, probe_timeout=0.0)


@pytest.mark.parametrize(("rounds", "expected"), [
    pytest.param([DOWN, DOWN], [N, N], id="below the limit: nothing yet"),
    pytest.param([DOWN, DOWN, WIT_UP], [N, N, P], id="at the limit, a witness up: promote"),
    pytest.param([DOWN, DOWN, ALL_DOWN], [N, N, R], id="at the limit, gateway and witnesses down: alarm only"),
    pytest.param([DOWN, DOWN, ALL_DOWN, ALL_DOWN, ALL_DOWN], [N, N, R, N, N], id="the alarm is raised once"),
    pytest.param([DOWN, DOWN, GW_UP], [N, N, P], id="gateway up, witnesses down: promote"),
    pytest.param([DOWN, DOWN, GW_DOWN_ONLY], [N, N, R], id="only a gateway, down: alarm"),
    pytest.param([DOWN, DOWN, WIT_DOWN_ONLY], [N, N, R], id="no gateway known, the witness down: alarm"),
    pytest.param([DOWN, DOWN, BLIND], [N, N, P], id="isolation undetectable: promote"),
    pytest.param([DOWN, DOWN, UP, DOWN, DOWN], [N, N, N, N, N], id="a good round resets the count"),
    pytest.param([DB_ONLY] * 5, [N] * 5, id="app down, database up: never promote (split data)"),
    pytest.param([DOWN, DOWN, ALL_DOWN, UP], [N, N, R, C], id="alarm, then the primary is back: clear"),
    pytest.param([DOWN, DOWN, ALL_DOWN, WIT_UP, WIT_UP], [N, N, R, C, P],
                 id="alarm, then own side back: clear, then promote on fresh pings"),
    pytest.param([DOWN, DOWN, WIT_UP, WIT_UP, UP, DOWN], [N, N, P, N, N, N], id="promote only once"),
])
def test_rounds(rounds: list[Observation], expected: list[Action]) -> None:
    actions, _ = replay(rounds, THREE)
    assert actions == expected


def test_app_only_rounds_count_as_failures() -> None:
    # the primary's app answers but its database does not: the rounds fail; at the limit the own
    # side is probed (a witness up) and the standby promotes
    actions, state = replay([APP_ONLY, APP_ONLY, Observation(False, True, witnesses_ok=(True,))], THREE)
    assert actions == [N, N, P] and state.promoted


@pytest.mark.parametrize("last", [WIT_UP, ALL_DOWN, BLIND])
def test_may_promote_false_raises_an_alarm_instead(last: Observation) -> None:
    policy = FailoverPolicy(ping_iterations=3, may_promote=False)
    actions, state = replay([DOWN, DOWN, last, last, UP], policy)
    assert actions == [N, N, R, N, C]
    assert not state.promoted and not state.alarm_raised and state.consecutive_failures == 0


def test_messages_and_conditions() -> None:
    state = HEARD
    for _ in range(2):
        state, d = decide(state, DOWN, THREE)
    assert d.message == "ping 2/3 failed: primary database unreachable (its app does not answer either)"
    isolated_state, d = decide(state, ALL_DOWN, THREE)
    assert d.condition == STANDBY_ISOLATED and isolated_state.alarm == STANDBY_ISOLATED
    assert "gateway unreachable, 0 of 2 witness targets reachable" in d.message and "not promoting" in d.message
    _, d = decide(isolated_state, UP, THREE)
    assert d.message == "StandbyIsolated cleared: the primary database is reachable again"
    _, d = decide(state, replace(BLIND, replica=CAUGHT_UP), THREE)
    assert d.action is P and "isolation cannot be detected" in d.message
    _, d = decide(state, DOWN, FailoverPolicy(ping_iterations=3, may_promote=False))
    assert d.condition == FAILOVER_NOT_ALLOWED and "may_promote = false" in d.message


def test_count_stays_at_the_limit() -> None:
    _, state = replay([DOWN, DOWN, ALL_DOWN, ALL_DOWN, ALL_DOWN], THREE)
    assert state.consecutive_failures == 3 and state.alarm_raised and not state.promoted


@pytest.mark.parametrize(("state", "db_ok", "policy", "expected"), [
    (FailoverState(0), False, THREE, False),
    (FailoverState(1), False, THREE, False),   # this failure is the second
    (FailoverState(2), False, THREE, True),    # this failure is the third
    (FailoverState(3), False, THREE, True),    # already at the limit (after an alarm)
    (FailoverState(2), True, THREE, False),    # the primary database answered
    (FailoverState(2, promoted=True), False, THREE, False),
    (FailoverState(2), False, FailoverPolicy(3, may_promote=False), False),
    (FailoverState(0), False, FailoverPolicy(2), False),
    (FailoverState(1), False, FailoverPolicy(2), True),
])
def test_needs_witnesses(state: FailoverState, db_ok: bool, policy: FailoverPolicy, expected: bool) -> None:
    assert needs_witnesses(state, db_ok, policy) is expected


def test_default_policy_from_settings() -> None:
    assert FailoverPolicy.from_section(FailoverSection()) == FailoverPolicy(ping_iterations=12, may_promote=True)
    policy = replace(FailoverPolicy.from_section(FailoverSection()), writer_lease=0.0, probe_timeout=0.0)
    actions, _ = replay([DOWN] * 11 + [WIT_UP], policy)
    assert actions == [N] * 11 + [P]


# --- targets --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("10.0.0.1", Target("10.0.0.1")),
    ("10.0.0.1:53", Target("10.0.0.1", 53)),
    ("router.example.net", Target("router.example.net")),
    ("Router.Example.NET:443", Target("Router.Example.NET", 443)),
    ("[2001:db8::1]:443", Target("2001:db8::1", 443)),
    ("[2001:DB8::1]", Target("2001:db8::1")),
    ("2001:db8::1", Target("2001:db8::1")),
    (" 10.0.0.1 ", Target("10.0.0.1")),
])
def test_parse_target(text: str, expected: Target) -> None:
    assert parse_target(text) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("", "empty target"),
    ("10.0.0.1:", "the port must be a number from 1 to 65535"),
    ("10.0.0.1:0", "the port must be a number from 1 to 65535"),
    ("10.0.0.1:70000", "the port must be a number from 1 to 65535"),
    ("host:http", "the port must be a number"),
    ("[2001:db8::1", "missing ']'"),
    ("[2001:db8::1]443", "expected ':port' after ']'"),
    ("[not-v6]:1", "is not an IPv6 address"),
    ("2001:db8::1:443x", "put an IPv6 address in brackets"),
    ("-c", "is not a valid host name"),
    ("bad host", "is not a valid host name"),
    ("a..b", "is not a valid host name"),
    (":53", "no host"),
])
def test_parse_target_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        parse_target(text)


def test_target_text_and_key() -> None:
    assert str(Target("2001:db8::1", 443)) == "[2001:db8::1]:443"
    assert str(Target("gw")) == "gw"
    assert parse_target("GW.example:1").key == parse_target("gw.example.:1").key


# --- validation ------------------------------------------------------------------------------------


OWN = {"127.0.0.1": "this server", "10.0.0.5": "the primary database", "primary.example": "server p"}


def section(**kw: object) -> FailoverSection:
    return FailoverSection.model_validate(kw)


@pytest.mark.parametrize(("values", "expected"), [
    ({"ping_iterations": 25}, ["ping_iterations must be between 2 and 20 (got 25)"]),
    ({"ping_iterations": 1}, ["ping_iterations must be between 2 and 20 (got 1)"]),
    ({"ping_interval": 0.5}, ["ping_interval must be between 1 and 3600 (got 0.5)"]),
    ({"ping_interval": 4000.0, "ping_iterations": 2}, ["ping_interval must be between 1 and 3600 (got 4000)"]),
    ({"ping_interval": 15.0, "ping_iterations": 20}, []),
    ({"ping_iterations": None}, []),
])
def test_range_errors(values: dict[str, object], expected: list[str]) -> None:
    assert range_errors(values) == expected


@pytest.mark.parametrize(("kw", "expected"), [
    ({}, []),
    ({"witness_targets": ["10.1.1.1", "10.1.1.2:53"], "gateway": "10.0.0.254"}, []),
    ({"witness_targets": ["10.1.1.1", "10.1.1.1"]}, ["witness '10.1.1.1' is given twice (as '10.1.1.1' too)"]),
    ({"witness_targets": ["Witness.Example", "witness.example."]},
     ["witness 'witness.example.' is given twice (as 'Witness.Example' too)"]),
    ({"witness_targets": ["[2001:db8::1]:53", "[2001:DB8:0::1]:53"]},
     ["witness '[2001:DB8:0::1]:53' is given twice (as '[2001:db8::1]:53' too)"]),
    ({"witness_targets": ["10.1.1.1", "10.1.1.1:53"]}, []),  # a ping and a TCP check differ
    ({"witness_targets": ["bad host"]}, ["witness 'bad host': 'bad host' is not a valid host name or IP address"]),
    ({"witness_targets": ["10.0.0.5:5432"]}, ["witness '10.0.0.5:5432' is one of this cluster's own addresses "
                                              "(10.0.0.5: the primary database): a witness must tell that this "
                                              "server's own side of the network is up, independently of the "
                                              "cluster"]),
    ({"witness_targets": ["PRIMARY.example"]}, ["witness 'PRIMARY.example' is one of this cluster's own addresses "
                                                "(primary.example: server p): a witness must tell that this "
                                                "server's own side of the network is up, independently of the "
                                                "cluster"]),
    ({"witness_targets": ["127.0.0.2"]}, ["witness '127.0.0.2' is a loopback address: it always answers, so it "
                                          "tells nothing about the network"]),
    ({"witness_targets": ["[::1]:53", "LocalHost"]}, [
        "witness 'LocalHost' is a loopback address: it always answers, so it tells nothing about the network"]),
    ({"witness_targets": ["127.0.0.2:9"], "gateway": "127.0.0.3:9"}, []),  # TCP: a listener can go away
    ({"gateway": "127.0.0.1"}, ["gateway '127.0.0.1' is a loopback address: it always answers"]),
    ({"gateway": "gw:99999"}, ["gateway 'gw:99999': the port must be a number from 1 to 65535"]),
])
def test_validate_policy(kw: dict[str, object], expected: list[str]) -> None:
    assert validate_policy(section(**kw), OWN) == expected


def test_validate_policy_with_resolved_names() -> None:
    s = section(witness_targets=["db.example", "other.example"])
    errors = validate_policy(s, OWN, resolved={"db.example": ["10.0.0.5"], "other.example": ["10.9.9.9"]})
    assert errors == ["witness 'db.example' is one of this cluster's own addresses (10.0.0.5: the primary "
                      "database): a witness must tell that this server's own side of the network is up, "
                      "independently of the cluster"]
    # a plain set of addresses works too
    assert validate_policy(section(witness_targets=["10.0.0.5"]), {"10.0.0.5"}) == [
        "witness '10.0.0.5' is one of this cluster's own addresses (10.0.0.5): a witness must tell that this "
        "server's own side of the network is up, independently of the cluster"]


def test_validate_policy_too_many_witnesses() -> None:
    s = FailoverSection.model_construct(witness_targets=["a", "b", "c", "d"], gateway=None, ping_interval=15.0,
                                        ping_iterations=12)
    assert validate_policy(s, OWN) == ["at most 3 witness targets (got 4)"]


def test_warnings() -> None:
    assert "cannot tell its own network failure" in warnings_for(section(), default_gateway=None,
                                                                 ping_available=True)[0]
    assert warnings_for(section(), default_gateway="10.0.0.254", ping_available=True) == []
    [w] = warnings_for(section(witness_targets=["10.1.1.1", "10.1.1.2:53"]), default_gateway=None,
                       ping_available=False)
    assert "no 'ping' program" in w and "10.1.1.1" in w and "10.1.1.2:53" not in w
    [w] = warnings_for(section(), default_gateway="10.0.0.254", ping_available=False)
    assert "default gateway 10.0.0.254 cannot be checked" in w
