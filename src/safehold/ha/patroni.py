"""The external HA engine as Safehold sees it: Patroni's members, and the HA events their changes raise.

When the database's failover is an engine's (``database.mode = "external"``), ``ha.patroni_urls`` names its
REST API.  Every status read and every HA monitor cycle:

1. :func:`read_engine` asks every address for ``GET /cluster`` at once and takes the first answer, as an
   :class:`EngineView` (members: name, role, state, host, port, timeline, lag); when none answers, a view
   that says the engine cannot be reached and why;
2. :func:`engine_snapshot` keeps what transitions are computed from (:class:`EngineSnapshot`): whether the
   engine answered, its leader (the last one seen while it has none or does not answer), each member's
   health (a member missing from the engine's list is Failed: Patroni drops a dead member's key);
3. :func:`engine_transitions` turns two snapshots into the events of the bundled database's vocabulary:
   a new leader is ``Failover <new> <old>``; a member down is ``HAFailed`` (a replica also
   ``StandbyOffline <member> <leader>``), back ``HAAlive``; the engine unreachable ``RaiseAlarm
   EngineUnreachable``, answering again ``ClearAlarm``.

Steps 2 and 3 are pure (tests/unit/test_patroni.py); the HA monitor stores the snapshot beside its own and
logs the events, which the alert relay hands to the channels like every other.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from safehold.ha.policy import (
    Event,
    EventKind,
    Health,
    ReplicaObservation,
    Thresholds,
    replication_status,
)

KIND = "patroni"
UNREACHABLE = "EngineUnreachable"  # the alarm's condition
UP_STATES = frozenset({"running", "streaming"})
LEADER_ROLES = frozenset({"leader", "standby_leader", "master", "primary"})
MAX_ERROR = 300


def _text(value: Any, limit: int = 200) -> str:
    return value[:limit] if isinstance(value, str) else ""


def _int(value: Any) -> int | None:
    """An integer from JSON; None for anything else (Patroni says ``"unknown"`` for a lag it cannot tell)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


@dataclass(frozen=True)
class EngineMember:
    """One member as Patroni's ``GET /cluster`` lists it."""

    name: str
    role: str  # leader, replica, sync_standby, quorum_standby, standby_leader
    state: str  # running, streaming, stopped, starting, crashed, ...
    host: str = ""
    port: int | None = None
    api_url: str = ""
    timeline: int | None = None
    lag: int | None = None  # bytes behind the leader; None: the leader, or unknown

    @property
    def is_leader(self) -> bool:
        return self.role in LEADER_ROLES

    @property
    def health(self) -> Health:
        return Health.ALIVE if self.state in UP_STATES else Health.FAILED

    def observation(self) -> ReplicaObservation:
        """A replica as the HA and replication status see one (Alive: up and within the lag threshold)."""
        up = self.health is Health.ALIVE
        return ReplicaObservation(self.name, up, "streaming" if up else self.state, self.lag)

    @classmethod
    def from_json(cls, d: Any) -> EngineMember | None:
        """A member, or None when ``d`` has no name."""
        if not isinstance(d, Mapping) or not _text(d.get("name")):
            return None
        return cls(name=_text(d.get("name")), role=_text(d.get("role"), 40), state=_text(d.get("state"), 40),
                   host=_text(d.get("host")), port=_int(d.get("port")), api_url=_text(d.get("api_url")),
                   timeline=_int(d.get("timeline")), lag=_int(d.get("lag")))

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "role": self.role, "state": self.state, "host": self.host, "port": self.port,
                "api_url": self.api_url, "timeline": self.timeline, "lag": self.lag}


