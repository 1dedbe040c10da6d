"""Fail closed on an audit sink: while a ``fail_closed`` sink cannot take records, audited actions are refused
(HashiCorp Vault's rule: if no audit device can record a request, the request fails).

A sink cannot take records when its last delivery failed, when it is behind by more than its ``max_lag``
records, or when it has not started yet (no delivery has created its state).  The state is a row in the
database that the delivery job (on the schedules-lease holder) updates, so every server and every worker
sees it; each process reads it at most once per :data:`CACHE_SECONDS` (the verdict is kept that long).

System events (the server's own start and stop) are never refused: no person asked for them, and they are
stored and delivered like every record once the sink is back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager

from safehold.audit.chain import AuditEvent
from safehold.config import AuditSection, AuditSinkSection
from safehold.errors import AuditUnavailable
from safehold.storage import audit_sinks as store
from safehold.storage.audit_sinks import SinkState
from safehold.storage.db import AsyncConnection

#: how long a process keeps the sinks' verdict before it reads their state again
CACHE_SECONDS = 1.0
SYSTEM_ACTOR = "system"
HINT = "an operator sees the sink's state with 'safehold audit sinks'; the action can be retried once it takes records"


def refusal(sinks: Sequence[AuditSinkSection], states: Mapping[str, SinkState]) -> str | None:
    """Why audited actions must be refused now (the first fail-closed sink that cannot take records), or None.
    The sentence names the sink but not the receiver (a user reads it)."""
    for sink in sinks:
        if not sink.fail_closed:
            continue
        state = states.get(sink.name)
        why = None
        if state is None:
            why = "has not started yet (its first delivery is due within seconds)"
        elif state.last_error is not None:
            why = "cannot take records (its last delivery failed)"
        elif state.lag > sink.max_lag:
            why = f"is {state.lag} records behind (more than its max_lag of {sink.max_lag})"
        if why is not None:
            return f"audited actions are refused: the fail-closed audit sink '{sink.name}' {why}"
    return None


def needs_check(section: AuditSection, events: Sequence[AuditEvent]) -> bool:
    """Whether these events wait on the sinks: some sink is fail-closed and some event was asked for by a person."""
    return bool(section.fail_closed) and any(e.actor != SYSTEM_ACTOR for e in events)


Reader = Callable[[], AbstractAsyncContextManager[AsyncConnection]]


class SinkGate:
    """One per process: :meth:`check` before an audited action is committed."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, ttl: float = CACHE_SECONDS) -> None:
        self._clock, self._ttl = clock, ttl
        self._verdict: tuple[float, tuple[str, ...], str | None] | None = None  # (when, sinks, refusal)
        self._lock: asyncio.Lock | None = None

    async def check(self, section: AuditSection, source: Reader | AsyncConnection,
                    events: Sequence[AuditEvent]) -> None:
        """Return if the events may be recorded; raise AuditUnavailable (503) if a fail-closed sink cannot take
        records.  Reads the database at most once per ``ttl`` (one reader at a time; the others wait for it),
        on ``source``: the caller's transaction (it holds a connection already: asking the pool for a second
        one could wait on connections that wait on this check), or a way to read."""
        if not needs_check(section, events):
            return
        names = tuple(s.name for s in section.fail_closed)
        verdict = self._fresh(names)
        if verdict is None:
            self._lock = self._lock or asyncio.Lock()
            async with self._lock:
                verdict = self._fresh(names)
                if verdict is None:
                    states = await self._load(source, names)
                    verdict = (self._clock(), names, refusal(section.fail_closed, states))
                    self._verdict = verdict
        if verdict[2] is not None:
            raise AuditUnavailable(verdict[2], hint=HINT)

    async def _load(self, source: Reader | AsyncConnection, names: tuple[str, ...]) -> Mapping[str, SinkState]:
        if isinstance(source, AsyncConnection):
            return await store.states(source, names)
        async with source() as conn:
            return await store.states(conn, names)

    def _fresh(self, names: tuple[str, ...]) -> tuple[float, tuple[str, ...], str | None] | None:
        v = self._verdict
        return v if v is not None and v[1] == names and self._clock() - v[0] < self._ttl else None
