"""The health endpoints' decisions as tables: a server's state in, status codes out — no servers, no mocks."""

from __future__ import annotations

from dataclasses import replace

import pytest

from safehold.domain import ServerRole
from safehold.ha.health import (
    CHECKS,
    BadParameter,
    Database,
    ServerState,
    VaultCodes,
    replica,
    vault_answer,
    vault_codes,
)

P, S, A, R = ServerRole.PRIMARY, ServerRole.SECONDARY, ServerRole.STANDALONE, ServerRole.READONLY
OK, DOWN, REFUSING = Database.OK, Database.UNAVAILABLE, Database.REFUSING

PRIMARY = ServerState(P, OK)
READONLY = ServerState(R, OK, in_recovery=True, database_read_only=True, redirecting=True, streaming=True,
                       data_age=1.5)
EMERGENCY = replace(READONLY, redirecting=False)

# name -> (state, {check: status}, Vault's code); replica with the default limit of 30 s
STATES: dict[str, tuple[ServerState, dict[str, int], int]] = {
    "primary": (PRIMARY, dict(live=200, ready=200, writable=200, primary=200, readonly=503, replica=503), 200),
    "secondary": (ServerState(S, OK),
                  dict(live=200, ready=200, writable=200, primary=503, readonly=503, replica=503), 200),
    "standalone": (ServerState(A, OK),
                   dict(live=200, ready=200, writable=200, primary=200, readonly=503, replica=503), 200),
    "primary, write lease ran out": (
        replace(PRIMARY, lease_valid=False),
        dict(live=200, ready=200, writable=503, primary=503, readonly=503, replica=503), 429),
    "primary, database set read-only, not fenced yet": (
        replace(PRIMARY, database_read_only=True),
        dict(live=200, ready=200, writable=503, primary=503, readonly=503, replica=503), 429),
    "primary whose database became a replica (switchover, not followed yet)": (
        replace(PRIMARY, in_recovery=True, streaming=True, data_age=2.0),
        dict(live=200, ready=200, writable=503, primary=503, readonly=503, replica=200), 429),
    "fenced old primary": (
        replace(PRIMARY, fenced=True, database_read_only=True, redirecting=True),
        dict(live=200, ready=503, writable=503, primary=503, readonly=503, replica=503), 503),
    "fenced secondary, database down": (
        ServerState(S, DOWN, fenced=True),
        dict(live=200, ready=503, writable=503, primary=503, readonly=503, replica=503), 503),
    "primary, database refuses connections": (
        replace(PRIMARY, database=REFUSING),
        dict(live=200, ready=503, writable=503, primary=503, readonly=503, replica=503), 503),
    "primary, database down": (
        replace(PRIMARY, database=DOWN),
        dict(live=200, ready=503, writable=503, primary=503, readonly=503, replica=503), 503),
    "secondary, database down": (
        ServerState(S, DOWN),
        dict(live=200, ready=503, writable=503, primary=503, readonly=503, replica=503), 503),
    "read-only, redirecting": (
        READONLY, dict(live=200, ready=200, writable=503, primary=503, readonly=503, replica=200), 429),
    "read-only, redirecting, lagging": (
        replace(READONLY, data_age=31.0),
        dict(live=200, ready=200, writable=503, primary=503, readonly=503, replica=503), 429),
    "read-only, redirecting, data age unknown": (
        replace(READONLY, data_age=None),
        dict(live=200, ready=200, writable=503, primary=503, readonly=503, replica=503), 429),
    "read-only, emergency mode, primary database up": (
        EMERGENCY, dict(live=200, ready=200, writable=503, primary=503, readonly=200, replica=200), 473),
    "read-only, emergency mode, primary database down": (
        replace(EMERGENCY, streaming=False, data_age=40.0),
        dict(live=200, ready=503, writable=503, primary=503, readonly=200, replica=503), 473),
    "read-only, redirecting, replica not streaming": (
        replace(READONLY, streaming=False),
        dict(live=200, ready=503, writable=503, primary=503, readonly=503, replica=503), 429),
    "read-only, replica promoted, not taken over yet": (
        replace(EMERGENCY, in_recovery=False, database_read_only=False, streaming=False, data_age=None),
        dict(live=200, ready=503, writable=503, primary=503, readonly=200, replica=503), 473),
    "read-only, database down": (
        ServerState(R, DOWN, redirecting=True),
        dict(live=200, ready=503, writable=503, primary=503, readonly=503, replica=503), 503),
    "read-only, emergency mode, database refuses connections": (
        replace(EMERGENCY, database=REFUSING),
        dict(live=200, ready=503, writable=503, primary=503, readonly=503, replica=503), 503),
}


@pytest.mark.parametrize("name", list(STATES))
def test_every_check_and_vaults_code_for_each_state(name: str) -> None:
    state, expected, vault = STATES[name]
    answered = {check: decide(state).status for check, decide in CHECKS.items()}
    answered["replica"] = replica(state, 30.0).status
    assert answered == expected
    assert vault_answer(state).status == vault
    for check, decide in CHECKS.items():  # every answer says why, in a sentence
        assert decide(state).reason and decide(state).reason[0].islower(), check


def test_the_table_covers_every_check() -> None:
    assert {*CHECKS, "replica"} == set(next(iter(STATES.values()))[1])