@dataclass(frozen=True)
class EngineView:
    """The engine's cluster at one moment, or (``reachable`` false) why it could not be read."""

    scope: str = ""
    members: tuple[EngineMember, ...] = ()
    reachable: bool = True
    error: str = ""  # why no address answered
    source: str = ""  # the address that answered
    kind: str = KIND

    @property
    def leader(self) -> EngineMember | None:
        return next((m for m in self.members if m.is_leader), None)

    @classmethod
    def from_json(cls, d: Any, source: str = "") -> EngineView:
        """From Patroni's ``GET /cluster`` answer (or :meth:`to_json`); never raises: what it cannot read it
        leaves out (a member without a name, a field of the wrong type)."""
        if not isinstance(d, Mapping):
            return cls(source=source)
        raw = d.get("members")
        members = [EngineMember.from_json(m) for m in raw] if isinstance(raw, list) else []
        reachable = d.get("reachable", True)
        return cls(scope=_text(d.get("scope")), members=tuple(m for m in members if m is not None),
                   reachable=reachable if isinstance(reachable, bool) else True,
                   error=_text(d.get("error"), MAX_ERROR), source=source or _text(d.get("source")))

    @classmethod
    def unreachable(cls, error: str) -> EngineView:
        return cls(reachable=False, error=error[:MAX_ERROR])

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "scope": self.scope, "reachable": self.reachable, "error": self.error or None,
                "source": self.source or None, "leader": self.leader.name if self.leader else None,
                "members": [m.to_json() for m in self.members]}


# --- reading the engine ------------------------------------------------------------------------------------


def _ssl_context(ca: Path | None) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca)) if ca is not None else ssl.create_default_context()


def _why(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return "no answer in time"
    if isinstance(exc, httpx.ConnectError):
        if "CERTIFICATE_VERIFY_FAILED" in str(exc):
            return "its TLS certificate is not trusted (ha.patroni_ca names the CA that issued it)"
        return "connection refused or failed"
    return "the request failed"


async def _cluster(client: httpx.AsyncClient, url: str) -> EngineView | str:
    """One address's ``GET /cluster``, or why it is no answer."""
    try:
        r = await client.get(url.rstrip("/") + "/cluster")
    except httpx.HTTPError as exc:
        return f"{url}: {_why(exc)}"
    if r.status_code != 200:
        return f"{url}: HTTP {r.status_code}"
    try:
        data = r.json()
    except ValueError:
        return f"{url}: not JSON"
    if not isinstance(data, Mapping) or not isinstance(data.get("members"), list):
        return f"{url}: not a Patroni cluster"
    return EngineView.from_json(data, source=url)


async def read_engine(urls: Sequence[str], *, timeout: float, ca: Path | None = None) -> EngineView:
    """Ask every address at once (one client, ``timeout`` each) and take the first that answers."""
    if not urls:
        return EngineView.unreachable("no Patroni address is configured")
    try:
        verify: ssl.SSLContext | bool = _ssl_context(ca) if any(u.startswith("https:") for u in urls) else True
    except (OSError, ssl.SSLError):
        return EngineView.unreachable(f"the CA file ha.patroni_ca ({ca}) cannot be read")
    problems: dict[str, str] = {}
    async with httpx.AsyncClient(verify=verify, timeout=timeout, trust_env=False) as client:
        tasks = {asyncio.ensure_future(_cluster(client, u)): u for u in urls}
        try:
            pending = set(tasks)
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    answer = task.result()
                    if isinstance(answer, EngineView):
                        return answer
                    problems[tasks[task]] = answer
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    return EngineView.unreachable("no Patroni REST address answers: "
                                  + "; ".join(problems[u] for u in urls if u in problems))


# --- transitions ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EngineSnapshot:
    """What engine transitions are computed from; stored with the HA monitor's snapshot."""

    reachable: bool = True
    leader: str = ""  # the last leader seen
    members: Mapping[str, Health] = field(default_factory=dict)  # each member's HA status
    replication: Mapping[str, Health] = field(default_factory=dict)  # each replica's replication status
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"reachable": self.reachable, "leader": self.leader, "members": dict(self.members),
                "replication": dict(self.replication), "error": self.error}

    @classmethod
    def from_json(cls, d: Any) -> EngineSnapshot | None:
        """None for anything that is not a stored snapshot (then the monitor starts afresh)."""
        if not isinstance(d, Mapping):
            return None
        reachable = d.get("reachable")
        return cls(reachable=reachable if isinstance(reachable, bool) else True, leader=_text(d.get("leader")),
                   members=_healths(d.get("members")), replication=_healths(d.get("replication")),
                   error=_text(d.get("error"), MAX_ERROR))


