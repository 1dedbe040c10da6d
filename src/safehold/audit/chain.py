"""The audit chain: pure functions, no I/O.

Each server's records form a chain: record *n* carries the MAC of record
*n-1* and its own MAC over its canonical content, keyed by the cluster's
audit key (stored wrapped by the master key).  Editing, inserting or
deleting a record, or cutting off the tail, breaks the chain somewhere that
:func:`verify` names.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from safehold.errors import SafeholdError

GENESIS = b"\x00" * 32


@dataclass(frozen=True)
class AuditEvent:
    """What happened, before it is placed in a chain."""

    actor: str
    action: str
    result: str
    source_ip: str = ""
    target_type: str = ""
    target_id: str = ""
    target_name: str = ""
    detail: dict[str, Any] = field(default_factory=dict)
    at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))


@dataclass(frozen=True)
class ChainedRecord:
    server_id: str
    server_role: str
    seq: int
    event: AuditEvent
    prev_mac: bytes
    mac: bytes

    def row(self) -> dict[str, Any]:
        e = self.event
        return {
            "server_id": self.server_id, "server_role": self.server_role, "seq": self.seq, "at": e.at,
            "actor": e.actor, "source_ip": e.source_ip, "action": e.action, "target_type": e.target_type,
            "target_id": e.target_id, "target_name": e.target_name, "result": e.result, "detail": e.detail,
            "prev_mac": self.prev_mac, "mac": self.mac,
        }


def canonical(server_id: str, server_role: str, seq: int, e: AuditEvent) -> bytes:
    if e.at.tzinfo is None:
        raise ValueError("audit times must be timezone-aware")
    at = e.at.astimezone(dt.UTC).isoformat(timespec="microseconds")
    body = [server_id, server_role, seq, at, e.actor, e.source_ip, e.action, e.target_type,
            e.target_id, e.target_name, e.result, e.detail]
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def mac_of(key: bytes, prev_mac: bytes, server_id: str, server_role: str, seq: int, e: AuditEvent) -> bytes:
    return hmac.new(key, prev_mac + canonical(server_id, server_role, seq, e), hashlib.sha256).digest()


def extend(
    key: bytes, server_id: str, server_role: str, head_seq: int, head_mac: bytes, events: Iterable[AuditEvent]
) -> list[ChainedRecord]:
    """Place events after the head (seq, mac) of a server's chain."""
    out: list[ChainedRecord] = []
    seq, prev = head_seq, head_mac
    for e in events:
        seq += 1
        mac = mac_of(key, prev, server_id, server_role, seq, e)
        out.append(ChainedRecord(server_id, server_role, seq, e, prev, mac))
        prev = mac
    return out


class ChainConflict(SafeholdError):
    """Two different records claim the same place in one server's chain: the chains diverged."""

    def __init__(self, server_id: str, seq: int, what: str) -> None:
        super().__init__(f"the audit chains of server {server_id} diverged at seq {seq}: {what}; the spooled "
                         "record is kept and not shipped",
                         hint="compare the spool with the database's records ('safehold audit verify'); nothing "
                              "is dropped until an operator decides")
        self.server_id, self.seq = server_id, seq


@dataclass(frozen=True)
class StoredRecord:
    """A record as read back from the database (``id`` is its row id)."""

    id: int
    record: ChainedRecord


@dataclass(frozen=True)
class Problem:
    server_id: str
    record_id: int | None
    seq: int | None
    what: str

    def __str__(self) -> str:
        where = f"record id {self.record_id} (server {self.server_id}, seq {self.seq})"
        if self.record_id is None:
            where = f"server {self.server_id}"
        return f"{where}: {self.what}"


class ChainChecker:
    """Checks one server's chain record by record (in seq order), so any length fits in memory."""

    def __init__(self, key: bytes, server_id: str) -> None:
        self.key, self.server_id = key, server_id
        self.expected_seq, self.prev = 1, GENESIS
        self.count = 0

    def check(self, stored: StoredRecord) -> list[Problem]:
        r, problems = stored.record, []
        if r.seq != self.expected_seq:
            problems.append(Problem(self.server_id, stored.id, r.seq,
                                    f"expected seq {self.expected_seq}: "
                                    f"records {self.expected_seq}..{r.seq - 1} are missing"))
        elif r.prev_mac != self.prev:
            problems.append(Problem(self.server_id, stored.id, r.seq, "link to the previous record is broken"))
        if not hmac.compare_digest(r.mac, mac_of(self.key, r.prev_mac, r.server_id, r.server_role, r.seq, r.event)):
            problems.append(Problem(self.server_id, stored.id, r.seq, "content was altered (MAC mismatch)"))
        self.expected_seq, self.prev = r.seq + 1, r.mac
        self.count += 1
        return problems

    def finish(self, head: tuple[int, bytes] | None) -> list[Problem]:
        last_seq = self.expected_seq - 1
        if head is None and self.count:
            return [Problem(self.server_id, None, None, "the chain head is missing: it was deleted")]
        if head is not None and (head[0] != last_seq or head[1] != self.prev):
            return [Problem(self.server_id, None, head[0],
                            f"chain head says {head[0]} records but the log ends at {last_seq}: "
                            "records were removed")]
        return []


def verify(
    key: bytes, server_id: str, records: Iterable[StoredRecord], head: tuple[int, bytes] | None
) -> Iterator[Problem]:
    """Check one server's chain, records in seq order; yields every problem found."""
    checker = ChainChecker(key, server_id)
    for stored in records:
        yield from checker.check(stored)
    yield from checker.finish(head)
