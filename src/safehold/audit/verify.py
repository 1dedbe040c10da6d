"""Verify every server's audit chain in the database."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from safehold.audit.chain import ChainChecker, Problem
from safehold.storage import audit as store
from safehold.storage.db import AsyncConnection

PAGE = 2000


@dataclass
class ChainReport:
    servers: dict[str, int] = field(default_factory=dict)  # server id -> records checked
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "servers": [{"server_id": s, "records": n} for s, n in sorted(self.servers.items())],
            "problems": [
                {"server_id": p.server_id, "record_id": p.record_id, "seq": p.seq, "problem": p.what}
                for p in self.problems
            ],
        }


async def verify_all(
    conn: AsyncConnection, key: bytes, progress: Callable[[int], None] | None = None
) -> ChainReport:
    report = ChainReport()
    for server_id in await store.chain_servers(conn):
        checker = ChainChecker(key, server_id)
        after = 0
        while page := await store.chain_page(conn, server_id, after, PAGE):
            for rec in page:
                report.problems.extend(checker.check(rec))
            after = page[-1].record.seq
            if progress:
                progress(len(page))
        report.problems.extend(checker.finish(await store.head(conn, server_id)))
        report.servers[server_id] = checker.count
    return report