def _healths(raw: Any) -> dict[str, Health]:
    if not isinstance(raw, Mapping):
        return {}
    return {str(k): Health(v) for k, v in raw.items() if v in (Health.ALIVE, Health.FAILED)}


def engine_snapshot(before: EngineSnapshot | None, view: EngineView,
                    thresholds: Thresholds | None = None) -> EngineSnapshot:
    """The snapshot of ``view``: each member's HA status, and the replication status (``thresholds``) of each
    replica that is up (one that is down has its HA status Failed, which says enough).  While the engine does
    not answer, they and the leader are what they last were; while it has no leader (between a leader's loss
    and an election), the leader is the last one; a member that was known and is no longer listed is Failed
    (it comes back as Alive when listed again)."""
    if not view.reachable:
        if before is None:
            return EngineSnapshot(reachable=False, error=view.error)
        return EngineSnapshot(False, before.leader, before.members, before.replication, view.error)
    members = {m.name: m.health for m in view.members}
    limits = thresholds or Thresholds()
    replication = {m.name: replication_status(m.observation(), limits) for m in view.members
                   if not m.is_leader and m.health is Health.ALIVE}
    if before is not None:
        for name in before.members:
            members.setdefault(name, Health.FAILED)
    leader = view.leader.name if view.leader is not None else before.leader if before is not None else ""
    return EngineSnapshot(True, leader, members, replication)


def engine_transitions(before: EngineSnapshot | None, now: EngineSnapshot) -> list[Event]:
    """The events between two engine snapshots, one per change.  With no earlier snapshot only failures
    are reported (a monitor that just started does not repeat every 'Alive'), as :func:`transitions` does."""
    events: list[Event] = []
    was_reachable = before.reachable if before is not None else True
    if was_reachable and not now.reachable:
        message = f"the HA engine cannot be read: {now.error}"
        events.append(Event(EventKind.RAISE_ALARM, UNREACHABLE, message, (UNREACHABLE, message)))
    elif not was_reachable and now.reachable:
        message = "the HA engine answers again"
        events.append(Event(EventKind.CLEAR_ALARM, UNREACHABLE, message, (message,)))
    if not now.reachable:
        return events
    if before is not None and before.leader and now.leader and now.leader != before.leader:
        events.append(Event(EventKind.FAILOVER, now.leader,
                            f"the HA engine's leader is {now.leader}, replacing {before.leader}",
                            (now.leader, before.leader)))
    for name, health in _changes(before.members if before else None, now.members):
        if health is Health.ALIVE:
            events.append(Event(EventKind.HA_ALIVE, name, f"HA status of engine member {name} is Alive"))
            continue
        events.append(Event(EventKind.HA_FAILED, name, f"HA status of engine member {name} is Failed"))
        if name != now.leader and (before is None or name != before.leader):
            events.append(Event(EventKind.STANDBY_OFFLINE, name, f"standby {name} is offline",
                                (name, now.leader)))
    for name, health in _changes(before.replication if before else None, now.replication):
        kind = EventKind.REPLICATION_ALIVE if health is Health.ALIVE else EventKind.REPLICATION_FAILED
        events.append(Event(kind, name, f"replication status of engine member {name} is {health}"))
    return events


def _changes(old: Mapping[str, Health] | None, new: Mapping[str, Health]) -> list[tuple[str, Health]]:
    """The names whose status changed; one seen for the first time only when it is Failed."""
    out = []
    for name in sorted(new):
        prev = None if old is None else old.get(name)
        if new[name] != prev and (prev is not None or new[name] is Health.FAILED):
            out.append((name, new[name]))
    return out
