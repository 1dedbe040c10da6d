"""Hysteresis of the HA monitor as tables: a sequence of probe results in, the transitions each check logs
out (``policy.confirm`` then ``policy.transitions``, as ``ha/monitor.py`` runs them) — no servers, no mocks."""

from __future__ import annotations

import json

import pytest

from safehold.ha.monitor import from_json, to_json
from safehold.ha.policy import Confirmed, Health, Liveness, Snapshot, Streak, confirm, transitions

A, F = Health.ALIVE, Health.FAILED
ON, OFF = Liveness.ACTIVE, Liveness.INACTIVE


def probe(token: str) -> Snapshot:
    """One check's raw results: ``A``/``F`` the read-only replica's HA and replication status (Alive or Failed),
    then ``+``/``-`` whether the read-only server answered (active or inactive); ``+`` when left out."""
    health = A if token[0] == "A" else F
    ro = OFF if token[1:] == "-" else ON
    return Snapshot({"ro": health}, {"ro": health}, {"p": ON, "ro": ro}, frozenset({"ro"}), "p")


SETTLED = Confirmed(probe("A+"))  # what the monitor confirmed before: all Alive, both servers active


def replay(start: Confirmed | None, tokens: str, checks: int) -> list[str]:
    """The events each check logs, as ``<check number>:<kind>``, the subject left out when it is "ro"."""
    state, logged = start, []
    for number, token in enumerate(tokens.split(), 1):
        new = confirm(state, probe(token), checks)
        logged += [f"{number}:{e.kind.value}" + ("" if e.subject == "ro" else f":{e.subject}")
                   for e in transitions(state.snapshot if state is not None else None, new.snapshot)]
        state = new
    return logged


FAILED_BOTH = ["{n}:HAFailed", "{n}:ReplicationFailed"]
ALIVE_BOTH = ["{n}:HAAlive", "{n}:ReplicationAlive"]


def at(n: int, kinds: list[str]) -> list[str]:
    return [k.format(n=n) for k in kinds]


@pytest.mark.parametrize(("tokens", "checks", "expected"), [
    pytest.param("F A F A", 3, [], id="the outage story's flapping (Failed, Alive, Failed, Alive): nothing logged"),
    pytest.param("F A F A A A", 3, [], id="flapping that settles where it was: nothing"),
    pytest.param("F F F", 3, at(3, FAILED_BOTH), id="a failure that holds: logged at the third check"),
    pytest.param("F F A F F F", 3, at(6, FAILED_BOTH), id="an Alive check in between starts the count again"),
    pytest.param("F F F F F", 3, at(3, FAILED_BOTH), id="logged once, however long it holds"),
    pytest.param("F F F A A A", 3, at(3, FAILED_BOTH) + at(6, ALIVE_BOTH), id="down, then back: two events each"),
    pytest.param("F F F A F A A A", 3, at(3, FAILED_BOTH) + at(8, ALIVE_BOTH),
                 id="recovering with a relapse: Alive once it held"),
    pytest.param("F A", 2, [], id="two checks: one Failed check is not enough"),
    pytest.param("F F", 2, at(2, FAILED_BOTH), id="two checks: two are"),
    pytest.param("F A F A", 1, at(1, FAILED_BOTH) + at(2, ALIVE_BOTH) + at(3, FAILED_BOTH) + at(4, ALIVE_BOTH),
                 id="one check: every change at once (the behaviour without hysteresis)"),
    pytest.param("A- A- A+ A- A-", 3, [], id="a read-only server missing answers now and then: not inactive"),
    pytest.param("A- A- A-", 3, ["3:ServerInactive", "3:StandbyOffline"],
                 id="a read-only server that stopped answering: inactive, and a standby offline, once"),
    pytest.param("F- F- F-", 3, [*at(3, FAILED_BOTH), "3:ServerInactive", "3:StandbyOffline"],
                 id="the whole read-only side down: everything at the same check"),
    pytest.param("F+ F- F- F-", 3, [*at(3, FAILED_BOTH), "4:ServerInactive", "4:StandbyOffline"],
                 id="each subject counts its own checks"),
])
def test_a_new_state_is_logged_once_it_held_for_the_confirm_checks(tokens: str, checks: int,
                                                                   expected: list[str]) -> None:
    assert replay(SETTLED, tokens, checks) == expected


@pytest.mark.parametrize(("tokens", "expected"), [
    pytest.param("A A A", [], id="a monitor just started on a healthy cluster: nothing (no Alive events)"),
    pytest.param("F F F", at(3, FAILED_BOTH), id="a failure is never hidden, once confirmed"),
    pytest.param("F F A A A", [], id="a failure that did not hold is not reported at start either"),
    pytest.param("A- A- A-", ["3:ServerInactive", "3:StandbyOffline"], id="a server inactive from the start"),
])
def test_a_monitor_with_no_stored_snapshot(tokens: str, expected: list[str]) -> None:
    assert replay(None, tokens, 3) == expected


def test_the_states_being_confirmed_are_kept_between_checks() -> None:
    one = confirm(SETTLED, probe("F+"), 3)
    assert one.snapshot == SETTLED.snapshot  # nothing confirmed yet: the old statuses stand
    assert one.streaks == {("ha", "ro"): Streak("Failed", 1), ("replication", "ro"): Streak("Failed", 1)}
    two = confirm(one, probe("F+"), 3)
    assert two.streaks[("ha", "ro")] == Streak("Failed", 2)
    assert confirm(two, probe("A+"), 3) == SETTLED  # back to the confirmed state: the streaks end


def test_a_server_no_longer_probed_is_forgotten() -> None:
    gone = Snapshot({}, {}, {"p": ON}, frozenset(), "p")
    half = confirm(SETTLED, probe("F-"), 3)
    assert confirm(half, gone, 3) == Confirmed(gone)


def test_the_stored_form_keeps_the_streaks_and_reads_the_older_form() -> None:
    state = confirm(confirm(SETTLED, probe("F-"), 3), probe("F-"), 3)
    stored = json.loads(json.dumps(to_json(state)))  # as the database keeps it (JSONB)
    assert from_json(stored) == state
    older = {"ha": {"ro": "Alive"}, "replication": {"ro": "Alive"}, "servers": {"p": "active", "ro": "active"},
             "standbys": ["ro"]}  # stored before the streaks were kept
    loaded = from_json(older)
    assert loaded is not None and loaded.snapshot.ha == {"ro": A} and loaded.streaks == {}
    assert from_json(None) is None and from_json({}) is None
