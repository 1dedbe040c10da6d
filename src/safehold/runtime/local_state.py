"""What a read-only server keeps in memory because its replica cannot be written:
sessions made on it, failed-login counters and used TOTP steps."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from safehold.domain import Principal


@dataclass
class LocalSession:
    principal: Principal
    created_at: dt.datetime
    expires_at: dt.datetime


@dataclass
class LocalState:
    sessions: dict[bytes, LocalSession] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)          # user id -> consecutive failures
    locked_until: dict[str, dt.datetime] = field(default_factory=dict)
    totp_steps: dict[str, int] = field(default_factory=dict)        # user id -> last accepted step

    def purge(self, now: dt.datetime) -> None:
        for key in [k for k, s in self.sessions.items() if s.expires_at <= now]:
            del self.sessions[key]
