"""The read-only server's durable audit spool.

A read-only server cannot write to its replica, yet its logins, logouts,
failed logins and password retrievals must reach the audit trail.  They are
chained (the server's own MAC chain) and appended to a local file, fsync'ed
before the action proceeds (audit first).  A shipper later copies them to
the primary database in order; each record carries ``(server_id, seq)``,
unique in the database, so a record shipped twice (a crash between the
database commit and the local watermark) is stored once.

Files in the spool directory::

    audit.jsonl   one chained record per line, oldest first
    shipped       the highest seq known to be in the primary database

What can go wrong, and what the spool does:

1. An append is all or nothing.  The record goes in at the end of the last
   whole record; a short write (a full tmpfs returns one instead of failing),
   ENOSPC, EIO, EROFS or any other error cuts the file back to that end,
   fsyncs, and raises :class:`AuditUnavailable`: the action fails closed, the
   chain's head does not move, and ``on_failure`` is told (an alarm).
2. At start-up a torn tail (a crash or power loss in the middle of an append:
   never acknowledged) is cut off with a warning.  A damaged record *before*
   the last one is not a torn write: the spool refuses to open
   (:class:`SpoolDamaged`), naming the file and the line.
3. The chain continues from its true head: the higher of the database's head
   (``head``, passed in by whoever opens the spool) and the file's last
   record, whatever roles the server went through.  The same seq with a
   different MAC is a fork: appends fail closed and ``on_failure`` is told.
4. Records the database may already hold stay pending until the shipper has
   confirmed them: it counts a record as stored only if the database holds
   the same record (same MAC), else :class:`ChainConflict` (an alarm).

Several processes of one server (its workers) share the spool.  Whatever
reads or changes the files holds an exclusive ``flock`` on ``lock`` and first
takes in what the others appended, shipped or compacted since it last looked
(a larger file: its new whole records, verified; another inode: the file
anew), so the chain has one head and every record one seq.  A process that
holds the lock too long (frozen) makes appends fail closed after
:data:`LOCK_WAIT` seconds instead of hanging them.  A server taking over as
the primary *closes* the spool (the file ``closed``) before it ships it for
the last time: from then on no worker still in its read-only mode can append
a record whose seq the database chain is about to take.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as dt
import errno
import fcntl
import hmac
import json
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safehold.audit.chain import GENESIS, AuditEvent, ChainConflict, ChainedRecord, extend, mac_of
from safehold.errors import AuditUnavailable, SafeholdError

log = logging.getLogger(__name__)

RECORDS = "audit.jsonl"
SHIPPED = "shipped"
LOCK = "lock"
CLOSED = "closed"
FAILING = "failing-"  # an append failed in some process of the server; the name ends with the error's number
#: how long an append waits for another process of this server to finish with the spool
LOCK_WAIT = 10.0

Writer = Callable[[int, bytes], int]


class SpoolDamaged(SafeholdError):
    """A record before the spool's last one cannot be read or does not verify: not a torn write."""


def _encode(r: ChainedRecord) -> str:
    e = r.event
    return json.dumps({
        "server_id": r.server_id, "server_role": r.server_role, "seq": r.seq,
        "at": e.at.astimezone(dt.UTC).isoformat(timespec="microseconds"), "actor": e.actor,
        "source_ip": e.source_ip, "action": e.action, "result": e.result, "target_type": e.target_type,
        "target_id": e.target_id, "target_name": e.target_name, "detail": e.detail,
        "prev_mac": base64.b64encode(r.prev_mac).decode(), "mac": base64.b64encode(r.mac).decode(),
    }, sort_keys=True, separators=(",", ":"))


def _decode(line: str) -> ChainedRecord:
    d: dict[str, Any] = json.loads(line)
    event = AuditEvent(actor=d["actor"], action=d["action"], result=d["result"], source_ip=d["source_ip"],
                       target_type=d["target_type"], target_id=d["target_id"], target_name=d["target_name"],
                       detail=d["detail"], at=dt.datetime.fromisoformat(d["at"]))
    return ChainedRecord(d["server_id"], d["server_role"], int(d["seq"]), event,
                         base64.b64decode(d["prev_mac"], validate=True), base64.b64decode(d["mac"], validate=True))


