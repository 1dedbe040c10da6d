"""The read-only server's audit spool: durable, chained, shipped exactly once and in order."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from safehold.audit.chain import (
    GENESIS,
    AuditEvent,
    ChainConflict,
    ChainedRecord,
    StoredRecord,
    verify,
)
from safehold.audit.spool import RECORDS, SHIPPED, AuditSpool, SpoolDamaged, ship
from safehold.errors import AuditUnavailable

KEY = b"k" * 32
SERVER = "11111111-1111-1111-1111-111111111111"


def ev(n: int) -> AuditEvent:
    return AuditEvent(actor=f"user{n}", action="password_retrieved", result="success", target_id=str(n))


class FakeDatabase:
    """Stores records by (server, seq) like the audit table's unique constraint (a record already stored
    counts only if it is the same record, as storage.audit.insert_shipped); can be made to fail."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, int], ChainedRecord] = {}
        self.fail = False
        self.calls = 0

    async def send(self, records: Sequence[ChainedRecord]) -> None:
        self.calls += 1
        if self.fail:
            raise ConnectionError("primary database unreachable")
        for r in records:
            have = self.rows.get((r.server_id, r.seq))
            if have is not None and have.mac != r.mac:
                raise ChainConflict(r.server_id, r.seq, "the database holds a different record there")
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


# --- appends are all or nothing -----------------------------------------------------------------------


def _raise(code: int) -> Callable[..., int]:
    def fail(*_: object) -> int:
        raise OSError(code, os.strerror(code))
    return fail


