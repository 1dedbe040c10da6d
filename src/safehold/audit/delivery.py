"""Audit streaming: every stored audit record delivered to every configured sink, in order, at least once.

The job runs once per cluster, on the server that holds the schedules lease (``ha.lease``; a standalone
server holds its own), every ``[audit] interval`` seconds.  For each sink, on its turn:

1. The first time, its state is created in the database: a sink that starts "now" gets a cursor at every
   server chain's head (what is committed then is history, the next record is its first).
2. Read the sink's cursors (per server chain: the last seq it took) and every chain's records after them,
   each chain cut at its first gap (a record not committed yet is waited for, never skipped).
3. Merge the chains by time, each in seq order, into one batch of at most ``batch`` records (:func:`plan`).
4. Send it.  Taken: the cursors move to the last seq sent of each chain and the sink's error is cleared,
   in one transaction.  Refused (:class:`SinkError`): the error is stored (fail-closed sinks now refuse
   audited actions everywhere, see ``audit.gate``) and the same records are tried again after a back-off
   that doubles up to ``retry_max`` (:func:`retry_delay`).
5. A full batch is followed by the next at once, up to :data:`BATCHES_PER_RUN`; then the next run.

A crash (or a lost lease) between a send and its cursor's update sends those records again: at least once;
the receiver drops a record it already has by ``(server_id, seq)``.  Sinks do not wait on each other.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

from safehold.audit.chain import StoredRecord
from safehold.audit.sinks import Sink, SinkError, build_sink, record_json
from safehold.config import AuditSinkSection, Settings
from safehold.errors import SafeholdError
from safehold.storage import audit as audit_store
from safehold.storage import audit_sinks as store
from safehold.storage.db import AsyncConnection

log = logging.getLogger(__name__)

BATCHES_PER_RUN = 20


class DeliveryRuntime(Protocol):
    """What the delivery needs of :class:`safehold.runtime.Runtime`."""

    settings: Settings
    cluster_id: str

    def read(self) -> AbstractAsyncContextManager[AsyncConnection]: ...

    def write(self) -> AbstractAsyncContextManager[AsyncConnection]: ...


# --- pure -------------------------------------------------------------------------------------------------------


def contiguous(after: int, page: Sequence[StoredRecord]) -> list[StoredRecord]:
    """The records of one chain (in seq order) that follow ``after`` without a gap: a missing seq is a record
    not committed yet (or lost: 'safehold audit verify' says so), and nothing after it is sent before it."""
    out: list[StoredRecord] = []
    for stored in page:
        if stored.record.seq != after + len(out) + 1:
            break
        out.append(stored)
    return out


def plan(cursors: Mapping[str, int], pages: Mapping[str, Sequence[StoredRecord]], limit: int) -> list[StoredRecord]:
    """The next batch: each chain's records after its cursor (cut at a gap), merged by time (then server and
    seq) with every chain kept in seq order, at most ``limit``.  A prefix of the merge is a prefix of every
    chain, so the cursors can move to the last seq sent of each."""
    chains = [contiguous(cursors.get(sid, 0), page) for sid, page in sorted(pages.items())]
    merged = heapq.merge(*chains, key=lambda s: (s.record.event.at, s.record.server_id, s.record.seq))
    return [s for s, _ in zip(merged, range(limit), strict=False)]


def advance(cursors: Mapping[str, int], batch: Sequence[StoredRecord]) -> dict[str, int]:
    """The cursors that move once ``batch`` is taken: each chain's to the last seq sent (never back)."""
    moved: dict[str, int] = {}
    for stored in batch:
        sid, seq = stored.record.server_id, stored.record.seq
        if seq > max(cursors.get(sid, 0), moved.get(sid, 0)):
            moved[sid] = seq
    return moved


def retry_delay(failures: int, initial: float, maximum: float) -> float:
    """How long to wait after the ``failures``-th failed delivery in a row: initial, doubled each time, capped."""
    if failures <= 0:
        return 0.0
    return min(maximum, initial * 2.0 ** min(failures - 1, 60))


@dataclass
class Retry:
    failures: int = 0
    next_at: float = 0.0


