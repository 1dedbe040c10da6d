"""HA decisions as pure functions over what the monitors observed (no I/O here).

Each function takes plain, immutable observations and returns plain values,
so the whole policy is tested as tables; the monitors and executors that
gather observations and carry out decisions live elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TypeVar

from safehold.domain import ServerRole


class Liveness(StrEnum):
    ACTIVE = "active"
    INACTIVE = "inactive"


class Health(StrEnum):
    ALIVE = "Alive"
    FAILED = "Failed"


class EventKind(StrEnum):
    HA_ALIVE = "HAAlive"
    HA_FAILED = "HAFailed"
    REPLICATION_ALIVE = "ReplicationAlive"
    REPLICATION_FAILED = "ReplicationFailed"
    SERVER_ACTIVE = "ServerActive"
    SERVER_INACTIVE = "ServerInactive"
    STANDBY_OFFLINE = "StandbyOffline"
    FAILOVER = "Failover"
    MANUAL_SWITCH = "ManualSwitch"
    RAISE_ALARM = "RaiseAlarm"
    CLEAR_ALARM = "ClearAlarm"
    FENCED = "Fenced"
    EMERGENCY_MODE = "EmergencyMode"  # a read-only server served users itself (safehold.audit.emergency.EVENT)
    # a read-only server's automatic failover gateway or witness stopped answering, or answers again
    WITNESS_UNREACHABLE = "WitnessUnreachable"
    WITNESS_REACHABLE = "WitnessReachable"


@dataclass(frozen=True)
class PeerObservation:
    """One app server as seen from another: did it answer its health check (database included)?"""

    server_id: str
    name: str
    role: ServerRole
    url: str
    healthy: bool


def redirect_target(peers: Iterable[PeerObservation]) -> PeerObservation | None:
    """Where a read-only server sends its users: the primary if active, else a secondary, else nobody
    (it then serves them itself in read-only emergency mode)."""
    healthy = [p for p in peers if p.healthy]
    for role in (ServerRole.PRIMARY, ServerRole.SECONDARY):
        for p in sorted(healthy, key=lambda p: p.name):
            if p.role == role:
                return p
    return None


@dataclass(frozen=True)
class ReplicaObservation:
    """One replica, as the primary database (pg_stat_replication) and the replica itself report it."""

    name: str
    connected: bool
    state: str | None = None  # 'streaming', 'catchup', 'startup', 'backup', ...
    lag_bytes: int | None = None
    lag_seconds: float | None = None
    receiver_error: bool = False


@dataclass(frozen=True)
class Thresholds:
    lag_seconds: float = 30.0
    lag_bytes: int = 64 * 1024 * 1024


def ha_status(r: ReplicaObservation) -> Health:
    """Is the replica connected and streaming?"""
    return Health.ALIVE if r.connected and r.state == "streaming" else Health.FAILED


def replication_status(r: ReplicaObservation, t: Thresholds) -> Health:
    """Is it applying without error within the lag threshold?"""
    if ha_status(r) is Health.FAILED or r.receiver_error:
        return Health.FAILED
    if r.lag_seconds is not None and r.lag_seconds > t.lag_seconds:
        return Health.FAILED
    if r.lag_bytes is not None and r.lag_bytes > t.lag_bytes:
        return Health.FAILED
    return Health.ALIVE


@dataclass(frozen=True)
class Snapshot:
    """The cluster's state at one moment: what transitions are computed from."""

    ha: Mapping[str, Health]            # replica name -> HA status
    replication: Mapping[str, Health]   # replica name -> replication status
    servers: Mapping[str, Liveness]     # server name -> active/inactive
    standbys: frozenset[str] = frozenset()  # names of servers with the readonly role
    active: str = ""  # name of the acting primary (the StandbyOffline event names it)
    # "<server>: witness <target>" (or gateway) -> reachable (Alive) or not (Failed), as the read-only
    # servers' failover watches report them
    inputs: Mapping[str, Health] = field(default_factory=dict)


@dataclass(frozen=True)
class Event:
    kind: EventKind
    subject: str
    message: str
    # the event script's arguments after the event name (Failover <active> <standby>, ...)
    args: tuple[str, ...] = ()