def _short_then(code: int | None) -> Callable[[int, bytes], int]:
    """A full tmpfs: the first write stores half the bytes; the next one fails (or stores nothing)."""
    calls = []

    def write(fd: int, data: bytes) -> int:
        calls.append(len(data))
        if len(calls) == 1:
            return os.write(fd, bytes(data[: len(data) // 2]))
        if code is None:
            return 0
        raise OSError(code, os.strerror(code))
    return write


class Alarms:
    def __init__(self) -> None:
        self.raised: list[str] = []
        self.cleared = 0

    def failure(self, message: str) -> None:
        self.raised.append(message)

    def recovered(self) -> None:
        self.cleared += 1


@pytest.mark.parametrize(("fault", "write", "fsync", "reason"), [
    ("short write, then the disk is full", _short_then(errno.ENOSPC), os.fsync, "no space left on device"),
    ("short write, then nothing written", _short_then(None), os.fsync, "no space left on device"),
    ("disk full", _raise(errno.ENOSPC), os.fsync, "no space left on device"),
    ("I/O error on write", _raise(errno.EIO), os.fsync, "input/output error"),
    ("I/O error on fsync", os.write, _raise(errno.EIO), "input/output error"),
    ("read-only file system", _raise(errno.EROFS), os.fsync, "read-only file system"),
])
def test_an_append_that_cannot_be_made_whole_leaves_nothing_and_fails_closed(
        tmp_path: Path, fault: str, write: Callable[[int, bytes], int], fsync: Callable[[int], None],
        reason: str) -> None:
    alarms = Alarms()
    spool = AuditSpool(tmp_path, KEY, SERVER, "readonly", on_failure=alarms.failure, on_recovered=alarms.recovered)
    first = spool.append(ev(1))
    before = (tmp_path / RECORDS).read_bytes()

    spool._write, spool._fsync = write, fsync
    with pytest.raises(AuditUnavailable) as refused:
        spool.append(ev(2))
    assert reason in refused.value.message and "not carried out" in refused.value.message, fault
    assert (tmp_path / RECORDS).read_bytes() == before, f"{fault}: the file was cut back to the last record"
    assert spool.backlog().pending == 1 and spool.last_error is not None
    assert len(alarms.raised) == 1 and str(tmp_path / RECORDS) in alarms.raised[0]
    with pytest.raises(AuditUnavailable):
        spool.append(ev(3))
    assert len(alarms.raised) == 1, "the same failure raises its alarm once"

    spool._write, spool._fsync = os.write, os.fsync  # space freed
    nxt = spool.append(ev(4))
    assert (nxt.seq, nxt.prev_mac) == (2, first.mac), "the head did not move on the failures"
    assert spool.last_error is None and alarms.cleared == 1
    reopened = AuditSpool(tmp_path, KEY, SERVER, "readonly")
    assert [r.seq for r in reopened.pending()] == [1, 2]


def test_bytes_a_failed_append_could_not_cut_back_are_overwritten(tmp_path: Path) -> None:
    spool = AuditSpool(tmp_path, KEY, SERVER, "readonly")
    spool.append(ev(1))
    with open(tmp_path / RECORDS, "ab") as f:
        f.write(b'{"server_id": "torn')  # the truncate after a failed write failed too
    spool.append(ev(2))
    assert [r.seq for r in AuditSpool(tmp_path, KEY, SERVER, "readonly").pending()] == [1, 2]


# --- start-up recovery --------------------------------------------------------------------------------


def _spool_lines(tmp_path: Path, n: int) -> list[bytes]:
    spool = AuditSpool(tmp_path, KEY, SERVER, "readonly")
    for i in range(n):
        spool.append(ev(i))
    return (tmp_path / RECORDS).read_bytes().splitlines(keepends=True)


def _altered(line: bytes) -> bytes:
    return line.replace(b'"actor":"user', b'"actor":"mallory')


@pytest.mark.parametrize(("case", "damage", "kept"), [
    ("a torn tail (no newline)", lambda ls: [*ls, ls[0][:40]], 3),
    ("a torn tail that is a newline short", lambda ls: [*ls[:2], ls[2][:-1]], 2),
    ("a last line that does not decode", lambda ls: [*ls, b"\x00\x00\x00\n"], 3),
    ("a last line that does not verify", lambda ls: [*ls[:2], _altered(ls[2])], 2),
    ("a last line that does not link", lambda ls: [*ls[:2], ls[1]], 2),
])
def test_a_torn_tail_is_cut_off_at_start_up_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, case: str,
        damage: Callable[[list[bytes]], list[bytes]], kept: int) -> None:
    lines = _spool_lines(tmp_path, 3)
    (tmp_path / RECORDS).write_bytes(b"".join(damage(lines)))
    with caplog.at_level(logging.WARNING):
        spool = AuditSpool(tmp_path, KEY, SERVER, "readonly")
    assert [r.seq for r in spool.pending()] == list(range(1, kept + 1)), case
    assert (tmp_path / RECORDS).read_bytes() == b"".join(lines[:kept]), f"{case}: the file was cut"
    assert "torn" in caplog.text
    assert spool.append(ev(9)).seq == kept + 1


@pytest.mark.parametrize(("case", "damage", "line"), [
    ("a line that does not decode", lambda ls: [ls[0], b"garbage\n", *ls[1:]], 2),
    ("a record altered", lambda ls: [ls[0], _altered(ls[1]), *ls[2:]], 2),
    ("a record repeated", lambda ls: [ls[0], ls[1], ls[1], *ls[2:]], 3),
    ("records swapped", lambda ls: [ls[0], ls[2], ls[1], ls[3]], 3),
    # what the old append left on a full disk: a torn record with the next one written after it
    ("a torn record, then more", lambda ls: [ls[0], ls[1][:30] + ls[2], ls[3]], 2),
])
def test_a_damaged_record_before_the_last_one_is_named_not_dropped(
        tmp_path: Path, case: str, damage: Callable[[list[bytes]], list[bytes]], line: int) -> None:
    lines = _spool_lines(tmp_path, 4)
    damaged = b"".join(damage(lines))
    (tmp_path / RECORDS).write_bytes(damaged)
    with pytest.raises(SpoolDamaged) as refused:
        AuditSpool(tmp_path, KEY, SERVER, "readonly")
    assert f"{tmp_path / RECORDS} is damaged at line {line}" in refused.value.message, case
    assert (tmp_path / RECORDS).read_bytes() == damaged, "nothing is dropped"


# --- the chain continues from its true head -----------------------------------------------------------


def _file_with(tmp_path: Path, n: int, shipped: int) -> list[ChainedRecord]:
    spool = AuditSpool(tmp_path, KEY, SERVER, "readonly")
    records = [spool.append(ev(i)) for i in range(n)]
    if shipped:
        spool.mark_shipped(shipped)
    return records


DB_MAC = b"d" * 32


@pytest.mark.parametrize(("case", "n", "shipped", "db_seq", "next_seq", "pending"), [
    ("a new spool on the database's chain", 0, 0, 41, 42, 0),
    ("the file is ahead of a lagging replica", 5, 2, 3, 6, 3),
    ("the file is ahead of an empty database", 5, 0, 0, 6, 5),
    # a once-promoted server is read-only again: the database went on after its old spool
    ("the database went on after the file (all shipped)", 5, 5, 20, 21, 0),
    # ... records it may hold already stay pending until the shipper confirmed they are the same
    ("the database went on after the file (some pending)", 5, 3, 20, 21, 2),
])
def test_the_chain_continues_from_the_higher_of_the_database_and_the_file(
        tmp_path: Path, case: str, n: int, shipped: int, db_seq: int, next_seq: int, pending: int) -> None:
    records = _file_with(tmp_path, n, shipped)
    db_mac = records[db_seq - 1].mac if 0 < db_seq <= n else DB_MAC if db_seq else GENESIS
    spool = AuditSpool(tmp_path, KEY, SERVER, "readonly", head=(db_seq, db_mac))
    assert spool.backlog().pending == pending, case
    nxt = spool.append(ev(99))
    expected_prev = records[-1].mac if next_seq == n + 1 else db_mac
    assert (nxt.seq, nxt.prev_mac) == (next_seq, expected_prev), case
    again = AuditSpool(tmp_path, KEY, SERVER, "readonly")  # a jump in seq reopens fine
    assert again.append(ev(100)).seq == next_seq + 1


def test_the_same_seq_with_another_mac_is_a_fork_that_refuses_appends(tmp_path: Path) -> None:
    _file_with(tmp_path, 5, 5)
    alarms = Alarms()
    spool = AuditSpool(tmp_path, KEY, SERVER, "readonly", head=(5, DB_MAC), on_failure=alarms.failure)
    assert spool.last_error is not None and "diverged at seq 5" in spool.last_error
    assert alarms.raised == [spool.last_error]
    with pytest.raises(AuditUnavailable, match="conflicts"):
        spool.append(ev(6))
    assert (tmp_path / RECORDS).read_bytes().count(b"\n") == 5


def test_a_conflicting_record_stays_pending_and_raises_an_alarm(tmp_path: Path) -> None:
    db = FakeDatabase()
    records = _file_with(tmp_path, 3, 0)
    # the database holds another record at seq 2 (the old bug: a chain restarted from a stale head)
    db.rows[(SERVER, 2)] = ChainedRecord(SERVER, "primary", 2, ev(7), records[0].mac, b"x" * 32)
    alarms = Alarms()
    spool = AuditSpool(tmp_path, KEY, SERVER, "readonly", on_failure=alarms.failure, on_recovered=alarms.recovered)
    with pytest.raises(ChainConflict, match="diverged at seq 2"):
        asyncio.run(ship(spool, db.send))
    assert spool.backlog().pending == 3 and spool.backlog().error is not None
    assert len(alarms.raised) == 1 and "diverged at seq 2" in alarms.raised[0]
    assert not (tmp_path / SHIPPED).exists()

    del db.rows[(SERVER, 2)]  # an operator resolved it
    assert asyncio.run(ship(spool, db.send)) == 3
    assert spool.last_error is None and alarms.cleared == 1


def test_the_same_record_shipped_again_counts_as_shipped(tmp_path: Path) -> None:
    db = FakeDatabase()
    records = _file_with(tmp_path, 4, 0)
    for r in records[:3]:
        db.rows[(SERVER, r.seq)] = r
    spool = AuditSpool(tmp_path, KEY, SERVER, "readonly", head=(3, records[2].mac))
    assert asyncio.run(ship(spool, db.send)) == 4
    assert spool.backlog().pending == 0 and len(db.rows) == 4


# --- several processes of one server share the spool --------------------------------------------------


def _append_in_child(directory: Path, start: int, count: int) -> None:
    spool = AuditSpool(directory, KEY, SERVER, "readonly")
    for n in range(start, start + count):
        spool.append(ev(n))


def _children(*targets: tuple[Callable[..., None], tuple[object, ...]]) -> None:
    """Run each target in a forked process at once (workers are forked from the supervisor)."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=fn, args=args) for fn, args in targets]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0, f"a child process failed ({p.exitcode})"


def test_processes_appending_at_once_make_one_chain(tmp_path: Path) -> None:
    parent = AuditSpool(tmp_path, KEY, SERVER, "readonly")  # opened before the fork, like a worker's
    parent.append(ev(0))
    _children((_append_in_child, (tmp_path, 1000, 150)), (_append_in_child, (tmp_path, 2000, 150)),
              (_append_in_child, (tmp_path, 3000, 150)))
    nxt = parent.append(ev(9))  # the parent takes in what the others appended
    assert nxt.seq == 452
    records = AuditSpool(tmp_path, KEY, SERVER, "readonly").pending(1000)
    assert [r.seq for r in records] == list(range(1, 453))
    assert list(verify(KEY, SERVER, [StoredRecord(r.seq, r) for r in records], (452, records[-1].mac))) == []
    targets = sorted(int(r.event.target_id) for r in records)
    assert targets == sorted([0, 9, *range(1000, 1150), *range(2000, 2150), *range(3000, 3150)])


def test_what_one_process_ships_and_compacts_the_others_see(tmp_path: Path) -> None:
    db = FakeDatabase()
    shipper = AuditSpool(tmp_path, KEY, SERVER, "readonly")
    appender = AuditSpool(tmp_path, KEY, SERVER, "readonly")  # another worker's view of the same files
    for n in range(1203):
        appender.append(ev(n))
    assert asyncio.run(ship(shipper, db.send)) == 1203
    assert (tmp_path / RECORDS).read_text().count("\n") == 1  # compacted by the shipper
    assert appender.backlog().pending == 0
    nxt = appender.append(ev(7))
    assert (nxt.seq, nxt.prev_mac) == (1204, db.rows[(SERVER, 1203)].mac)
    assert asyncio.run(ship(shipper, db.send)) == 1
    assert sorted(seq for _, seq in db.rows) == list(range(1, 1205)), "each record once"


def test_a_closed_spool_takes_no_record_from_any_process_until_reopened(tmp_path: Path) -> None:
    taking_over = AuditSpool(tmp_path, KEY, SERVER, "readonly")
    other = AuditSpool(tmp_path, KEY, SERVER, "readonly")
    other.append(ev(1))
    taking_over.close()
    assert [r.seq for r in taking_over.pending()] == [1]
    with pytest.raises(AuditUnavailable, match="taking over"):
        other.append(ev(2))
    again = AuditSpool(tmp_path, KEY, SERVER, "readonly", reopen=True)  # read-only again, later
    assert other.append(ev(3)).seq == 2 and again.append(ev(4)).seq == 3


def test_a_process_holding_the_spool_too_long_makes_appends_fail_closed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fcntl

    from safehold.audit import spool as spool_module

    spool = AuditSpool(tmp_path, KEY, SERVER, "readonly")
    monkeypatch.setattr(spool_module, "LOCK_WAIT", 0.2)
    frozen = os.open(tmp_path / "lock", os.O_RDWR)  # another open file description: another process's lock
    try:
        fcntl.flock(frozen, fcntl.LOCK_EX)
        with pytest.raises(AuditUnavailable, match="held the audit spool"):
            spool.append(ev(1))
        assert spool.backlog().pending == 0  # the status answers from what it knew
    finally:
        os.close(frozen)
    assert spool.append(ev(1)).seq == 1


def test_a_record_torn_by_a_killed_process_is_cut_before_the_next_append(tmp_path: Path) -> None:
    survivor = AuditSpool(tmp_path, KEY, SERVER, "readonly")
    killed = AuditSpool(tmp_path, KEY, SERVER, "readonly")
    killed.append(ev(1))
    with open(tmp_path / RECORDS, "ab") as f:  # the killed worker's next record, half written
        f.write(b'{"actor":"user2","half a rec')
    r = survivor.append(ev(3))
    assert (r.seq, r.prev_mac) == (2, killed.pending()[0].mac)
    assert [x.seq for x in AuditSpool(tmp_path, KEY, SERVER, "readonly").pending()] == [1, 2]


def test_a_failure_one_process_saw_clears_when_another_appends_again(tmp_path: Path) -> None:
    alarms = Alarms()
    failing = AuditSpool(tmp_path, KEY, SERVER, "readonly", on_failure=alarms.failure, on_recovered=alarms.recovered)
    other = AuditSpool(tmp_path, KEY, SERVER, "readonly")
    failing._write = _raise(errno.ENOSPC)
    with pytest.raises(AuditUnavailable):
        failing.append(ev(1))
    assert failing.backlog().error is not None
    other.append(ev(2))  # space was freed; the other worker's append went through
    assert failing.backlog().error is None and alarms.cleared == 1


def test_every_process_reports_a_failure_one_of_them_met() -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        failing, other = AuditSpool(Path(d), KEY, SERVER, "readonly"), AuditSpool(Path(d), KEY, SERVER, "readonly")
        failing._write = _raise(errno.ENOSPC)
        with pytest.raises(AuditUnavailable):
            failing.append(ev(1))
        assert "no space left on device" in (other.backlog().error or "").lower()  # it never appended itself
        failing._write = os.write
        failing.append(ev(2))
        assert other.backlog().error is None
