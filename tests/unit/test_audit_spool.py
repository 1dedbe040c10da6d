"""The read-only server's audit spool: durable, chained, shipped exactly once and in order."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest

from safehold.audit.chain import AuditEvent, ChainedRecord, StoredRecord, verify
from safehold.audit.spool import RECORDS, AuditSpool, ship
from safehold.errors import AuditUnavailable

KEY = b"k" * 32
SERVER = "11111111-1111-1111-1111-111111111111"


def ev(n: int) -> AuditEvent:
    return AuditEvent(actor=f"user{n}", action="password_retrieved", result="success", target_id=str(n))


class FakeDatabase:
    """Stores records by (server, seq) like the audit table's unique constraint; can be made to fail."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, int], ChainedRecord] = {}
        self.fail = False
        self.calls = 0

    async def send(self, records: Sequence[ChainedRecord]) -> None:
        self.calls += 1
        if self.fail:
            raise ConnectionError("primary database unreachable")
        for r in records:
            self.rows.setdefault((r.server_id, r.seq), r)


def test_records_survive_a_restart_and_chain(tmp_path: Path) -> None:
    spool = AuditSpool(tmp_path, KEY, SERVER, "readonly")
    for n in range(5):
        spool.append(ev(n))
    again = AuditSpool(tmp_path, KEY, SERVER, "readonly")
    pending = again.pending()
    assert [r.seq for r in pending] == [1, 2, 3, 4, 5]
    assert list(verify(KEY, SERVER, [StoredRecord(r.seq, r) for r in pending], (5, pending[-1].mac))) == []
    assert again.append(ev(9)).seq == 6  # the chain continues after a restart


def test_a_torn_last_line_is_ignored(tmp_path: Path) -> None:
    spool = AuditSpool(tmp_path, KEY, SERVER, "readonly")
    spool.append(ev(1))
    with open(tmp_path / RECORDS, "a") as f:
        f.write('{"half a record')
    assert [r.seq for r in AuditSpool(tmp_path, KEY, SERVER, "readonly").pending()] == [1]


def test_shipping_is_in_order_and_exactly_once_across_failures_and_crashes(tmp_path: Path) -> None:
    db = FakeDatabase()
    spool = AuditSpool(tmp_path, KEY, SERVER, "readonly")
    for n in range(7):
        spool.append(ev(n))
    db.fail = True
    with pytest.raises(ConnectionError):
        asyncio.run(ship(spool, db.send, batch=3))
    assert spool.backlog().pending == 7 and db.rows == {}

    db.fail = False
    # a crash after the database stored a batch but before the watermark moved: sent again, stored once
    asyncio.run(db.send(spool.pending(3)))
    restarted = AuditSpool(tmp_path, KEY, SERVER, "readonly")
    assert asyncio.run(ship(restarted, db.send, batch=3)) == 7
    assert sorted(seq for _, seq in db.rows) == list(range(1, 8))
    assert restarted.backlog().pending == 0 and restarted.backlog().shipped == 7
    assert AuditSpool(tmp_path, KEY, SERVER, "readonly").backlog().pending == 0


def test_backlog_reports_the_oldest_pending(tmp_path: Path) -> None:
    spool = AuditSpool(tmp_path, KEY, SERVER, "readonly")
    assert spool.backlog().oldest_pending is None
    first = spool.append(ev(1))
    spool.append(ev(2))
    b = spool.backlog()
    assert (b.pending, b.shipped, b.oldest_pending) == (2, 0, first.event.at)


def test_compaction_keeps_the_chain_head(tmp_path: Path) -> None:
    db = FakeDatabase()
    spool = AuditSpool(tmp_path, KEY, SERVER, "readonly")
    for n in range(1205):
        spool.append(ev(n))
    asyncio.run(ship(spool, db.send))
    assert (tmp_path / RECORDS).read_text().count("\n") == 1
    reopened = AuditSpool(tmp_path, KEY, SERVER, "readonly")
    nxt = reopened.append(ev(0))
    assert nxt.seq == 1206 and nxt.prev_mac == db.rows[(SERVER, 1205)].mac


def test_a_spool_that_cannot_be_written_refuses(tmp_path: Path) -> None:
    spool = AuditSpool(tmp_path, KEY, SERVER, "readonly")
    (tmp_path / RECORDS).mkdir()  # the file's place is taken: every write fails
    with pytest.raises(AuditUnavailable, match="not carried out"):
        spool.append(ev(1))
    assert spool.backlog().pending == 0


def test_a_new_spool_continues_the_chain_the_database_holds(tmp_path: Path) -> None:
    spool = AuditSpool(tmp_path, KEY, SERVER, "readonly", head=(41, b"m" * 32))
    r = spool.append(ev(1))
    assert (r.seq, r.prev_mac) == (42, b"m" * 32)
    assert spool.backlog().shipped == 41