@pytest.mark.parametrize(("database", "words"), [
    (REFUSING, "refuses connections"),
    (DOWN, "does not answer"),
])
def test_a_database_that_refuses_connections_is_told_apart_from_one_that_is_down(database: Database,
                                                                                 words: str) -> None:
    for check in ("ready", "writable", "primary"):
        verdict = CHECKS[check](replace(PRIMARY, database=database))
        assert not verdict.ok and words in verdict.reason, check


def test_live_never_needs_the_database() -> None:
    assert CHECKS["live"](ServerState(P, Database.UNCHECKED)).status == 200
    assert CHECKS["live"](ServerState(R, DOWN, fenced=True)).status == 200


@pytest.mark.parametrize(("age", "limit", "status"), [
    (5.0, 10.0, 200),
    (5.0, 5.0, 200),
    (5.0, 4.9, 503),
    (0.0, 0.0, 200),
    (0.001, 0.0, 503),
    (3600.0, 86400.0, 200),
])
def test_replica_lag_limit(age: float, limit: float, status: int) -> None:
    verdict = replica(replace(READONLY, data_age=age), limit)
    assert verdict.status == status
    assert f"{limit:g} s" in verdict.reason


# --- Vault's query parameters ----------------------------------------------------------------------

STANDBY = READONLY
PERF_STANDBY = EMERGENCY
SEALED = replace(PRIMARY, fenced=True)


@pytest.mark.parametrize(("query", "state", "status"), [
    ({}, PRIMARY, 200),
    ({}, STANDBY, 429),
    ({}, PERF_STANDBY, 473),
    ({}, SEALED, 503),
    ({"standbyok": "true"}, STANDBY, 200),
    ({"standbyok": "true"}, PERF_STANDBY, 473),       # as in Vault: standbyok is not for performance standbys
    ({"standbyok": "true", "activecode": "204"}, STANDBY, 204),
    ({"standbyok": "1"}, replace(PRIMARY, lease_valid=False), 200),
    ({"standbyok": ""}, STANDBY, 429),                 # an empty value is false
    ({"standbyok": "false"}, STANDBY, 429),
    ({"perfstandbyok": "true"}, PERF_STANDBY, 200),
    ({"perfstandbyok": "True"}, STANDBY, 429),
    ({"perfstandbyok": "t", "activecode": "299"}, PERF_STANDBY, 299),
    ({"standbyok": "true"}, SEALED, 503),
    ({"activecode": "201"}, PRIMARY, 201),
    ({"activecode": "+202"}, PRIMARY, 202),
    ({"standbycode": "299"}, STANDBY, 299),
    ({"standbycode": "299"}, PRIMARY, 200),
    ({"performancestandbycode": "298"}, PERF_STANDBY, 298),
    ({"perfstandbycode": "297"}, PERF_STANDBY, 297),
    ({"performancestandbycode": "298", "perfstandbycode": "297"}, PERF_STANDBY, 298),  # Vault's spelling wins
    ({"sealedcode": "500"}, SEALED, 500),
    ({"sealedcode": "500"}, replace(READONLY, database=DOWN), 500),
    ({"sealedcode": "500"}, replace(PRIMARY, database=REFUSING), 500),
    ({"uninitcode": "200", "drsecondarycode": "200"}, SEALED, 503),  # never the state of a serving server
    ({"unknown": "x"}, PRIMARY, 200),                  # other parameters are ignored
])
def test_vault_codes(query: dict[str, str], state: ServerState, status: int) -> None:
    assert vault_answer(state, vault_codes(query)).status == status


@pytest.mark.parametrize(("query", "name"), [
    ({"standbyok": "yes"}, "standbyok"),
    ({"perfstandbyok": "2"}, "perfstandbyok"),
    ({"activecode": "abc"}, "activecode"),
    ({"activecode": ""}, "activecode"),
    ({"activecode": "2_00"}, "activecode"),
    ({"activecode": " 200"}, "activecode"),
    ({"standbycode": "199"}, "standbycode"),            # not a final status
    ({"sealedcode": "600"}, "sealedcode"),
    ({"performancestandbycode": "1000"}, "performancestandbycode"),
    ({"perfstandbycode": "-200"}, "perfstandbycode"),
    ({"uninitcode": "x"}, "uninitcode"),
    ({"drsecondarycode": "99999999999"}, "drsecondarycode"),
])
def test_a_bad_parameter_is_refused_by_name(query: dict[str, str], name: str) -> None:
    with pytest.raises(BadParameter) as refused:
        vault_codes(query)
    assert refused.value.name == name and name in refused.value.message


def test_vault_defaults_are_vaults() -> None:
    assert vault_codes({}) == VaultCodes(False, False, 200, 429, 473, 503, 501, 472)


@pytest.mark.parametrize(("state", "flags"), [
    (PRIMARY, (False, False, False)),
    (STANDBY, (False, True, False)),
    (PERF_STANDBY, (False, True, True)),
    (SEALED, (True, True, False)),
    (replace(READONLY, database=DOWN), (True, True, False)),
    (replace(PRIMARY, lease_valid=False), (False, True, False)),
])
def test_vault_body_flags(state: ServerState, flags: tuple[bool, bool, bool]) -> None:
    a = vault_answer(state)
    assert (a.sealed, a.standby, a.performance_standby) == flags
