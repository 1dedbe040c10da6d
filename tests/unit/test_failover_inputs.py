"""The automatic failover's gateway and witnesses, watched all the time (``ha/failover_inputs.py``): when a
probe result changes what is reported, the alarm it raises and clears, and the HA monitor's events (pure
tables, no network)."""

from __future__ import annotations

import pytest

from safehold.ha.failover_inputs import (
    WITNESS_UNREACHABLE,
    InputKind,
    InputState,
    alarm_step,
    initial,
    inputs_from_json,
    step,
)
from safehold.ha.monitor import from_json, to_json
from safehold.ha.policy import Confirmed, EventKind, Health, Snapshot, confirm, transitions

W = InputState(InputKind.WITNESS, "10.0.0.1:22")


def run(results: list[bool | None], checks: int = 3) -> list[bool | None]:
    """The reported state after each probe of one witness."""
    states, out = (W,), []
    for n, r in enumerate(results):
        states = step(states, [r], checks, float(n))
        out.append(states[0].reachable)
    return out


@pytest.mark.parametrize(("results", "reported"), [
    # a first answer is taken at once: there is nothing to report
    ([True, True], [True, True]),
    # a first failure is confirmed like any other
    ([False, False, False], [None, None, False]),
    # one lost probe reports nothing
    ([True, False, True, False, True], [True] * 5),
    # three in a row each way
    ([True, False, False, False, True, True, True], [True, True, True, False, False, False, True]),
    # a streak broken by the confirmed state starts over
    ([True, False, False, True, False, False, False], [True, True, True, True, True, True, False]),
    # no answer possible (no ping program): unknown at once, and reachable again at its first answer
    ([True, None, True], [True, None, True]),
])
def test_a_change_is_reported_after_checks_probes_in_a_row(results: list[bool | None],
                                                           reported: list[bool | None]) -> None:
    assert run(results) == reported


def test_one_check_reports_every_probe() -> None:
    assert run([True, False, True], checks=1) == [True, False, True]


def test_since_is_when_the_state_was_confirmed() -> None:
    states = (W,)
    for n, r in enumerate([True, True, False, False, False]):
        states = step(states, [r], 3, 100.0 + n)
    assert states[0].reachable is False and states[0].since == 104.0


def test_one_result_per_target() -> None:
    with pytest.raises(ValueError):
        step(initial(["a", "b"], None), [True], 3, 0.0)


def test_the_alarm_is_raised_again_when_the_set_changes_and_cleared_when_all_answer() -> None:
    a, b = InputState(InputKind.WITNESS, "a", False), InputState(InputKind.GATEWAY, "gw", True)
    first = alarm_step((a, b), None)
    assert first.raise_text is not None and first.raise_text.startswith("witness a does not answer")
    assert alarm_step((a, b), first.raise_text) == alarm_step((), None)  # nothing new: nothing to do
    both = alarm_step((a, InputState(InputKind.GATEWAY, "gw", False)), first.raise_text)
    assert both.raise_text is not None and both.raise_text.startswith("witness a, gateway gw do not answer")
    cleared = alarm_step((InputState(InputKind.WITNESS, "a", True), b), first.raise_text)
    assert cleared.raise_text is None and cleared.clear_text is not None
    assert alarm_step((InputState(InputKind.WITNESS, "a", None),), None).raise_text is None  # unknown: no alarm
    assert WITNESS_UNREACHABLE == "WitnessUnreachable"


def test_the_report_round_trips_and_malformed_entries_are_dropped() -> None:
    states = (InputState(InputKind.WITNESS, "a", False, 12.5), InputState(InputKind.GATEWAY, "gw", None))
    assert inputs_from_json([s.to_json() for s in states]) == states
    assert inputs_from_json([{"kind": "moon", "target": "x"}, {"kind": "witness", "target": 3}, "x",
                             {"kind": "witness", "target": "a", "reachable": "yes"}]) == ()
    assert inputs_from_json(None) == ()


def test_the_monitor_logs_witness_events_once_confirmed() -> None:
    key = "ro1: witness a"
    down, up = Snapshot({}, {}, {}, inputs={key: Health.FAILED}), Snapshot({}, {}, {}, inputs={key: Health.ALIVE})
    # a monitor that just started reports only a failure
    assert transitions(None, up) == []
    events = transitions(None, down)
    assert [(e.kind, e.subject, e.args) for e in events] == [(EventKind.WITNESS_UNREACHABLE, key, ("ro1", "witness a"))]
    assert "witness a of ro1 does not answer" in events[0].message
    back = transitions(down, up)
    assert [(e.kind, e.message) for e in back] == [(EventKind.WITNESS_REACHABLE, "witness a of ro1 answers again")]
    # the monitor's own hysteresis applies too, and its stored snapshot keeps the inputs
    c = confirm(Confirmed(up), down, 2)
    assert c.snapshot.inputs == {key: Health.ALIVE}
    c = confirm(c, down, 2)
    assert c.snapshot.inputs == {key: Health.FAILED}
    restored = from_json(to_json(c))
    assert restored is not None and restored.snapshot.inputs == {key: Health.FAILED}
