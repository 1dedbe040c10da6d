"""The audit sinks as an operator sees them ('safehold audit sinks'): each sink's target, how far behind it
is (its cursor per server chain against the chain's head), its last error, and whether it makes this server
refuse audited actions now (a fail-closed sink that cannot take records, see safehold.audit.gate).

The sinks this server's safehold.toml configures are listed with their state in the database; a sink the
database knows but this file does not (configured on another server, or removed) is listed too, marked so.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from safehold.audit.gate import refusal
from safehold.audit.sinks import build_sink
from safehold.config import AuditSinkSection
from safehold.runtime import Runtime
from safehold.storage import audit_sinks as store


@dataclass(frozen=True)
class ChainCursor:
    server_id: str
    server_name: str
    cursor: int  # the last seq of this chain the sink took
    head: int  # the chain's newest committed seq

    @property
    def lag(self) -> int:
        return max(0, self.head - self.cursor)


@dataclass(frozen=True)
class SinkStatus:
    name: str
    kind: str
    target: str  # where it delivers, without secrets ("" when this server does not configure it)
    configured: bool  # in this server's safehold.toml
    fail_closed: bool
    started: bool  # its state exists: the delivery has begun
    lag: int  # records not taken yet, over every chain
    last_error: str | None
    failures: int
    failing_since: dt.datetime | None
    attempted_at: dt.datetime | None
    delivered_at: dt.datetime | None
    delivered: int
    refusing: str | None  # why this server refuses audited actions because of this sink, if it does
    chains: tuple[ChainCursor, ...]

    def as_json(self) -> dict[str, Any]:
        """The stable shape of 'safehold audit sinks --json'."""

        def when(t: dt.datetime | None) -> str | None:
            return t.isoformat() if t is not None else None

        return {"name": self.name, "kind": self.kind, "target": self.target, "configured": self.configured,
                "fail_closed": self.fail_closed, "started": self.started, "lag": self.lag,
                "last_error": self.last_error, "failures": self.failures, "failing_since": when(self.failing_since),
                "attempted_at": when(self.attempted_at), "delivered_at": when(self.delivered_at),
                "delivered": self.delivered, "refusing": self.refusing,
                "chains": [{"server_id": c.server_id, "server_name": c.server_name, "cursor": c.cursor,
                            "head": c.head, "lag": c.lag} for c in self.chains]}


async def sink_status(rt: Runtime) -> list[SinkStatus]:
    """Every sink configured here or known to the database, configured ones first (in the file's order)."""
    from safehold.storage import servers as server_store

    configured = {s.name: s for s in rt.settings.audit.sinks}
    async with rt.read() as conn:
        states = await store.states(conn)
        names = {r.id: r.name for r in await server_store.all_servers(conn)}
        order = list(configured) + sorted(n for n in states if n not in configured)
        chains = {n: await store.chain_lags(conn, n) for n in order if n in states}
    out = []
    for name in order:
        section, state = configured.get(name), states.get(name)
        cursors = tuple(ChainCursor(sid, names.get(sid, ""), cursor, head)
                        for sid, (cursor, head) in sorted(chains.get(name, {}).items()))
        out.append(SinkStatus(
            name=name, kind=section.kind if section else state.kind if state else "",
            target=_target(rt, section), configured=section is not None,
            fail_closed=bool(section and section.fail_closed), started=state is not None,
            lag=state.lag if state else sum(c.lag for c in cursors), last_error=state.last_error if state else None,
            failures=state.failures if state else 0, failing_since=state.failing_since if state else None,
            attempted_at=state.attempted_at if state else None, delivered_at=state.delivered_at if state else None,
            delivered=state.delivered if state else 0,
            refusing=refusal([section], states) if section is not None else None, chains=cursors))
    return out


def _target(rt: Runtime, section: AuditSinkSection | None) -> str:
    return build_sink(section, rt.settings.path, rt.cluster_id).target() if section is not None else ""
