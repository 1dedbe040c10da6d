"""The dispatcher: one queue per channel, back-off retries, and a caller that never waits."""

from __future__ import annotations

import datetime as dt
import threading
import time

import pytest

from safehold.alerts.base import AlertError, backoff_delays
from safehold.alerts.dispatch import Dispatcher
from safehold.alerts.events import AlertEvent
from safehold.alerts.settings import AlertsSection, RetrySection
from safehold.config import ServerSection, Settings

AT = dt.datetime(2025, 1, 2, tzinfo=dt.UTC)


def settings(retry: RetrySection | None = None, queue_size: int = 1000) -> Settings:
    return Settings(server=ServerSection(id="3f2b8c1e-9a4d-4e6f-8b7a-1c2d3e4f5a6b", name="vault-1"),
                    alerts=AlertsSection(retry=retry or RetrySection(initial_delay=0.01), queue_size=queue_size))


def event(i: int) -> AlertEvent:
    return AlertEvent("HAFailed", "ro", f"event {i}", AT, id=i)


class Recorder:
    def __init__(self, name: str, failures: list[BaseException] | None = None,
                 gate: threading.Event | None = None) -> None:
        self.name = name
        self.failures = list(failures or [])
        self.gate = gate
        self.got: list[int | None] = []
        self.tries = 0

    def target(self) -> str:
        return f"{self.name}-target"

    def check(self) -> None:
        pass

    def send(self, e: AlertEvent) -> str:
        self.tries += 1
        if self.gate is not None:
            self.gate.wait()
        if self.failures:
            raise self.failures.pop(0)
        self.got.append(e.id)
        return f"sent {e.id}"


@pytest.mark.parametrize(("retry", "delays"), [
    (RetrySection(), [1.0, 2.0, 4.0, 8.0]),
    (RetrySection(attempts=1), []),
    (RetrySection(attempts=8, initial_delay=5, multiplier=3, max_delay=60), [5, 15, 45, 60, 60, 60, 60]),
    (RetrySection(attempts=3, initial_delay=0.5, multiplier=1), [0.5, 0.5]),
])
def test_backoff_schedule(retry: RetrySection, delays: list[float]) -> None:
    assert backoff_delays(retry) == delays


def test_a_failing_channel_is_retried_until_it_works() -> None:
    flaky = Recorder("flaky", [AlertError("down"), AlertError("still down")])
    d = Dispatcher(settings(), channels={"flaky": flaky})
    d.start()
    try:
        d.publish(event(1))
        assert d.wait_idle(5)
        st = d.status()["flaky"]
        assert flaky.got == [1] and flaky.tries == 3
        assert (st["delivered"], st["retries"], st["failed"]) == (1, 2, 0)
        assert st["last_success"] == "sent 1" and st["target"] == "flaky-target"
    finally:
        d.stop(2)


def test_tries_are_bounded_and_a_permanent_error_is_not_retried() -> None:
    dead = Recorder("dead", [AlertError("down")] * 10)
    misconfigured = Recorder("bad", [AlertError("refused", transient=False)])
    d = Dispatcher(settings(RetrySection(attempts=3, initial_delay=0.01)), channels={"dead": dead, "bad": misconfigured})
    d.start()
    try:
        d.publish(event(1))
        assert d.wait_idle(5)
        assert dead.tries == 3 and misconfigured.tries == 1
        assert d.status()["dead"]["failed"] == 1 and d.status()["dead"]["last_error"] == "down"
    finally:
        d.stop(2)


def test_a_dead_channel_delays_neither_the_caller_nor_the_other_channels() -> None:
    gate = threading.Event()  # the stuck channel's "network" never answers until the test ends
    stuck = Recorder("stuck", gate=gate)
    fine = Recorder("fine")
    d = Dispatcher(settings(), channels={"stuck": stuck, "fine": fine})
    d.start()
    try:
        start = time.monotonic()
        for i in range(50):
            d.publish(event(i))
        assert time.monotonic() - start < 0.5
        deadline = time.monotonic() + 5
        while len(fine.got) < 50 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert fine.got == list(range(50))
        assert stuck.got == [] and d.status()["stuck"]["pending"] == 49
    finally:
        gate.set()
        d.stop(2)


def test_publish_never_raises_and_drops_beyond_the_queue_size() -> None:
    gate = threading.Event()
    slow = Recorder("slow", gate=gate)
    d = Dispatcher(settings(queue_size=3), channels={"slow": slow})
    for i in range(10):  # not started yet: everything stays queued
        d.publish(event(i))
    assert d.status()["slow"]["dropped"] == 7
    d.publish(None)  # type: ignore[arg-type]  # nonsense is logged, not raised
    gate.set()
    d.start()
    assert d.wait_idle(5)
    d.stop(2)
    assert slow.got[:3] == [0, 1, 2]
    d.publish(event(99))  # after stop: logged, not raised
    assert 99 not in slow.got


def test_status_never_holds_an_exception_text() -> None:
    leaky = Recorder("leaky", [RuntimeError("login failed for password hunter2")])
    d = Dispatcher(settings(RetrySection(attempts=1)), channels={"leaky": leaky})
    d.start()
    d.publish(event(1))
    assert d.wait_idle(5)
    d.stop(2)
    st = d.status()["leaky"]
    assert st["last_error"] == "unexpected RuntimeError while sending"
    assert "hunter2" not in repr(d.status())


def test_stop_returns_in_time_even_with_a_stuck_channel() -> None:
    gate = threading.Event()
    d = Dispatcher(settings(), channels={"stuck": Recorder("stuck", gate=gate)})
    d.start()
    d.publish(event(1))
    start = time.monotonic()
    d.stop(0.3)
    assert time.monotonic() - start < 2
    gate.set()


def test_no_channel_configured() -> None:
    d = Dispatcher(settings())
    d.start()
    d.publish(event(1))
    assert d.channels() == [] and d.status() == {}
    d.stop(1)
