"""The automatic failover's inputs, watched all the time: its gateway and witness targets.

They decide whether a read-only server may promote itself when the primary stops answering (its own side of
the network must be up), so a dead one must be found while the primary is well, not at the worst moment.
The failover watch probes every one of them each round; this module decides, purely, what the probes mean:

- a target's reported state changes only once ``checks`` consecutive probes saw the new state (the HA
  monitor's hysteresis, ``ha.status_confirm_checks``), so a lost packet raises no alarm; a target's first
  result that it is reachable is taken at once (there is nothing to report), a first failure is confirmed
  like any other;
- a gateway that cannot be pinged (no ``ping`` program) is *unknown*, never an alarm;
- while any target is confirmed unreachable, the server raises the alarm :data:`WITNESS_UNREACHABLE`
  (again when the set changes), and clears it once all are back.

The watch's report (:class:`InputState`) travels in ``/api/v1/ha/local``; the acting primary's HA monitor
turns its changes into the events ``WitnessUnreachable`` and ``WitnessReachable`` (``ha/policy.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

#: the alarm condition raised while a witness or the gateway is unreachable (the value never changes)
WITNESS_UNREACHABLE = "WitnessUnreachable"


class InputKind(StrEnum):
    WITNESS = "witness"
    GATEWAY = "gateway"


@dataclass(frozen=True)
class InputState:
    """One target as the watch reports it: its confirmed state (``reachable``: None while unknown) since
    ``since`` (seconds since the epoch; None before the first confirmation), and the probes still confirming
    a change (``seen`` at ``streak`` consecutive probes)."""

    kind: InputKind
    target: str
    reachable: bool | None = None
    since: float | None = None
    seen: bool | None = None
    streak: int = 0

    @property
    def label(self) -> str:
        return f"{self.kind.value} {self.target}"

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "target": self.target, "reachable": self.reachable, "since": self.since}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> InputState | None:
        """A peer's entry; None when it is malformed (an older or damaged report)."""
        try:
            kind = InputKind(d["kind"])
        except (KeyError, ValueError, TypeError):
            return None
        target, reachable, since = d.get("target"), d.get("reachable"), d.get("since")
        if not isinstance(target, str) or reachable not in (True, False, None):
            return None
        return cls(kind, target, reachable, float(since) if isinstance(since, int | float) else None)


def inputs_from_json(items: Any) -> tuple[InputState, ...]:
    if not isinstance(items, list):
        return ()
    parsed = (InputState.from_json(d) for d in items if isinstance(d, Mapping))
    return tuple(s for s in parsed if s is not None)


def initial(witnesses: Sequence[str], gateway: str | None) -> tuple[InputState, ...]:
    return (*(InputState(InputKind.WITNESS, w) for w in witnesses),
            *((InputState(InputKind.GATEWAY, gateway),) if gateway else ()))


def _one(state: InputState, result: bool | None, checks: int, now: float) -> InputState:
    """One more probe of one target (``result`` None: it could not be asked, e.g. no ping program)."""
    if result is None:  # unknown: nothing to confirm, nothing to alarm
        return replace(state, reachable=None, since=now if state.reachable is not None else state.since,
                       seen=None, streak=0)
    if result == state.reachable:
        return replace(state, seen=result, streak=0)
    if state.reachable is None and result:  # a first answer, or back from unknown: nothing to report
        return replace(state, reachable=True, since=now, seen=True, streak=0)
    streak = state.streak + 1 if state.seen == result else 1
    if streak >= max(1, checks):
        return replace(state, reachable=result, since=now, seen=result, streak=0)
    return replace(state, seen=result, streak=streak)


def step(states: Sequence[InputState], results: Sequence[bool | None], checks: int,
         now: float) -> tuple[InputState, ...]:
    """The targets after one more round of probes (``results`` in the order of ``states``)."""
    if len(states) != len(results):
        raise ValueError("one probe result per target")
    return tuple(_one(s, r, checks, now) for s, r in zip(states, results, strict=True))


def unreachable(states: Sequence[InputState]) -> tuple[InputState, ...]:
    return tuple(s for s in states if s.reachable is False)


def alarm_message(states: Sequence[InputState]) -> str | None:
    """The alarm's text while any target is confirmed unreachable (None: none is)."""
    down = unreachable(states)
    if not down:
        return None
    names = ", ".join(s.label for s in down)
    verb = "does" if len(down) == 1 else "do"
    return (f"{names} {verb} not answer: if the primary failed now, this server could not tell its own network "
            "failure from the primary's, and automatic failover might not promote it; check the target or "
            "change the policy ('safehold ha failover')")


@dataclass(frozen=True)
class AlarmStep:
    """What to do with the alarm: raise it (again, with this text) or clear it; both None: nothing."""

    raise_text: str | None = None
    clear_text: str | None = None


def alarm_step(states: Sequence[InputState], raised: str | None) -> AlarmStep:
    """``raised``: the text of the witness alarm this server holds now (None: it holds none)."""
    text = alarm_message(states)
    if text is not None and text != raised:
        return AlarmStep(raise_text=text)
    if text is None and raised is not None:
        return AlarmStep(clear_text="every witness and the gateway of automatic failover answer again")
    return AlarmStep()


def describe(states: Sequence[InputState]) -> str:
    """One line for status output: each target and its state."""
    word = {True: "reachable", False: "UNREACHABLE", None: "unknown"}
    return "; ".join(f"{s.label} {word[s.reachable]}" for s in states) or "none configured"
