"""Synchronous mode's decision as a table: (state, what the primary reports, on/off, time) -> (next state,
actions).  No database, no mocks."""

from __future__ import annotations

import pytest

from safehold.ha.syncrep import (
    SYNC_CONDITION,
    ClearAlarm,
    RaiseAlarm,
    SetSyncNames,
    SyncAction,
    SyncGuardState,
    SyncView,
    decide_sync,
    desired_sync_names,
    quote_standby_name,
)

A = "0b0c3f52-8c1e-4a55-9d1f-000000000001"
B = "0b0c3f52-8c1e-4a55-9d1f-000000000002"
BOTH = f'ANY 1 ("{A}", "{B}")'
ONLY_A = f'ANY 1 ("{A}")'
LIMIT = 30.0


@pytest.mark.parametrize(("names", "expected"), [
    ([], ""),
    ([A], ONLY_A),
    ([B, A], BOTH),  # sorted
    ([A, A, B], BOTH),  # unique
    (["Ro-1"], 'ANY 1 ("Ro-1")'),  # case kept: quoted
    (['we"ird'], 'ANY 1 ("we""ird")'),  # inner quotes doubled
])
def test_desired_sync_names(names: list[str], expected: str) -> None:
    assert desired_sync_names(names) == expected


@pytest.mark.parametrize("bad", ["", "a\nb", "a\0b"])
def test_a_name_that_cannot_be_a_standby_name_is_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        quote_standby_name(bad)


def view(current: str = "", streaming: tuple[str, ...] = (), standbys: tuple[str, ...] = (A, B)) -> SyncView:
    return SyncView(standbys=standbys, streaming=frozenset(streaming), current=current)


def raised(seconds: float) -> RaiseAlarm:
    return RaiseAlarm(SYNC_CONDITION, f"no synchronous standby has been connected for {seconds:.0f} s (limit "
                                      f"{LIMIT:g} s): the primary replicates asynchronously; commits no longer "
                                      "wait for a read-only replica")


OFF = ClearAlarm("synchronous mode is off: replication is asynchronous by choice")
GONE = SyncGuardState(missing_since=100.0)  # no standby since t=100
DEGRADED = SyncGuardState(missing_since=100.0, alarm=True)

CASES: list[tuple[str, SyncGuardState | None, SyncView, bool, float, SyncGuardState, list[SyncAction]]] = [
    # --- off: asynchronous, whatever is there
    ("off, async already: nothing to do", None, view(), False, 100, SyncGuardState(), []),
    ("off, names set (e.g. turned off meanwhile): reset", SyncGuardState(), view(BOTH, (A,)), False, 100,
     SyncGuardState(), [SetSyncNames("")]),
    ("off while degraded: reset done already, alarm cleared", DEGRADED, view(""), False, 200,
     SyncGuardState(), [OFF]),
    # --- on, a standby streams
    ("turned on, a standby streams: both named", SyncGuardState(), view("", (A,)), True, 100,
     SyncGuardState(), [SetSyncNames(BOTH)]),
    ("on, in place: nothing to do", SyncGuardState(), view(BOTH, (A, B)), True, 100, SyncGuardState(), []),
    ("guard restarts with sync in place", None, view(BOTH, (B,)), True, 100, SyncGuardState(), []),
    ("a new read-only server is registered: named too", SyncGuardState(), view(ONLY_A, (A,)), True, 100,
     SyncGuardState(), [SetSyncNames(BOTH)]),
    ("a standby back within the limit: no alarm was raised", GONE, view(BOTH, (A,)), True, 110,
     SyncGuardState(), []),
    ("a standby back after degrading: names set, then alarm cleared", DEGRADED, view("", (B,)), True, 200,
     SyncGuardState(), [SetSyncNames(BOTH), ClearAlarm(f"synchronous replication restored with {B}")]),
    ("restored already, only the alarm was not logged: cleared now", DEGRADED, view(BOTH, (A, B)), True, 200,
     SyncGuardState(), [ClearAlarm(f"synchronous replication restored with {A}, {B}")]),
    ("a streaming walsender that is no registered read-only server does not count",
     SyncGuardState(), view("", ("pg_basebackup",)), True, 100,
     SyncGuardState(missing_since=100, alarm=False), [SetSyncNames(BOTH)]),
    # --- on, none streams: wait for the limit, then degrade and raise the alarm once
    ("none streams: the wait starts, commits wait", SyncGuardState(), view(BOTH), True, 100, GONE, []),
    ("turned on with none streaming: named, commits wait for one", SyncGuardState(), view(""), True, 100,
     GONE, [SetSyncNames(BOTH)]),
    ("still within the limit", GONE, view(BOTH), True, 129.9, GONE, []),
    ("the limit passes: reset first, then the alarm", GONE, view(BOTH), True, 130, DEGRADED,
     [SetSyncNames(""), raised(30)]),
    ("degraded and still none: nothing more (one alarm)", DEGRADED, view(""), True, 500, DEGRADED, []),
    ("degraded but someone set names again: reset again, no second alarm", DEGRADED, view(BOTH), True, 500,
     DEGRADED, [SetSyncNames("")]),
    ("the reset was done but the alarm not logged: logged now", GONE, view(""), True, 145, DEGRADED,
     [raised(45)]),
    ("guard starts, names in place, none streams: the wait starts now", None, view(BOTH), True, 100, GONE, []),
    ("guard starts asynchronous with none streaming: alarm at once, commits do not wait again",
     None, view(""), True, 100, SyncGuardState(missing_since=100 - LIMIT, alarm=True), [raised(30)]),
    ("no read-only server registered at all: nothing to name, alarm after the limit",
     SyncGuardState(missing_since=100.0), view("", standbys=()), True, 131,
     SyncGuardState(missing_since=100.0, alarm=True),
     [RaiseAlarm(SYNC_CONDITION, f"no read-only server is registered (limit {LIMIT:g} s): the primary replicates "
                                 "asynchronously; commits no longer wait for a read-only replica")]),
]


@pytest.mark.parametrize(("state", "seen", "enabled", "now", "expected_state", "expected"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_decide_sync(state: SyncGuardState | None, seen: SyncView, enabled: bool, now: float,
                     expected_state: SyncGuardState, expected: list[SyncAction]) -> None:
    assert decide_sync(state, seen, enabled=enabled, now=now, degrade_after=LIMIT) == (expected_state, expected)


def test_a_standby_that_goes_and_comes_back_raises_and_clears_one_alarm() -> None:
    """A replay of cycles: streaming, gone for longer than the limit, back."""
    state: SyncGuardState | None = None
    current = ""
    log: list[SyncAction] = []
    timeline = [(0, (A,)), (2, (A,)), (4, ()), (20, ()), (34, ()), (36, ()), (60, ()), (62, (A,)), (64, (A,))]
    for now, streaming in timeline:
        state, actions = decide_sync(state, view(current, streaming), enabled=True, now=now, degrade_after=LIMIT)
        for a in actions:
            if isinstance(a, SetSyncNames):
                current = a.value
        log.extend(actions)
    assert log == [SetSyncNames(BOTH), SetSyncNames(""), raised(30),
                   SetSyncNames(BOTH), ClearAlarm(f"synchronous replication restored with {A}")]
    assert current == BOTH and state == SyncGuardState()
