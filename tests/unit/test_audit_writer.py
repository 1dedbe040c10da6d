"""The group-commit audit writer, with a fake committer: audit first, fail closed."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

import pytest

from safehold.audit.chain import AuditEvent
from safehold.audit.writer import AuditWriter, Committer
from safehold.errors import AuditUnavailable

T = TypeVar("T")
T0 = dt.datetime(2024, 5, 1, 12, tzinfo=dt.UTC)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run one test body on a fresh loop, with a deadline so a bug cannot hang the suite."""
    return asyncio.run(asyncio.wait_for(coro, timeout=5))


async def until(condition: Callable[[], bool], what: str, deadline: float = 2.0) -> None:
    """Poll (yielding to the loop) until ``condition`` holds."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while not condition():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting until {what}")
        await asyncio.sleep(0)


def ev(i: int) -> AuditEvent:
    return AuditEvent(actor=f"user{i}", action="password_retrieved", result="success", target_id=str(i), at=T0)


class FakeLog:
    """A committer whose commits can be held open and made to fail."""

    def __init__(self) -> None:
        self.committed: list[list[AuditEvent]] = []  # successful batches, in order
        self.attempts: list[list[AuditEvent]] = []  # every batch handed to commit
        self.in_flight = 0
        self.gate: asyncio.Event | None = None  # when set: commits wait for it
        self.fail_attempts: set[int] = set()  # 1-based attempt numbers that raise

    @property
    def events(self) -> list[AuditEvent]:
        return [e for batch in self.committed for e in batch]

    def hold(self) -> None:
        self.gate = asyncio.Event()

    def release(self) -> None:
        assert self.gate is not None
        self.gate.set()
        self.gate = None

    async def commit(self, batch: Sequence[AuditEvent]) -> None:
        self.attempts.append(list(batch))
        attempt = len(self.attempts)
        self.in_flight += 1
        try:
            if self.gate is not None:
                await self.gate.wait()
            if attempt in self.fail_attempts:
                raise ConnectionError("connection to server lost; SELECT secret FROM ...")
            self.committed.append(list(batch))
        finally:
            self.in_flight -= 1


async def started(log: FakeLog, **kw: Any) -> AuditWriter:
    commit: Committer = log.commit
    writer = AuditWriter(commit, **kw)
    writer.start()
    return writer


async def spawn(writer: AuditWriter, events: Sequence[AuditEvent], entered: list[AuditEvent]) -> list[asyncio.Task[None]]:
    """Start one request per event; each is queued once it appears in ``entered``."""

    async def request(e: AuditEvent) -> None:
        entered.append(e)  # record() queues synchronously up to its first await
        await writer.record(e)

    return [asyncio.create_task(request(e)) for e in events]


# --- batching -------------------------------------------------------------------


def test_concurrent_records_share_one_commit() -> None:
    async def body() -> None:
        log = FakeLog()
        writer = await started(log)
        events = [ev(i) for i in range(10)]

        await asyncio.gather(*(writer.record(e) for e in events))

        assert log.events == events
        assert len(log.committed) < len(events)
        assert writer.records == 10
        assert writer.batches == len(log.committed)
        await writer.stop()

    run(body())


def test_records_arriving_during_a_commit_go_together_into_the_next() -> None:
    async def body() -> None:
        log = FakeLog()
        writer = await started(log)
        log.hold()
        entered: list[AuditEvent] = []
        first = await spawn(writer, [ev(0)], entered)
        await until(lambda: log.in_flight == 1, "the first commit is in flight")

        later = await spawn(writer, [ev(i) for i in range(1, 10)], entered)
        await until(lambda: len(entered) == 10, "every request is queued")
        assert not any(t.done() for t in first + later)

        log.release()
        await asyncio.gather(*first, *later)

        assert log.committed == [[ev(0)], [ev(i) for i in range(1, 10)]]
        assert (writer.batches, writer.records) == (2, 10)
        await writer.stop()

    run(body())


def test_each_waiter_returns_only_after_its_batch_committed() -> None:
    async def body() -> None:
        log = FakeLog()
        writer = await started(log)
        log.hold()
        returned_after_commit: list[bool] = []

        async def request(e: AuditEvent) -> None:
            await writer.record(e)
            returned_after_commit.append(e in log.events)

        tasks = [asyncio.create_task(request(ev(i))) for i in range(5)]
        await until(lambda: log.in_flight == 1, "a commit is in flight")
        for _ in range(20):  # give the waiters every chance to return early
            await asyncio.sleep(0)
        assert returned_after_commit == []
        assert not any(t.done() for t in tasks)

        log.release()
        await asyncio.gather(*tasks)
        assert returned_after_commit == [True] * 5
        await writer.stop()

    run(body())


def test_batches_never_exceed_max_batch() -> None:
    async def body() -> None:
        log = FakeLog()
        writer = await started(log, max_batch=3)
        events = [ev(i) for i in range(10)]

        await asyncio.gather(*(writer.record(e) for e in events))

        assert all(1 <= len(b) <= 3 for b in log.committed)
        assert log.events == events
        assert writer.batches == len(log.committed) >= 4
        await writer.stop()

    run(body())


def test_a_lone_record_is_committed_immediately() -> None:
    async def body() -> None:
        log = FakeLog()
        writer = await started(log)
        await writer.record(ev(1))
        assert log.committed == [[ev(1)]]
        await writer.record(ev(2))
        assert log.committed == [[ev(1)], [ev(2)]]
        await writer.stop()

    run(body())


# --- failing closed ----------------------------------------------------------------


def test_failed_commit_refuses_every_waiter_of_its_batch_and_later_batches_still_work(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def body() -> None:
        log = FakeLog()
        log.fail_attempts = {2}
        writer = await started(log)
        log.hold()
        entered: list[AuditEvent] = []
        first = await spawn(writer, [ev(0)], entered)
        await until(lambda: log.in_flight == 1, "the first commit is in flight")
        doomed = await spawn(writer, [ev(i) for i in range(1, 6)], entered)
        await until(lambda: len(entered) == 6, "every request is queued")
        log.release()

        await asyncio.gather(*first)
        results = await asyncio.gather(*doomed, return_exceptions=True)

        assert log.attempts[1] == [ev(i) for i in range(1, 6)]
        assert all(isinstance(r, AuditUnavailable) for r in results), results
        assert all(str(r) == "the action could not be audited, so it was not carried out" for r in results)
        assert all(isinstance(r, AuditUnavailable) and r.code == "audit_unavailable" for r in results)

        await writer.record(ev(99))  # the writer keeps serving
        assert log.committed == [[ev(0)], [ev(99)]]
        assert (writer.batches, writer.records) == (2, 2)
        await writer.stop()

    with caplog.at_level(logging.ERROR, logger="safehold.audit.writer"):
        run(body())
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["audit write failed (ConnectionError): 5 action(s) refused"]
    assert "secret" not in messages[0]


def test_every_commit_failing_refuses_every_request() -> None:
    async def body() -> None:
        log = FakeLog()
        log.fail_attempts = set(range(1, 100))
        writer = await started(log)
        results = await asyncio.gather(*(writer.record(ev(i)) for i in range(7)), return_exceptions=True)
        assert all(isinstance(r, AuditUnavailable) for r in results)
        assert log.committed == []
        assert (writer.batches, writer.records) == (0, 0)
        await writer.stop()

    run(body())


def test_record_before_start_is_refused() -> None:
    async def body() -> None:
        log = FakeLog()
        writer = AuditWriter(log.commit)
        with pytest.raises(AuditUnavailable, match="not running"):
            await writer.record(ev(1))
        assert log.attempts == []

    run(body())


def test_start_twice_runs_one_writer() -> None:
    async def body() -> None:
        log = FakeLog()
        writer = await started(log)
        task = writer._task
        writer.start()
        assert writer._task is task
        await writer.record(ev(1))
        await writer.stop()

    run(body())


# --- stopping ------------------------------------------------------------------------


def test_stop_fails_the_batch_in_flight_and_every_queued_waiter() -> None:
    async def body() -> None:
        log = FakeLog()
        writer = await started(log)
        log.hold()
        entered: list[AuditEvent] = []
        in_flight = await spawn(writer, [ev(0), ev(1)], entered)
        await until(lambda: log.in_flight == 1, "the first commit is in flight")
        queued = await spawn(writer, [ev(i) for i in range(2, 6)], entered)
        await until(lambda: len(entered) == 6, "every request is queued")

        await writer.stop()

        results = await asyncio.gather(*in_flight, *queued, return_exceptions=True)
        assert all(isinstance(r, AuditUnavailable) for r in results), results
        assert all("shutting down" in str(r) for r in results)
        assert log.committed == []
        assert log.in_flight == 0  # the commit was cancelled, not left running

        with pytest.raises(AuditUnavailable, match="not running"):
            await writer.record(ev(9))

    run(body())


def test_stop_when_idle_and_stop_twice() -> None:
    async def body() -> None:
        log = FakeLog()
        writer = await started(log)
        await writer.record(ev(1))
        await writer.stop()
        await writer.stop()
        assert log.committed == [[ev(1)]]

    run(body())


def test_writer_can_be_started_again_after_stop() -> None:
    async def body() -> None:
        log = FakeLog()
        writer = await started(log)
        await writer.stop()
        writer.start()
        await writer.record(ev(1))
        assert log.committed == [[ev(1)]]
        await writer.stop()

    run(body())


def test_a_cancelled_request_does_not_disturb_the_others() -> None:
    """A client that goes away while waiting: its record may still be written, others proceed."""

    async def body() -> None:
        log = FakeLog()
        writer = await started(log)
        log.hold()
        entered: list[AuditEvent] = []
        tasks = await spawn(writer, [ev(i) for i in range(4)], entered)
        await until(lambda: log.in_flight == 1, "a commit is in flight")
        tasks[1].cancel()
        log.release()

        results = await asyncio.gather(*tasks, return_exceptions=True)

        assert isinstance(results[1], asyncio.CancelledError)
        assert [r for i, r in enumerate(results) if i != 1] == [None, None, None]
        await writer.record(ev(9))
        assert log.events[-1] == ev(9)
        await writer.stop()

    run(body())


def test_record_fails_closed_when_the_writer_task_has_died() -> None:
    async def body() -> None:
        attempts = 0

        async def commit(batch: Sequence[AuditEvent]) -> None:
            nonlocal attempts
            attempts += 1
            if attempts == 1:  # e.g. the driver's own future was cancelled under it
                raise asyncio.CancelledError()

        writer = AuditWriter(commit)
        writer.start()
        with pytest.raises(AuditUnavailable):
            await writer.record(ev(1))

        with pytest.raises(AuditUnavailable):
            await asyncio.wait_for(writer.record(ev(2)), timeout=0.5)
        await writer.stop()

    run(body())
