"""Several worker processes on one HTTPS port (``http.workers``): every core serves.

The supervisor is the ``safehold serve`` process.  It has read the key file, started the bundled database
and run the migrations (``cli.main.serve``); here it binds one listening socket per worker on the same port
(``SO_REUSEPORT``: the kernel spreads new connections over them, where one shared socket lets the first worker
to wake take them all) and forks the workers, which inherit their socket and the key in memory (the file is
read once).  The supervisor keeps the sockets: connections that arrive while a worker is being replaced wait
in its socket's backlog for the new one.  Each worker is a whole server of
the same identity — its own event loop, connection pool, HA agent, write lease and fencing — so every
worker checks the lease before each COMMIT itself; what must happen once per server runs in worker 0 only
(the start and stop audit records, housekeeping, the synchronous-mode guard), and the schedules (the HA
monitor, alerts, backups) run on whichever process holds the schedules lease, as across servers.

The supervisor replaces a worker that died (a crash, ``kill -9``), unless workers keep dying (then it stops
them all and fails); SIGTERM or SIGINT is passed to every worker, and once they have stopped the caller
stops the bundled database.  Prometheus metrics are kept in files shared by the workers
(``run/metrics``), so ``/metrics`` on any worker shows the sum over all of them.

A server keeps its workers through role changes: each worker follows the change itself (a promoted read-only
server's workers take over one by one; a demoted primary's carry on read-only), and what a read-only or fenced
server keeps outside its database is shared by its workers (the audit spool, under a lock; sessions, failed
logins and TOTP steps in ``run/local.sqlite3``).  A replaced worker starts with the settings file as it is now.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from safehold import systemd
from safehold.config import Settings, load_settings
from safehold.crypto.keyfile import MasterKey
from safehold.errors import ConfigError, SafeholdError
from safehold.ha.shared_view import VIEW_FILE

log = logging.getLogger(__name__)

#: workers that die this many times within CRASH_WINDOW seconds stop the server
CRASH_LIMIT = 5
CRASH_WINDOW = 60.0
#: how long the workers get to stop after SIGTERM before they are killed
STOP_GRACE = 20.0
METRICS_DIR = "run/metrics"
PR_SET_PDEATHSIG = 1


def listening_socket(settings: Settings) -> socket.socket:
    """One worker's listening socket on the server's port (``SO_REUSEPORT``: the workers' sockets share it)."""
    sock = bound_socket(settings.http.listen, settings.http.port, share=True)
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def bound_socket(host: str, port: int, *, share: bool = False) -> socket.socket:
    """A TCP socket bound to ``host:port``, or a clear error when something holds the port.  ``share``: join
    the port's other ``SO_REUSEPORT`` sockets (the workers'); without it the bind fails if any socket holds
    the port, which is how ``serve`` makes sure no other server (Safehold or not) listens there first."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if share:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise ConfigError(f"HTTPS port {port} on {host} is already in use",
                          hint="stop what uses it, or set http.port in safehold.toml") from None
    return sock


def metrics_dir(settings: Settings) -> Path:
    return settings.data_dir / METRICS_DIR


def share_metrics(directory: Path) -> None:
    """In a worker: keep this process's Prometheus values in ``directory`` (summed by /metrics)."""
    from prometheus_client import values

    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    values.ValueClass = values.MultiProcessValue()


Worker = Callable[[Settings, MasterKey, socket.socket, int], None]


class Supervisor:
    """Fork ``count`` workers running ``worker(settings, master, sock, index)``; keep them running until a
    signal says stop."""

    def __init__(self, settings: Settings, master: MasterKey, worker: Worker, count: int) -> None:
        self.settings, self.master, self.worker, self.count = settings, master, worker, count
        self.children: dict[int, int] = {}  # pid -> worker index
        self.stopping = False
        self.crashes: list[float] = []
        self.failed: str | None = None
        self.sockets: dict[int, socket.socket] = {}  # worker index -> its listening socket (kept here)
        self.pid = os.getpid()
        # the workers' notifications to systemd pass through here (NotifyAccess=main): see safehold.systemd
        self.relay = systemd.Relay.open(count, f"serving on https://{settings.http.listen}:{settings.http.port}")

    def run(self) -> None:
        directory = metrics_dir(self.settings)
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True, mode=0o700)
        (self.settings.data_dir / VIEW_FILE).unlink(missing_ok=True)  # a read-only server's view of a last run
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            for index in range(self.count):
                self._spawn(index)
            log.info("serving with %d worker processes", self.count)
            self._watch()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._stop_all()
            for index in list(self.sockets):
                self._close_socket(index)
            if self.relay is not None:
                self.relay.close()
            shutil.rmtree(directory, ignore_errors=True)
        if self.failed:
            raise SafeholdError(self.failed, hint="see the server log for why the workers stopped")

    def _close_socket(self, index: int) -> None:
        sock = self.sockets.pop(index, None)
        if sock is not None:
            sock.close()

    # --- children -------------------------------------------------------------------------------

    def _spawn(self, index: int) -> None:
        try:  # the role may have changed since the server started (a promotion, a switchover)
            self.settings = load_settings(self.settings.data_dir)
        except SafeholdError as exc:
            log.warning("the settings file cannot be read (%s): the new worker starts with the last one read",
                        exc.message)
        if index not in self.sockets:
            self.sockets[index] = listening_socket(self.settings)
        sock = self.sockets[index]
        pid = os.fork()
        if pid == 0:  # the worker: never return into the supervisor's code (it would stop the database)
            code = 0
            try:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    signal.signal(sig, signal.SIG_DFL)
                _die_with_parent(os.getppid())
                if self.relay is not None:
                    self.relay.in_worker()
                for other, theirs in self.sockets.items():  # only its own: a closed slot must leave the port
                    if other != index:
                        theirs.close()
                share_metrics(metrics_dir(self.settings))
                self.worker(self.settings, self.master, sock, index)
            except SafeholdError as exc:
                log.error("worker %d stopped: %s", index, exc.message)
                code = 1
            except BaseException:  # noqa: BLE001 - anything else is a crash; the supervisor replaces it
                log.exception("worker %d crashed", index)
                code = 1
            finally:
                logging.shutdown()
                os._exit(code)
        self.children[pid] = index

    def _watch(self) -> None:
        """Reap workers that ended (a crash, ``kill -9``, a worker stopped on its own) and replace them."""
        while self.children:
            time.sleep(0.2)
            if self.relay is not None:
                self.relay.poll(self.children, time.monotonic())
            for pid, status in self._reaped():
                index = self.children.pop(pid)
                self._forget(pid)
                if not self.stopping:
                    if self.relay is not None:
                        self.relay.gone(index)
                    self._crashed(index, pid, _exit_words(status))

    def _reaped(self) -> list[tuple[int, int]]:
        done = []
        for pid in list(self.children):
            try:
                got, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                got, status = pid, 0
            if got:
                done.append((pid, status))
        return done

    def _crashed(self, index: int, pid: int, how: str) -> None:
        now = time.monotonic()
        self.crashes = [t for t in self.crashes if now - t < CRASH_WINDOW] + [now]
        if len(self.crashes) >= CRASH_LIMIT:
            self.failed = (f"worker {index} {how}; {len(self.crashes)} workers died within {CRASH_WINDOW:.0f} s, "
                           "so the server stops")
            log.error("%s", self.failed)
            self.stopping = True
            self._signal_all(signal.SIGTERM)
            return
        log.warning("worker %d (pid %d) %s: starting a new one", index, pid, how)
        self._spawn(index)

    def _forget(self, pid: int) -> None:
        """A dead worker's live gauges no longer count."""
        from prometheus_client import multiprocess

        try:
            multiprocess.mark_process_dead(pid, str(metrics_dir(self.settings)))
        except OSError:
            pass

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if os.getpid() != self.pid:  # a worker just forked, before it set its own handlers: not ours to act on
            os._exit(0)
        if not self.stopping:
            log.info("stopping the workers (signal %d)", signum)
            systemd.notify("STOPPING=1", "STATUS=stopping the workers")
        self.stopping = True
        self._signal_all(signal.SIGTERM)

    def _signal_all(self, sig: int) -> None:
        for pid in list(self.children):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def _stop_all(self) -> None:
        """SIGTERM every worker still running, wait for them, kill what is left after the grace period."""
        self.stopping = True
        self._signal_all(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        while self.children and time.monotonic() < deadline:
            for pid in list(self.children):
                try:
                    done, _ = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    done = pid
                if done:
                    self.children.pop(pid, None)
            time.sleep(0.05)
        if self.children:
            log.warning("killing %d worker(s) that did not stop within %.0f s", len(self.children), STOP_GRACE)
            self._signal_all(signal.SIGKILL)
            for pid in list(self.children):
                try:
                    os.waitpid(pid, 0)
                except ChildProcessError:
                    pass
            self.children.clear()


def _die_with_parent(parent: int) -> None:
    """A worker dies with its supervisor (``kill -9``, a crash): it must not serve on as an orphan that no one
    supervises and nobody stops, and a killed server stays a killed server (no graceful stop, no stop
    record).  Linux's parent-death signal; checked once more in case the supervisor died before it was set."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the worker finds out when it next accepts nothing
        log.warning("worker processes do not stop by themselves if the supervisor is killed on this platform")
    if os.getppid() != parent:
        os._exit(0)


def _exit_words(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"was killed by signal {os.WTERMSIG(status)}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"