def _strerror(exc: OSError) -> str:
    return exc.strerror or (errno.errorcode.get(exc.errno, "") if exc.errno else "") or "I/O error"


@dataclass(frozen=True)
class Backlog:
    pending: int
    shipped: int
    oldest_pending: dt.datetime | None
    error: str | None = None  # why the spool cannot be written or shipped right now

    def as_dict(self) -> dict[str, object]:
        return {"pending": self.pending, "shipped": self.shipped,
                "oldest_pending": self.oldest_pending.isoformat() if self.oldest_pending else None,
                "error": self.error}


class AuditSpool:
    """Append-only, fsync'ed, chained; thread-safe (appends come from the event loop's threads).

    ``on_failure(message)`` is called when the spool starts failing (an append that could not be made
    whole, a fork with the database's chain, a conflict found by the shipper) and whenever the reason
    changes; ``on_recovered()`` once everything works again.  Both may also be set as attributes after
    construction; ``last_error`` then tells whether a failure was already found while opening.
    ``write`` and ``fsync`` are seams for tests (``os.write``, ``os.fsync``)."""

    def __init__(self, directory: Path, key: bytes, server_id: str, server_role: str,
                 *, head: tuple[int, bytes] = (0, GENESIS), reopen: bool = False,
                 on_failure: Callable[[str], object] | None = None,
                 on_recovered: Callable[[], object] | None = None,
                 write: Writer = os.write, fsync: Callable[[int], None] = os.fsync) -> None:
        """``reopen``: a read-only or fenced server about to append: a spool closed by an earlier take-over
        takes records again."""
        self.dir, self._key, self.server_id, self.server_role = directory, key, server_id, server_role
        self.on_failure, self.on_recovered = on_failure, on_recovered
        self._write, self._fsync = write, fsync
        self._lock = threading.Lock()
        self._errors: dict[str, str] = {}  # what is failing ("write", "fork", "ship", "share") -> why
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._path = directory / RECORDS
        self._lock_fd: int | None = None
        self._lock_pid = 0
        self._ino: int | None = None  # the records file this process has read (another after a compaction)
        with self._exclusive():
            self._records, self._size = self._load()
            self._shipped = self._load_shipped()
            self._head = self._true_head(head)
            if reopen:
                (directory / CLOSED).unlink(missing_ok=True)

    # --- sharing with the server's other processes -----------------------------------------------

    @contextlib.contextmanager
    def _exclusive(self, wait: float | None = None, *, required: bool = True) -> Iterator[bool]:
        """This thread and process alone on the spool; yields whether the other processes are kept out
        (not ``required``: False once ``wait`` is over; ``required``: AuditUnavailable then)."""
        wait = LOCK_WAIT if wait is None else wait
        with self._lock:
            got = self._flock(wait)
            if not got and required:
                raise AuditUnavailable("the audit record could not be written (another process of this server has "
                                       f"held the audit spool for over {wait:.0f} s), so the action was not "
                                       "carried out", hint="if a worker of this server is frozen, restart the server")
            try:
                yield got
            finally:
                if got and self._lock_fd is not None:
                    fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _flock(self, wait: float) -> bool:
        if self._lock_pid != os.getpid():  # a lock inherited through fork() is the parent's: one of its own
            self._lock_pid = os.getpid()
            try:
                self._lock_fd = os.open(self.dir / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            except OSError as exc:  # a copy this process may only read: nobody else appends to it
                self._lock_fd = None
                log.debug("audit spool %s: no lock file (%s)", self.dir, _strerror(exc))
        if self._lock_fd is None:
            return True
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.002)

    def _refresh(self) -> None:
        """Take in what the server's other processes appended, shipped or compacted since this one looked.
        Raises AuditUnavailable if the file no longer verifies."""
        try:
            st: os.stat_result | None = os.stat(self._path)
        except FileNotFoundError:
            st = None
        grown = st is not None and (st.st_size > self._size or (self._ino is not None and st.st_ino != self._ino))
        try:
            if st is not None and (st.st_ino != self._ino or st.st_size < self._size):
                self._records, self._size = self._load()  # compacted (another inode), or made anew
            elif st is not None and st.st_size > self._size:
                self._load_tail()
        except OSError as exc:  # cannot be read now: an append fails on it too, and says why
            log.debug("audit spool %s: not re-read (%s)", self._path, _strerror(exc))
        except SpoolDamaged as exc:
            self._fail("share", exc.message)
            raise AuditUnavailable("the audit spool cannot be read, so the action was not carried out",
                                   hint="see the server log; an administrator must repair the spool") from None
        self._clear("share")
        if grown:  # another process appended (or compacted): the disk takes records again
            self._clear("write")
        self._shipped = max(self._shipped, self._load_shipped())
        last = self._records[-1] if self._records else None
        if last is not None and last.seq > self._head[0]:
            self._head = (last.seq, last.mac)

    def _load_tail(self) -> None:
        """The whole records another process appended after this one's last; bytes after the last whole
        record (an append cut short by a crash) are left for the next append to cut off."""
        with open(self._path, "rb") as f:
            f.seek(self._size)
            data = f.read()
        *lines, _partial = data.split(b"\n")
        for raw in lines:
            record, problem = self._verified(raw, self._records[-1] if self._records else None)
            if record is None:
                raise SpoolDamaged(f"the audit spool {self._path} is damaged after byte {self._size} ({problem})")
            self._records.append(record)
            self._size += len(raw) + 1

    # --- opening -------------------------------------------------------------------------------

    def _load(self) -> tuple[list[ChainedRecord], int]:
        """The whole records of the file and their length in bytes; a torn tail is cut off."""
        try:
            data = self._path.read_bytes()
        except FileNotFoundError:
            self._ino = None
            return [], 0
        self._ino = os.stat(self._path).st_ino
        lines = data.split(b"\n")
        tail = lines.pop()  # what follows the last newline: empty unless the last write was torn
        records: list[ChainedRecord] = []
        size = 0
        for number, raw in enumerate(lines, 1):
            record, problem = self._verified(raw, records[-1] if records else None)
            if record is None:
                if number == len(lines) and not tail:
                    tail = raw  # the last record does not verify: a torn write, never acknowledged
                    break
                raise SpoolDamaged(
                    f"the audit spool {self._path} is damaged at line {number} ({problem}); records after it "
                    "cannot be trusted, so the server does not start on it",
                    hint="keep a copy of the file for the audit trail; move the spool directory aside to start "
                         "without it (its records that were not shipped are then only in that copy)")
            records.append(record)
            size += len(raw) + 1
        if size != len(data):
            log.warning("audit spool %s: cut off a torn last record (%d bytes, never acknowledged) left by an "
                        "interrupted write", self._path, len(data) - size)
            fd = os.open(self._path, os.O_WRONLY)
            try:
                os.ftruncate(fd, size)
                os.fsync(fd)
            finally:
                os.close(fd)
        return records, size

    def _verified(self, raw: bytes, prev: ChainedRecord | None) -> tuple[ChainedRecord | None, str]:
        """The record of a line if it is whole, verifies and may follow ``prev``; else None and why."""
        try:
            r = _decode(raw.decode())
            expected = mac_of(self._key, r.prev_mac, r.server_id, r.server_role, r.seq, r.event) if self._key else b""
        except (ValueError, KeyError, TypeError, binascii.Error):
            return None, "not a complete record"
        if self._key and not hmac.compare_digest(r.mac, expected):
            return None, f"record {r.seq} does not verify (MAC mismatch)"
        if prev is not None and r.seq <= prev.seq:
            return None, f"record {r.seq} follows record {prev.seq}"
        if prev is not None and r.seq == prev.seq + 1 and r.prev_mac != prev.mac:
            return None, f"record {r.seq} does not link to record {prev.seq}"
        return r, ""  # a jump in seq is a chain continued from the database's (higher) head

    def _load_shipped(self) -> int:
        try:
            return int((self.dir / SHIPPED).read_text().strip() or 0)
        except FileNotFoundError:
            return 0

    def _true_head(self, db_head: tuple[int, bytes]) -> tuple[int, bytes]:
        """The higher of the database's head and the file's last record.  Records the database may hold
        already (seq up to its head) stay pending until the shipper confirmed they are the same."""
        last = self._records[-1] if self._records else None
        if last is None or db_head[0] > last.seq:
            if not any(self._shipped < r.seq <= db_head[0] for r in self._records):
                self._shipped = max(self._shipped, db_head[0])  # everything before is in the database
            return db_head
        if last.seq == db_head[0] and last.mac != db_head[1]:
            self._fail("fork", f"the audit spool {self._path} and the database disagree on record {last.seq} of "
                               f"server {self.server_id}: the chains diverged at seq {last.seq}; audited actions "
                               "are refused until an operator resolves it")
        return (last.seq, last.mac)

    # --- appending -----------------------------------------------------------------------------

    def append(self, event: AuditEvent) -> ChainedRecord:
        """Chain the event and make it durable, whole or not at all; raises AuditUnavailable if it cannot be."""
        with self._exclusive():
            if (self.dir / CLOSED).exists():
                raise AuditUnavailable("this server is taking over as the primary right now, so the action was not "
                                       "carried out", hint="try again in a moment")
            self._refresh()
            if "fork" in self._errors:
                raise AuditUnavailable("this server's audit chain conflicts with the database's, so the action "
                                       "was not carried out", hint="an administrator must resolve the audit "
                                       "spool conflict (see the server log)")
            (record,) = extend(self._key, self.server_id, self.server_role, *self._head, [event])
            data = (_encode(record) + "\n").encode()
            try:
                self._write_whole(data)
            except OSError as exc:
                reason = _strerror(exc)
                self._fail("write", f"the audit spool {self._path} cannot be written ({reason}); audited "
                                    "actions on this server are refused until it can")
                self._mark_failing(exc.errno)
                raise AuditUnavailable(f"the audit record could not be written ({reason.lower()}), so the action "
                                       "was not carried out",
                                       hint="an administrator must free space on (or repair) the disk of this "
                                            "server's audit spool") from None
            self._records.append(record)
            self._size += len(data)
            self._head = (record.seq, record.mac)
            self._clear("write")
            self._mark_failing(None)
            return record

    def _mark_failing(self, code: int | None) -> None:
        """Tell the server's other processes that appends fail, and why (an empty file whose name holds the
        error: it can be made on a full disk), or that they work again (``None``)."""
        for old in self.dir.glob(FAILING + "*"):
            if code is None or old.name != f"{FAILING}{code}":
                old.unlink(missing_ok=True)
        if code is not None:
            with contextlib.suppress(OSError):
                os.close(os.open(self.dir / f"{FAILING}{code}", os.O_WRONLY | os.O_CREAT, 0o600))

    def _failing_elsewhere(self) -> str | None:
        """Why another process of the server found appends failing (None: none did, or it works again)."""
        for marker in self.dir.glob(FAILING + "*"):
            code = marker.name.removeprefix(FAILING)
            reason = os.strerror(int(code)) if code.isdigit() else "I/O error"
            return (f"the audit spool {self._path} cannot be written ({reason}); audited actions on this server "
                    "are refused until it can")
        return None

    def _write_whole(self, data: bytes) -> None:
        """Write ``data`` after the last whole record and fsync; on any failure cut the file back."""
        fd = os.open(self._path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            try:
                if os.fstat(fd).st_size != self._size:
                    os.ftruncate(fd, self._size)  # bytes of an earlier failed append that could not be cut
                os.lseek(fd, self._size, os.SEEK_SET)
                view = memoryview(data)
                while view:
                    n = self._write(fd, view)  # type: ignore[arg-type]
                    if n <= 0:
                        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                    view = view[n:]
                self._fsync(fd)
            except OSError:
                try:
                    os.ftruncate(fd, self._size)
                    os.fsync(fd)
                except OSError as exc:
                    log.error("audit spool %s: could not cut a failed append back (%s); the next append "
                              "tries again", self._path, _strerror(exc))
                raise
        finally:
            os.close(fd)

    # --- failures ------------------------------------------------------------------------------

    @property
    def last_error(self) -> str | None:
        """Why the spool cannot be written or shipped right now (None when it works)."""
        return next(reversed(self._errors.values()), None)

    def _fail(self, kind: str, message: str) -> None:
        if self._errors.get(kind) == message:
            return
        self._errors.pop(kind, None)
        self._errors[kind] = message
        log.error("%s", message)
        if self.on_failure is not None:
            try:
                self.on_failure(message)
            except Exception:  # noqa: BLE001 - an alarm that cannot be raised must not change the outcome
                log.exception("audit spool: the failure hook failed")

    def _clear(self, kind: str) -> None:
        if self._errors.pop(kind, None) is None:
            return
        log.warning("audit spool %s works again", self._path)
        if not self._errors and self.on_recovered is not None:
            try:
                self.on_recovered()
            except Exception:  # noqa: BLE001 - see _fail
                log.exception("audit spool: the recovery hook failed")

    # --- shipping ------------------------------------------------------------------------------

    def close(self) -> None:
        """A server taking over as the primary: no process of it appends from now on (see the module's
        docstring), and what they appended before is pending here."""
        with self._exclusive():
            fd = os.open(self.dir / CLOSED, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            self._refresh()

    def pending(self, limit: int = 500) -> list[ChainedRecord]:
        with self._exclusive():
            self._refresh()
            return [r for r in self._records if r.seq > self._shipped][:limit]

    def mark_shipped(self, seq: int) -> None:
        with self._exclusive():
            self._refresh()
            if seq <= self._shipped:
                return
            tmp = self.dir / (SHIPPED + ".tmp")
            with open(tmp, "w") as f:
                f.write(f"{seq}\n")
                f.flush()
                os.fsync(f.fileno())
            tmp.replace(self.dir / SHIPPED)
            self._shipped = seq
            self._compact()

    def _compact(self) -> None:
        """Drop shipped records from the file once it holds nothing else (keeps the head)."""
        if self._records and self._records[-1].seq <= self._shipped and len(self._records) > 1000:
            last = self._records[-1]
            tmp = self.dir / (RECORDS + ".tmp")
            line = _encode(last) + "\n"
            try:
                with open(tmp, "w") as f:
                    f.write(line)
                    f.flush()
                    os.fsync(f.fileno())
                tmp.replace(self._path)
            except OSError as exc:  # the records stay, already shipped; compacted another time
                log.warning("audit spool %s not compacted (%s)", self._path, _strerror(exc))
                tmp.unlink(missing_ok=True)
                return
            self._records = [last]
            self._size = len(line.encode())
            self._ino = os.stat(self._path).st_ino

    def backlog(self) -> Backlog:
        """How many records wait to be shipped (as last known, if another process holds the spool now)."""
        with self._exclusive(0.5, required=False) as fresh:  # a busy disk may hold an append a while
            if fresh:
                with contextlib.suppress(AuditUnavailable):
                    self._refresh()
            pending = [r for r in self._records if r.seq > self._shipped]
            return Backlog(len(pending), self._shipped, pending[0].event.at if pending else None,
                           self.last_error or self._failing_elsewhere())


async def ship(spool: AuditSpool, send: Callable[[Sequence[ChainedRecord]], Awaitable[None]], *,
               batch: int = 500) -> int:
    """Send pending records in order until none is left; returns how many were shipped.
    ``send`` must store a batch atomically and idempotently (and raise if it cannot); it raises
    :class:`ChainConflict` for a record the database holds differently, which keeps it pending and
    tells the spool's ``on_failure``."""
    total = 0
    while records := spool.pending(batch):
        try:
            await send(records)
        except ChainConflict as exc:
            spool._fail("ship", exc.message)
            raise
        spool.mark_shipped(records[-1].seq)
        spool._clear("ship")
        total += len(records)
    return total
