"""The audit trail as its readers see it: records filtered, exported (CSV, JSON lines), chains verified.

The API (``/api/v1/audit``), the audit page and ``safehold audit`` all read it through here, so a
record looks the same whichever way it leaves the server.  Who may read it is the caller's check
(:func:`safehold.services.access.can_read_audit`); the command line runs on the server's host.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from safehold.audit.verify import ChainReport, verify_all
from safehold.domain import AuditAction, AuditResult, ServerRole
from safehold.ha.status import BacklogTotal, cluster_view
from safehold.runtime import Runtime
from safehold.storage import audit as store
from safehold.storage import servers as server_store
from safehold.storage.rows import AnyRow

#: The columns of a CSV export, in order.
CSV_COLUMNS = ("id", "at", "server_id", "server_name", "server_role", "seq", "actor", "source_ip", "action",
               "target_type", "target_id", "target_name", "result", "detail")
#: What a text search looks in (and in the detail, as JSON).
TEXT_COLUMNS = ("actor", "action", "result", "source_ip", "target_type", "target_id", "target_name", "server_name")
#: A server id no record has: what a filter by a server id that is not one matches.
NO_SERVER = "00000000-0000-0000-0000-000000000000"


def server_filter(value: str) -> str:
    """A server id as a filter: normalised, or one that matches nothing when it is not an id."""
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return NO_SERVER


@dataclass(frozen=True)
class RecordFilter:
    """Which records: every field that is set must match (``since`` inclusive, ``until`` exclusive)."""

    action: AuditAction | str | None = None
    actor: str | None = None
    server: str | None = None
    role: ServerRole | None = None
    result: AuditResult | str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None

    def as_store(self) -> dict[str, Any]:
        return asdict(self)


def matches(row: Any, text: str) -> bool:
    """Whether a record holds ``text`` (lower case) in one of its text columns or its detail."""
    m = row._mapping
    hay = [str(m[c] or "") for c in TEXT_COLUMNS] + [json.dumps(m["detail"], sort_keys=True, ensure_ascii=False)]
    return any(text in h.lower() for h in hay)


async def search(rt: Runtime, f: RecordFilter, *, limit: int, offset: int) -> tuple[list[AnyRow], int]:
    """One page of records, newest first, and how many match in all."""
    async with rt.read() as conn:
        return await store.search(conn, limit=limit, offset=offset, **f.as_store())


@dataclass(frozen=True)
class Browse:
    """What the audit page shows: the registered servers, one page of records (``truncated``: a text
    search looked at the newest ``scan`` records only), and the chains' report when asked for."""

    servers: list[AnyRow]
    rows: list[AnyRow]
    total: int
    truncated: bool
    report: ChainReport | None


async def browse(rt: Runtime, f: RecordFilter | None, *, text: str, limit: int, offset: int, scan: int,
                 verify: bool) -> Browse:
    """The page's records in one read: those of ``f`` (none when None: the filters did not parse),
    searched for ``text`` among the newest ``scan`` of them when it is given."""
    rows: list[AnyRow] = []
    total = 0
    truncated = False
    report = None
    async with rt.read() as conn:
        servers = await server_store.all_servers(conn)
        if f is not None:
            if text:
                scanned, all_total = await store.search(conn, limit=scan, offset=0, **f.as_store())
                hits = [r for r in scanned if matches(r, text)]
                truncated = all_total > len(scanned)
                total = len(hits)
                rows = hits[offset:offset + limit]
            else:
                rows, total = await store.search(conn, limit=limit, offset=offset, **f.as_store())
        if verify:
            report = await verify_all(conn, rt.keys.audit_key)
    return Browse(list(servers), rows, total, truncated, report)


async def export(rt: Runtime, f: RecordFilter, text: str = "") -> list[AnyRow]:
    """Every record of ``f`` (holding ``text``, when given), oldest first."""
    async with rt.read() as conn:
        rows = await store.export(conn, **f.as_store())
    return [r for r in rows if matches(r, text)] if text else rows


def records_csv(rows: Sequence[Any]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(CSV_COLUMNS)
    for r in rows:
        m = r._mapping
        w.writerow([json.dumps(m[c], sort_keys=True) if c == "detail" else m[c] for c in CSV_COLUMNS])
    return buf.getvalue()


def records_jsonl(rows: Sequence[Any]) -> str:
    return "".join(json.dumps(dict(r._mapping), default=str, sort_keys=True) + "\n" for r in rows)


async def verify(rt: Runtime) -> ChainReport:
    """Every server's chain checked; the report names each altered or missing record."""
    async with rt.read() as conn:
        return await verify_all(conn, rt.keys.audit_key)


async def spool_backlog(rt: Runtime, live_peers: dict[str, bool] | None) -> BacklogTotal:
    """The read-only servers' audit records not yet shipped to the primary, summed (as ``/ha/status``)."""
    return (await cluster_view(rt, live_peers=live_peers)).audit_backlog
