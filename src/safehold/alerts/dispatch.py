"""Delivering events to every configured channel without ever making the caller wait.

:meth:`Dispatcher.publish` only puts the event on one queue per channel; one thread per channel
delivers from its queue, retrying a failed delivery with exponential back-off (a bounded number of
tries), so a dead channel delays neither the caller (the HA loop, a web request) nor the other
channels.  :func:`send_test` sends one test alert synchronously, for 'safehold alerts test' and the
API.  The channels are those of an :class:`~.settings.AlertConfig` (the cluster's alert settings, from
the database); :meth:`Dispatcher.reconfigure` replaces them when those settings change.  How each event
ended on each channel (:data:`DELIVERED`, :data:`FAILED` after its last try, :data:`DROPPED` by a full queue)
is told to ``counted`` (the server's ``safehold_alert_deliveries_total``); test alerts are not counted.
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from safehold.alerts.base import AlertError, Channel, backoff_delays
from safehold.alerts.email import EmailChannel
from safehold.alerts.events import AlertEvent
from safehold.alerts.script import ScriptChannel
from safehold.alerts.settings import CHANNELS, AlertConfig, RetrySection
from safehold.alerts.snmp import SnmpChannel
from safehold.alerts.syslog import SyslogChannel
from safehold.alerts.webhook import WebhookChannel

if TYPE_CHECKING:
    from safehold.config import Settings

log = logging.getLogger(__name__)
_STOP = object()
#: what became of one event on one channel (the values never change: they are a metric's labels)
DELIVERED, FAILED, DROPPED = "delivered", "failed", "dropped"
#: told (channel, outcome) each time an event's delivery on a channel ended
Counted = Callable[[str, str], None]


def build_channels(settings: Settings, config: AlertConfig | None = None) -> dict[str, Channel]:
    """The channels of ``config`` (default: the ``[alerts]`` section of ``settings``, secrets from their
    files), by name; paths resolved against the server's data directory."""
    cfg = config if config is not None else AlertConfig(settings.alerts)
    a = cfg.section
    out: dict[str, Channel] = {}
    if a.email is not None:
        out["email"] = EmailChannel(a.email, settings.path, password=cfg.secret("email"))
    if a.syslog is not None:
        out["syslog"] = SyslogChannel(a.syslog, settings.path)
    if a.snmp is not None:
        out["snmp"] = SnmpChannel(a.snmp, settings.path, community=cfg.secret("snmp"))
    if a.webhook is not None:
        out["webhook"] = WebhookChannel(a.webhook, settings.path, secret=cfg.secret("webhook"))
    if a.script is not None:
        out["script"] = ScriptChannel(a.script, settings.path)
    return out


def describe_failure(exc: BaseException) -> AlertError:
    """An AlertError as is; anything else (a bug) by its type only: its text might hold a secret."""
    if isinstance(exc, AlertError):
        return exc
    return AlertError(f"unexpected {type(exc).__name__} while sending", transient=True)


def send_test(settings: Settings, channel: str, config: AlertConfig | None = None) -> str:
    """Send one test alert on ``channel`` of ``config`` (default: as ``settings`` configure it) now (no
    retry); returns what was done, or raises :class:`AlertError` (a SafeholdError) saying why not."""
    if channel not in CHANNELS:
        raise AlertError(f"unknown alert channel {channel!r}", hint="one of " + ", ".join(CHANNELS),
                         transient=False)
    ch = build_channels(settings, config).get(channel)
    if ch is None:
        raise AlertError(f"the {channel} alert channel is not configured",
                         hint=f"configure it with 'safehold alerts set {channel} ...'", transient=False)
    event = AlertEvent.test_alert(settings.server.id, settings.server.name, settings.ha.cluster_id)
    try:
        ch.check()
        return ch.send(event)
    except Exception as exc:  # noqa: BLE001 - reported as a clear, secret-free error
        raise describe_failure(exc) from None


