"""An HA event as the alert channels see it: one row of ``ha_events`` plus who reported it."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Protocol

#: The kind of the event sent by "send test alert" (not an HA event; never in ha_events).
TEST_KIND = "Test"


class Severity(IntEnum):
    """Syslog severities (RFC 5424), used by every channel to say how bad an event is."""

    CRITICAL = 2
    ERROR = 3
    WARNING = 4
    NOTICE = 5
    INFO = 6


SEVERITY: Mapping[str, Severity] = {
    "HAAlive": Severity.NOTICE,
    "HAFailed": Severity.ERROR,
    "ReplicationAlive": Severity.NOTICE,
    "ReplicationFailed": Severity.ERROR,
    "ServerActive": Severity.NOTICE,
    "ServerInactive": Severity.WARNING,
    "StandbyOffline": Severity.ERROR,
    "Failover": Severity.CRITICAL,
    "ManualSwitch": Severity.WARNING,
    "RaiseAlarm": Severity.ERROR,
    "ClearAlarm": Severity.NOTICE,
    "Fenced": Severity.CRITICAL,
    "EmergencyMode": Severity.WARNING,
    "WitnessUnreachable": Severity.WARNING,
    "WitnessReachable": Severity.NOTICE,
    TEST_KIND: Severity.INFO,
}


class _Identity(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def name(self) -> str: ...


class Reporter(Protocol):
    """Who raises an event: a :class:`safehold.runtime.Runtime` (its identity, its cluster)."""

    @property
    def identity(self) -> _Identity: ...

    @property
    def cluster_id(self) -> str: ...


@dataclass(frozen=True)
class AlertEvent:
    """``args`` are the event script's arguments after the event name (``Failover <active>
    <standby>``); an event without them passes its subject.  ``server_id``/``server_name`` is the
    server that reported the event."""

    kind: str
    subject: str
    message: str
    at: dt.datetime
    args: tuple[str, ...] = ()
    server_id: str = ""
    server_name: str = ""
    cluster_id: str = ""
    id: int | None = None  # the ha_events row id (None for a test alert)
    test: bool = field(default=False, compare=False)

    @classmethod
    def from_row(cls, row: Any, *, cluster_id: str = "",
                 server_names: Mapping[str, str] | None = None) -> AlertEvent:
        """From an ``ha_events`` row (columns id, at, kind, subject, message, reported_by, args)."""
        reported_by = str(row.reported_by)
        return cls(kind=row.kind, subject=row.subject, message=row.message, at=row.at,
                   args=tuple(str(a) for a in (row.args or [])), server_id=reported_by,
                   server_name=(server_names or {}).get(reported_by, ""), cluster_id=cluster_id or "",
                   id=int(row.id))

    @classmethod
    def local(cls, kind: str, subject: str, message: str, args: Sequence[str], rt: Reporter,
              now: dt.datetime | None = None) -> AlertEvent:
        """An event this server raises itself without logging it in ha_events (a fenced or read-only
        server cannot write there): no id."""
        return cls(kind=kind, subject=subject, message=message, at=now or dt.datetime.now(dt.UTC),
                   args=tuple(str(a) for a in args), server_id=rt.identity.id, server_name=rt.identity.name,
                   cluster_id=rt.cluster_id or "")

    @classmethod
    def test_alert(cls, server_id: str, server_name: str, cluster_id: str | None,
                   now: dt.datetime | None = None) -> AlertEvent:
        return cls(kind=TEST_KIND, subject=server_name,
                   message=f"test alert from Safehold server {server_name}: this channel works",
                   at=now or dt.datetime.now(dt.UTC), server_id=server_id, server_name=server_name,
                   cluster_id=cluster_id or "", test=True)

    @property
    def server(self) -> str:
        """The reporting server as people know it: its name, else its id."""
        return self.server_name or self.server_id

    @property
    def severity(self) -> Severity:
        return SEVERITY.get(self.kind, Severity.WARNING)

    def script_args(self) -> list[str]:
        """The event script's arguments: the event name, then the seed's arguments
        (``Failover <active> <standby>`` ...), or the subject for the other kinds."""
        return [self.kind, *self.args] if self.args else [self.kind, self.subject]

    def at_text(self) -> str:
        """The time in UTC, RFC 3339 with microseconds (also valid as an RFC 5424 TIMESTAMP)."""
        at = self.at if self.at.tzinfo else self.at.replace(tzinfo=dt.UTC)
        return at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "event": self.kind, "args": list(self.args), "subject": self.subject,
                "message": self.message, "severity": self.severity.name.lower(), "at": self.at_text(),
                "server": {"id": self.server_id, "name": self.server_name},
                "cluster_id": self.cluster_id or None, "test": self.test}
