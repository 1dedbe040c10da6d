"""Telling systemd how ``safehold serve`` is doing: ready, alive, stopping (the sd_notify protocol).

A notification is one datagram of ``KEY=VALUE`` lines sent to the ``AF_UNIX`` socket that
``$NOTIFY_SOCKET`` names (a path, or ``@name`` in Linux's abstract namespace).  No library: a plain
datagram socket does it.

1. **At start-up** (:func:`claim`, in ``main``) the process takes ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and
   ``WATCHDOG_PID`` out of its environment, so that what it starts — the bundled PostgreSQL, which
   notifies systemd itself when it was built with systemd support, alert scripts — never speaks for the
   service.
2. **One process** serves: it sends ``READY=1`` once uvicorn listens, ``WATCHDOG=1`` after each cycle of
   its HA loop that went well (``ha/watchdog.py``: a stuck event loop or a hung HA step stops it, unlike a
   timer thread would), ``STOPPING=1`` when a signal asks it to stop.
3. **Several workers** (``http.workers``): only the supervisor, the service's main process, talks to
   systemd (``NotifyAccess=main``).  Each worker notifies the supervisor the same way, through a socket
   pair (:class:`Relay`), and :class:`WorkerBeats` decides what the supervisor passes on: ``READY=1``
   once every worker serves, ``WATCHDOG=1`` while every serving worker's HA loop has gone well within
   half the watchdog interval (one stuck worker starves it, and systemd restarts the service), ``STATUS=``
   lines on the way.

Sending never raises: a server without systemd, or whose manager went away, serves on.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

ENVIRONMENT = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
#: a worker's notifications name it so: the supervisor knows which worker spoke
WORKER_PID = "SAFEHOLD_WORKER_PID"
#: the supervisor passes WATCHDOG=1 on at most this often (systemd needs it every half interval at most)
FORWARD_EVERY = 1.0


# --- pure ------------------------------------------------------------------------------------------------

def socket_address(value: str) -> str | None:
    """The address to send to for ``$NOTIFY_SOCKET``: a path, or ``@name`` as Linux writes an abstract
    socket (a leading NUL byte).  Anything else (a relative path, a ``vsock:`` address) is not ours."""
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None


def watchdog_seconds(env: Mapping[str, str], pid: int) -> float | None:
    """The watchdog interval systemd expects pings within, if it expects them from process ``pid``:
    ``WATCHDOG_USEC`` set, and ``WATCHDOG_PID`` unset or ``pid`` (as ``sd_watchdog_enabled`` reads them)."""
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    owner = env.get("WATCHDOG_PID")
    if usec <= 0 or (owner is not None and owner.strip() != str(pid)):
        return None
    return usec / 1_000_000


def parse(message: bytes) -> dict[str, str]:
    """A notification's ``KEY=VALUE`` lines (lines that are not are ignored)."""
    fields: dict[str, str] = {}
    for line in message.decode("utf-8", "replace").splitlines():
        key, sep, value = line.partition("=")
        if sep and key:
            fields[key] = value
    return fields


@dataclass
class WorkerBeats:
    """What the supervisor heard from its workers, and what it tells systemd about them (pure: the time is
    passed in).  ``serving``: each serving worker's index and when it last said it is alive."""

    count: int
    watchdog: float | None  # seconds; None: systemd expects no pings
    label: str  # what the server does once ready ("serving on https://…")
    serving: dict[int, float] = field(default_factory=dict)
    announced: bool = False
    forwarded: float | None = None

    def heard(self, index: int, fields: Mapping[str, str], now: float) -> list[str]:
        """A worker's notification; returns the lines to send to systemd (none: nothing to say)."""
        if fields.get("STOPPING") == "1":
            self.serving.pop(index, None)
            return []
        out: list[str] = []
        if fields.get("READY") == "1":
            self.serving[index] = now
            out += self._readiness()
        if fields.get("WATCHDOG") == "1" and index in self.serving:
            self.serving[index] = now
            out += self._beat(now)
        return out

    def gone(self, index: int) -> list[str]:
        """A worker died (the supervisor starts another, which says READY=1 again once it serves)."""
        self.serving.pop(index, None)
        if not self.announced:
            return []
        return [f"STATUS={self.label}: worker {index} is being replaced ({len(self.serving)} of {self.count} "
                "workers serving)"]

    def _readiness(self) -> list[str]:
        all_serving = len(self.serving) == self.count
        if all_serving and not self.announced:
            self.announced = True
            return ["READY=1", f"STATUS={self.label} with {self.count} workers"]
        if all_serving:
            return [f"STATUS={self.label} with {self.count} workers"]
        return [f"STATUS={'starting' if not self.announced else self.label}: {len(self.serving)} of "
                f"{self.count} workers serving"]

    def _beat(self, now: float) -> list[str]:
        if not self.announced or self.watchdog is None or not self.serving:
            return []
        if any(now - last > self.watchdog / 2 for last in self.serving.values()):
            return []  # a worker that serves has not been well for half the interval: let systemd see it
        if self.forwarded is not None and now - self.forwarded < min(FORWARD_EVERY, self.watchdog / 4):
            return []
        self.forwarded = now
        return ["WATCHDOG=1"]