@dataclass
class ChannelStatus:
    """How deliveries on one channel went (no secrets)."""

    channel: str
    target: str
    delivered: int = 0
    failed: int = 0
    dropped: int = 0
    retries: int = 0
    pending: int = 0
    last_success_at: str | None = None
    last_success: str | None = None
    last_failure_at: str | None = None
    last_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Worker:
    """One channel's queue and the thread that delivers from it."""

    def __init__(self, channel: Channel, retry: RetrySection, queue_size: int, stopping: threading.Event,
                 clock: Callable[[], dt.datetime], counted: Counted | None = None) -> None:
        self.channel = channel
        self.counted = counted
        self.delays = backoff_delays(retry)
        self.queue: queue.Queue[Any] = queue.Queue()  # bounded by offer(), so _STOP always fits
        self.queue_size = queue_size
        self.stopping = stopping
        self.clock = clock
        self.lock = threading.Lock()
        self.status = ChannelStatus(channel.name, _safe_target(channel))
        self.thread: threading.Thread | None = None
        self.busy = False

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name=f"alerts-{self.channel.name}", daemon=True)
        self.thread.start()

    def offer(self, event: AlertEvent) -> None:
        if self.queue.qsize() < self.queue_size:
            self.queue.put_nowait(event)
            return
        with self.lock:
            self.status.dropped += 1
        self._count(DROPPED)
        log.error("alert channel %s is backed up (%d events queued): dropped %s event %s",
                  self.channel.name, self.queue_size, event.kind, event.id)

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is _STOP:
                return
            with self.lock:
                self.busy = True
            try:
                self.deliver(item)
            finally:
                with self.lock:
                    self.busy = False

    def deliver(self, event: AlertEvent) -> bool:
        """Try ``event`` until it is delivered, fails for good, or the tries run out."""
        name = self.channel.name
        for attempt in range(len(self.delays) + 1):
            try:
                result = self.channel.send(event)
            except Exception as exc:  # noqa: BLE001 - every failure is recorded, none escapes the thread
                err = describe_failure(exc)
                last = attempt == len(self.delays) or not err.transient or self.stopping.is_set()
                if not last:
                    delay = self.delays[attempt]
                    with self.lock:
                        self.status.retries += 1
                    log.warning("alert channel %s: %s event %s not delivered (try %d): %s; trying again in "
                                "%g s", name, event.kind, event.id, attempt + 1, err.message, delay)
                    if not self.stopping.wait(delay):
                        continue
                with self.lock:
                    self.status.failed += 1
                    self.status.last_failure_at = self.clock().isoformat()
                    self.status.last_error = err.message
                self._count(FAILED)
                log.error("alert channel %s: %s event %s not delivered after %d tries: %s", name, event.kind,
                          event.id, attempt + 1, err.message)
                return False
            with self.lock:
                self.status.delivered += 1
                self.status.last_success_at = self.clock().isoformat()
                self.status.last_success = result
            self._count(DELIVERED)
            log.info("alert channel %s: %s event %s: %s", name, event.kind, event.id, result)
            return True
        return False  # pragma: no cover - the loop always returns

    def _count(self, outcome: str) -> None:
        if self.counted is None:
            return
        try:
            self.counted(self.channel.name, outcome)
        except Exception:  # noqa: BLE001 - counting never stops a delivery
            log.exception("alert channel %s: could not count a delivery", self.channel.name)

    def snapshot(self) -> ChannelStatus:
        with self.lock:
            return ChannelStatus(**{**asdict(self.status), "pending": self.queue.qsize()})

    def idle(self) -> bool:
        with self.lock:
            return not self.busy and self.queue.empty()


def _safe_target(channel: Channel) -> str:
    try:
        return channel.target()
    except Exception:  # noqa: BLE001 - a description must never break the dispatcher
        return channel.name