def transitions(before: Snapshot | None, now: Snapshot) -> list[Event]:
    """The events between two snapshots: one per change, none when nothing changed.

    With no earlier snapshot (a monitor just started) only failures are reported, so a restart
    does not repeat every 'Alive' event but never hides a failure."""
    events: list[Event] = []

    def changes(old: Mapping[str, str] | None, new: Mapping[str, str]) -> Iterable[tuple[str, str]]:
        for subject in sorted(new):
            prev = None if old is None else old.get(subject)
            if prev != new[subject] and (prev is not None or new[subject] in (Health.FAILED, Liveness.INACTIVE)):
                yield subject, new[subject]

    for name, h in changes(before.ha if before else None, now.ha):
        kind = EventKind.HA_ALIVE if h is Health.ALIVE else EventKind.HA_FAILED
        events.append(Event(kind, name, f"HA status of {name} is {h}"))
    for name, h in changes(before.replication if before else None, now.replication):
        kind = EventKind.REPLICATION_ALIVE if h is Health.ALIVE else EventKind.REPLICATION_FAILED
        events.append(Event(kind, name, f"replication status of {name} is {h}"))
    for name, live in changes(before.servers if before else None, now.servers):
        if live is Liveness.ACTIVE:
            events.append(Event(EventKind.SERVER_ACTIVE, name, f"server {name} is active"))
        else:
            events.append(Event(EventKind.SERVER_INACTIVE, name, f"server {name} is inactive"))
            if name in now.standbys:
                events.append(Event(EventKind.STANDBY_OFFLINE, name, f"standby {name} is offline",
                                    (name, now.active)))
    for subject, h in changes(before.inputs if before else None, now.inputs):
        server, _, target = subject.partition(": ")
        if h is Health.ALIVE:
            events.append(Event(EventKind.WITNESS_REACHABLE, subject, f"{target} of {server} answers again",
                                (server, target)))
        else:
            events.append(Event(EventKind.WITNESS_UNREACHABLE, subject, f"{target} of {server} does not answer: "
                                "its automatic failover could not tell its own network failure from the primary's",
                                (server, target)))
    return events


# --- hysteresis: a new status is logged only once it held for several checks in a row --------------------------

#: the parts of a :class:`Snapshot` whose states are confirmed before they are logged
CATEGORIES = ("ha", "replication", "servers", "inputs")
S = TypeVar("S", Health, Liveness)


@dataclass(frozen=True)
class Streak:
    """A subject seen in a state other than its confirmed one, at ``checks`` consecutive checks so far."""

    state: str
    checks: int


@dataclass(frozen=True)
class Confirmed:
    """What the HA monitor keeps between its checks: the statuses that held long enough to be logged
    (``snapshot``, which transitions are computed from) and the new states still being confirmed, by
    (category, subject) — a category is one of :data:`CATEGORIES`."""

    snapshot: Snapshot
    streaks: Mapping[tuple[str, str], Streak] = field(default_factory=dict)


def confirm(before: Confirmed | None, probe: Snapshot, checks: int) -> Confirmed:
    """The confirmed statuses after one more check whose raw results are ``probe``.

    A subject's new state is confirmed once ``checks`` consecutive checks saw it (Patroni and monitoring
    systems do the same), so a link that flaps for a few seconds raises no event at all, and a real change
    is logged ``checks - 1`` checks later than it was first seen.  A check that sees the confirmed state
    again ends a streak; one that sees a third state starts a new one.  ``checks`` of 1 confirms every
    probe at once.  A subject no longer probed (a removed server) is forgotten; one never confirmed
    before (a monitor just started, a new server) is confirmed the same way, and :func:`transitions`
    then reports it only if it is a failure."""
    checks = max(1, checks)
    old = before.snapshot if before is not None else Snapshot({}, {}, {})
    streaks = before.streaks if before is not None else {}
    kept: dict[tuple[str, str], Streak] = {}

    def one(category: str, confirmed: Mapping[str, S], probed: Mapping[str, S]) -> dict[str, S]:
        result: dict[str, S] = {}
        for subject, state in probed.items():
            current = confirmed.get(subject)
            if state == current:
                result[subject] = state
                continue
            streak = streaks.get((category, subject))
            seen = streak.checks + 1 if streak is not None and streak.state == state else 1
            if seen >= checks:
                result[subject] = state
                continue
            if current is not None:
                result[subject] = current
            kept[(category, subject)] = Streak(str(state), seen)
        return result

    snapshot = Snapshot(one("ha", old.ha, probe.ha), one("replication", old.replication, probe.replication),
                        one("servers", old.servers, probe.servers), probe.standbys, probe.active,
                        one("inputs", old.inputs, probe.inputs))
    return Confirmed(snapshot, kept)