# --- sending ----------------------------------------------------------------------------------------------

class Notifier:
    """Where this process's notifications go: systemd's socket (``address``) or the supervisor's end of a
    socket pair (``sock``); ``watchdog``: the interval systemd expects pings within, if it does."""

    def __init__(self, *, address: str | None = None, sock: socket.socket | None = None,
                 watchdog: float | None = None, worker: bool = False) -> None:
        self.address, self.sock, self.watchdog, self.worker = address, sock, watchdog, worker

    def send(self, *lines: str) -> bool:
        text = "\n".join(((f"{WORKER_PID}={os.getpid()}",) if self.worker else ()) + lines)
        try:
            if self.sock is not None:
                self.sock.send(text.encode())
            else:
                with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                    sock.sendto(text.encode(), self.address)  # type: ignore[arg-type]
        except OSError as exc:
            log.debug("the service manager was not told %s: %s", lines, exc.strerror or exc)
            return False
        return True


_notifier: Notifier | None = None


def claim(env: MutableMapping[str, str] | None = None) -> Notifier | None:
    """Take the service manager's variables out of the environment (:data:`ENVIRONMENT`) and keep where to
    notify it, for this process.  None when it asked for no notifications."""
    global _notifier
    env = os.environ if env is None else env
    values = {name: env.pop(name) for name in ENVIRONMENT if name in env}
    address = socket_address(values.get("NOTIFY_SOCKET", ""))
    _notifier = None if address is None else Notifier(address=address, watchdog=watchdog_seconds(values, os.getpid()))
    return _notifier


def notify(*lines: str) -> bool:
    """Tell the service manager (or the supervisor) ``lines`` (``READY=1``, ``STATUS=…``); False when there is
    none to tell, or it could not be told."""
    return _notifier.send(*lines) if _notifier is not None else False


def alive() -> bool:
    """The watchdog's ping, when the service manager expects pings."""
    if _notifier is None or _notifier.watchdog is None:
        return False
    return _notifier.send("WATCHDOG=1")


class Relay:
    """The supervisor's side of its workers' notifications: a datagram socket pair, one end kept by the
    supervisor, the other inherited by every worker (:meth:`in_worker`).  The supervisor polls it."""

    def __init__(self, upstream: Notifier, count: int, label: str) -> None:
        self.upstream = upstream
        self.beats = WorkerBeats(count=count, watchdog=upstream.watchdog, label=label)
        self._mine, self._theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._mine.setblocking(False)

    @classmethod
    def open(cls, count: int, label: str) -> Relay | None:
        """A relay when this process has a service manager to tell, else None."""
        return cls(_notifier, count, label) if _notifier is not None else None

    def in_worker(self) -> None:
        """In a worker, just forked: its notifications go to the supervisor."""
        global _notifier
        self._mine.close()
        _notifier = Notifier(sock=self._theirs, watchdog=self.upstream.watchdog, worker=True)

    def poll(self, workers: Mapping[int, int], now: float) -> None:
        """Take in what the workers said (``workers``: pid -> index, the live ones) and pass on what
        :class:`WorkerBeats` decides."""
        while True:
            try:
                message = self._mine.recv(4096)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            fields = parse(message)
            try:
                index = workers.get(int(fields.get(WORKER_PID, "")))
            except ValueError:
                index = None
            if index is None:  # a worker that has died since, or not one of ours
                continue
            self._tell(self.beats.heard(index, fields, now))

    def gone(self, index: int) -> None:
        self._tell(self.beats.gone(index))

    def _tell(self, lines: list[str]) -> None:
        if lines:
            self.upstream.send(*lines)

    def close(self) -> None:
        self._mine.close()
        self._theirs.close()
