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
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safehold.audit.chain import GENESIS, AuditEvent, ChainedRecord, extend
from safehold.errors import AuditUnavailable

RECORDS = "audit.jsonl"
SHIPPED = "shipped"


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
                         base64.b64decode(d["prev_mac"]), base64.b64decode(d["mac"]))


@dataclass(frozen=True)
class Backlog:
    pending: int
    shipped: int
    oldest_pending: dt.datetime | None

    def as_dict(self) -> dict[str, object]:
        return {"pending": self.pending, "shipped": self.shipped,
                "oldest_pending": self.oldest_pending.isoformat() if self.oldest_pending else None}


class AuditSpool:
    """Append-only, fsync'ed, chained; thread-safe (appends come from the event loop's threads)."""

    def __init__(self, directory: Path, key: bytes, server_id: str, server_role: str,
                 *, head: tuple[int, bytes] = (0, GENESIS)) -> None:
        self.dir, self._key, self.server_id, self.server_role = directory, key, server_id, server_role
        self._lock = threading.Lock()
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._path = directory / RECORDS
        self._records = self._load()
        self._shipped = self._load_shipped()
        last = self._records[-1] if self._records else None
        self._head = (last.seq, last.mac) if last else head
        if last is None and head[0] > self._shipped:
            self._shipped = head[0]  # everything before this spool existed is in the database

    def _load(self) -> list[ChainedRecord]:
        if not self._path.exists():
            return []
        records = []
        with open(self._path, encoding="utf-8") as f:
            for line in f:
                if not line.endswith("\n"):
                    break  # a torn last line: it was never acknowledged, so it never happened
                records.append(_decode(line))
        return records

    def _load_shipped(self) -> int:
        try:
            return int((self.dir / SHIPPED).read_text().strip() or 0)
        except FileNotFoundError:
            return 0

    def append(self, event: AuditEvent) -> ChainedRecord:
        """Chain the event and make it durable; raises AuditUnavailable if it cannot be."""
        with self._lock:
            (record,) = extend(self._key, self.server_id, self.server_role, *self._head, [event])
            try:
                fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    os.write(fd, (_encode(record) + "\n").encode())
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as exc:
                raise AuditUnavailable(f"the local audit spool cannot be written ({exc.strerror}); "
                                       "the action was not carried out") from None
            self._records.append(record)
            self._head = (record.seq, record.mac)
            return record

    def pending(self, limit: int = 500) -> list[ChainedRecord]:
        with self._lock:
            return [r for r in self._records if r.seq > self._shipped][:limit]

    def mark_shipped(self, seq: int) -> None:
        with self._lock:
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
            with open(tmp, "w") as f:
                f.write(_encode(last) + "\n")
                f.flush()
                os.fsync(f.fileno())
            tmp.replace(self._path)
            self._records = [last]

    def backlog(self) -> Backlog:
        with self._lock:
            pending = [r for r in self._records if r.seq > self._shipped]
            return Backlog(len(pending), self._shipped, pending[0].event.at if pending else None)


async def ship(spool: AuditSpool, send: Callable[[Sequence[ChainedRecord]], Awaitable[None]], *,
               batch: int = 500) -> int:
    """Send pending records in order until none is left; returns how many were shipped.
    ``send`` must store a batch atomically and idempotently (and raise if it cannot)."""
    total = 0
    while records := spool.pending(batch):
        await send(records)
        spool.mark_shipped(records[-1].seq)
        total += len(records)
    return total