class Dispatcher:
    """Fans events out to the configured channels, one queue and one delivery thread per channel."""

    def __init__(self, settings: Settings, config: AlertConfig | None = None, *,
                 channels: Mapping[str, Channel] | None = None,
                 clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
                 counted: Counted | None = None) -> None:
        """``counted``: told how each event ended on each channel (the server's metrics)."""
        self._settings = settings
        self._clock = clock
        self._counted = counted
        self._stopping = threading.Event()
        self._started = False
        self._stopped = False
        self._swap = threading.Lock()
        self.config = config if config is not None else AlertConfig(settings.alerts)
        self._workers = self._make_workers(self.config, channels, self._stopping)

    def _make_workers(self, config: AlertConfig, channels: Mapping[str, Channel] | None,
                      stopping: threading.Event) -> dict[str, _Worker]:
        a = config.section
        built = build_channels(self._settings, config) if channels is None else dict(channels)
        return {name: _Worker(ch, a.retry, a.queue_size, stopping, self._clock, self._counted)
                for name, ch in built.items()}

    def reconfigure(self, config: AlertConfig) -> None:
        """Send to the channels of ``config`` from now on.  The old channels' delivery threads try what
        they still hold once more and end (without delaying the caller)."""
        if config == self.config:
            return
        stopping = threading.Event()
        workers = self._make_workers(config, None, stopping)
        with self._swap:
            if self._stopped:
                return
            old, old_stopping = self._workers, self._stopping
            self._workers, self._stopping, self.config = workers, stopping, config
            if self._started:
                for w in workers.values():
                    w.start()
        for w in old.values():
            w.queue.put_nowait(_STOP)
        old_stopping.set()
        log.info("alert settings changed: alerts go to %s",
                 ", ".join(f"{n} ({w.status.target})" for n, w in workers.items()) or "no channel")

    def channels(self) -> list[str]:
        """The names of the configured channels."""
        return list(self._workers)

    def start(self) -> None:
        with self._swap:
            if self._started:
                return
            self._started = True
            for w in self._workers.values():
                w.start()
        if self._workers:
            log.info("alerts go to: %s", ", ".join(f"{n} ({w.status.target})" for n, w in self._workers.items()))

    def publish(self, event: AlertEvent) -> None:
        """Queue ``event`` for every channel; never blocks, never raises."""
        try:
            if self._stopped:
                log.warning("alerts stopped: %s event %s not sent", event.kind, event.id)
                return
            for w in list(self._workers.values()):
                w.offer(event)
        except Exception:  # noqa: BLE001 - the caller (the HA loop) must never fail because of alerts
            log.exception("could not queue %s event for alerting", getattr(event, "kind", "?"))

    def status(self) -> dict[str, dict[str, Any]]:
        """Per channel: where it sends to and how deliveries went (no secrets)."""
        return {name: w.snapshot().to_dict() for name, w in self._workers.items()}

    def wait_idle(self, timeout: float) -> bool:
        """Whether every queue emptied and every delivery ended within ``timeout`` seconds (tests)."""
        deadline = time.monotonic() + timeout
        while not all(w.idle() for w in self._workers.values()):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    def stop(self, timeout: float = 5.0) -> None:
        """Try what is queued once more (no back-off) and end the threads, waiting at most
        ``timeout`` seconds; what is left is logged as not sent (the threads are daemons)."""
        with self._swap:
            if self._stopped:
                return
            self._stopped = True
        deadline = time.monotonic() + timeout
        for w in self._workers.values():
            w.queue.put_nowait(_STOP)
        # queued events get one try each, no more back-off: the process is going away
        self._stopping.set()
        for w in self._workers.values():
            if w.thread is not None:
                w.thread.join(max(0.0, deadline - time.monotonic()))
        for name, w in self._workers.items():
            if w.thread is not None and w.thread.is_alive():
                log.warning("alert channel %s still busy at stop; %d queued events not sent", name,
                            w.queue.qsize())