# --- the job ----------------------------------------------------------------------------------------------------


class AuditDelivery:
    """The scheduled job (``run``), kept by the HA agent while its server holds the schedules lease."""

    def __init__(self, rt: DeliveryRuntime, *, clock: Callable[[], float] = time.monotonic,
                 make_sink: Callable[[AuditSinkSection], Sink] | None = None) -> None:
        self.rt = rt
        self._clock = clock
        self._make_sink = make_sink or (lambda s: build_sink(s, rt.settings.path, rt.cluster_id))
        self._retry: dict[str, Retry] = {}
        self._started: set[str] = set()
        self._said: dict[str, str] = {}

    async def run(self) -> None:
        """One run: every sink that is due delivers what it has not taken (they do not wait on each other)."""
        await asyncio.gather(*(self._turn(s) for s in self.rt.settings.audit.sinks))

    async def _turn(self, section: AuditSinkSection) -> None:
        retry = self._retry.setdefault(section.name, Retry())
        if self._clock() < retry.next_at:
            return
        try:
            sent = await self.deliver(section)
        except SinkError as exc:
            await self._failed(section, retry, exc.message)
            return
        except SafeholdError as exc:  # the database (a 503, a fence, an unconfirmed lease): the next run
            self._say(section.name, f"audit sink '{section.name}': delivery waits: {exc.message}")
            return
        except Exception:  # noqa: BLE001 - a sink's own bug counts as a failed delivery (fail closed)
            log.exception("audit sink '%s': the delivery failed", section.name)
            await self._failed(section, retry, f"audit sink '{section.name}': the delivery failed unexpectedly "
                                               "(the server log says where)")
            return
        if retry.failures:
            log.warning("audit sink '%s' takes records again (%d delivered)", section.name, sent)
        retry.failures, retry.next_at = 0, 0.0
        self._said.pop(section.name, None)

    async def deliver(self, section: AuditSinkSection) -> int:
        """Deliver what the sink has not taken, batch after batch; returns how many records it took."""
        name = section.name
        if name not in self._started:
            async with self.rt.write() as conn:
                if await store.start(conn, name, section.kind, from_beginning=section.start == "beginning"):
                    log.info("audit sink '%s' created: it takes the records committed from now on%s", name,
                             " (and every earlier one)" if section.start == "beginning" else "")
            self._started.add(name)
        sink = self._make_sink(section)
        sent = 0
        for _ in range(BATCHES_PER_RUN):
            cursors, batch = await self._next_batch(name, section.batch)
            if not batch:
                break
            await sink.send([record_json(s, self.rt.cluster_id) for s in batch])
            async with self.rt.write() as conn:
                await store.delivered(conn, name, advance(cursors, batch), len(batch))
            sent += len(batch)
            if len(batch) < section.batch:
                break
        return sent

    async def _next_batch(self, name: str, limit: int) -> tuple[dict[str, int], list[StoredRecord]]:
        async with self.rt.read() as conn:
            cursors = await store.cursors(conn, name)
            heads = await store.heads(conn)
            pages = {sid: await audit_store.chain_page(conn, sid, cursors.get(sid, 0), limit)
                     for sid, head in heads.items() if head > cursors.get(sid, 0)}
        return cursors, plan(cursors, pages, limit)

    async def _failed(self, section: AuditSinkSection, retry: Retry, message: str) -> None:
        """A refused batch: stored as the sink's error (fail-closed sinks refuse from now on), tried again after
        the back-off."""
        retry.failures += 1
        retry.next_at = self._clock() + retry_delay(retry.failures, section.retry_initial, section.retry_max)
        self._say(section.name, message)
        try:
            async with self.rt.write() as conn:
                await store.failed(conn, section.name, message)
        except SafeholdError as exc:
            log.warning("audit sink '%s': its failure could not be recorded: %s", section.name, exc.message)

    def _say(self, name: str, sentence: str) -> None:
        """Log a sink's trouble when it changes (not every retry)."""
        if self._said.get(name) != sentence:
            self._said[name] = sentence
            log.warning("%s", sentence)
