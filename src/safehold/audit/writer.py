"""Audit first, fail closed: the group-commit audit writer.

Password retrievals wait on :meth:`AuditWriter.record`, which returns only
once their record is committed.  Records that arrive while a commit is in
flight are chained and committed together in the next transaction, so the
cost of a commit is shared by every waiting request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from safehold.audit.chain import AuditEvent
from safehold.errors import AuditUnavailable

log = logging.getLogger(__name__)

Committer = Callable[[Sequence[AuditEvent]], Awaitable[None]]


class AuditWriter:
    def __init__(self, commit: Committer, *, max_batch: int = 256) -> None:
        self._commit = commit
        self._max_batch = max_batch
        self._queue: asyncio.Queue[tuple[AuditEvent, asyncio.Future[None]]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.records = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="audit-writer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        while not self._queue.empty():
            _, fut = self._queue.get_nowait()
            if not fut.done():
                fut.set_exception(AuditUnavailable("the server is shutting down"))

    async def record(self, event: AuditEvent) -> None:
        """Return once the event is durably in the audit log; raise AuditUnavailable otherwise."""
        if self._task is None or self._task.done():
            raise AuditUnavailable("the audit writer is not running")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self._queue.put((event, fut))
        await fut

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._commit([e for e, _ in batch])
            except asyncio.CancelledError:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(AuditUnavailable("the server is shutting down"))
                raise
            except Exception as exc:  # noqa: BLE001 - every waiter must hear about it
                log.error("audit write failed (%s): %d action(s) refused", type(exc).__name__, len(batch))
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(
                            AuditUnavailable("the action could not be audited, so it was not carried out")
                        )
            else:
                self.batches += 1
                self.records += len(batch)
                for _, fut in batch:
                    if not fut.done():
                        fut.set_result(None)
