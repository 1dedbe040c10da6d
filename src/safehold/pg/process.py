"""The postmaster of one bundled cluster: start, stop, status, a crash, readiness.

Patroni's `postgresql/postmaster.py` is the model: the process side alone,
with the pid file and /proc as the truth about whether PostgreSQL runs here.
Starting is orchestrated by `PgManager.start`: check the data directory,
`Postmaster.prepare_to_start`, write the settings, `Postmaster.launch`.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from safehold.pg import conf
from safehold.pg.errors import PgError, PortInUse, StartFailed
from safehold.pg.runas import chown_tree, make_dir, read_tail
from safehold.pg.tools import DIR_MODE, LOG_TAIL_LINES, ToolRunner, stderr_tail

log = logging.getLogger(__name__)

STOP_MODES = ("smart", "fast", "immediate")
_HAVE_PROC = Path("/proc/self/stat").exists()


@dataclass(frozen=True)
class PgStatus:
    running: bool
    pid: int | None
    port: int | None
    data_dir: Path


class Postmaster:
    """The postmaster of one cluster: its pid file, pg_ctl start / stop / reload, a crash.

    Starting is two steps so that the manager can write the configuration in
    between: `prepare_to_start`, then `launch`.
    """

    def __init__(self, tools: ToolRunner) -> None:
        self._tools = tools

    def pid_file(self) -> conf.PidFile | None:
        """postmaster.pid as PostgreSQL wrote it, or None when there is none."""
        return conf.parse_pid_file(read_tail(self._tools.path("postmaster.pid")))

    def alive_pid(self) -> int | None:
        """The postmaster's pid when one is running on this data directory."""
        pid_file = self.pid_file()
        if pid_file is None:
            return None
        return pid_file.pid if _is_postmaster(pid_file.pid, self._tools.data_dir) else None

    def status(self) -> PgStatus:
        pid_file = self.pid_file()
        if pid_file is None or not _is_postmaster(pid_file.pid, self._tools.data_dir):
            return PgStatus(running=False, pid=None, port=None, data_dir=self._tools.data_dir)
        return PgStatus(running=True, pid=pid_file.pid, port=pid_file.port, data_dir=self._tools.data_dir)

    def check_port_free(self) -> None:
        """PortInUse unless every listen address's port can be bound."""
        for host in self._tools.spec.listen.split(","):
            host = host.strip()
            if host and port_in_use(host, self._tools.spec.port):
                raise PortInUse(host, self._tools.spec.port)

    def prepare_to_start(self) -> None:
        """Before writing the settings and launching: the port is free, the service user
        owns the data directory and its log directory, and no stale pid file is left."""
        self.check_port_free()
        user = self._tools.service_user
        if user is not None:
            st = self._tools.data_dir.stat()
            if (st.st_uid, st.st_gid) != (user.uid, user.gid):
                n = chown_tree(self._tools.data_dir, user)
                log.warning("gave %d entries of %s to %s", n, self._tools.data_dir, user.name)
        make_dir(self._tools.data_dir, mode=DIR_MODE, owner=user)
        make_dir(self._tools.path(conf.LOG_DIR), mode=DIR_MODE, owner=user)
        pid_file = self.pid_file()
        if pid_file is not None and not _maybe_postgres(pid_file.pid):
            # Its postmaster is gone, or is a zombie nobody reaps (PostgreSQL
            # would take that for a live postmaster and refuse to start), or the
            # pid now belongs to another program. A live postgres process keeps
            # the lock: PostgreSQL itself decides then.
            log.info("removing stale postmaster.pid (pid %d) in %s", pid_file.pid, self._tools.data_dir)
            self._tools.path("postmaster.pid").unlink(missing_ok=True)

    def launch(self, *, timeout: float = 30) -> None:
        """`pg_ctl start` and wait: raises PortInUse or StartFailed with the server log's tail.

        The postmaster runs in its own session, so it outlives this process.
        """
        log_dir = self._tools.path(conf.LOG_DIR)
        startup_log = log_dir / conf.STARTUP_LOG
        offsets = _sizes(log_dir)
        argv = [
            str(self._tools.binaries.tool("pg_ctl")), "start",
            "-D", str(self._tools.data_dir),
            "-l", str(startup_log),
            "-w", "-t", str(max(1, math.ceil(timeout))),
            "-s",
        ]  # fmt: skip
        try:
            proc = self._tools.run(argv, timeout=timeout + 30, new_session=True)
            failure = stderr_tail(proc) if proc.returncode != 0 else None
        except subprocess.TimeoutExpired:
            failure = "pg_ctl did not return"
        if failure is not None:
            tail = self._log_tail(log_dir, offsets)
            if "Address already in use" in tail:
                raise PortInUse(self._tools.spec.listen, self._tools.spec.port)
            pid = self.alive_pid()
            still = f" within {timeout:g}s (postmaster {pid} is still starting)" if pid else ""
            raise StartFailed(
                f"PostgreSQL did not start in {self._tools.data_dir}{still}: "
                f"{failure}\n--- server log ---\n{tail}",
                hint="fix what the server log says, then start again",
            )
        log.info(
            "started PostgreSQL %d on %s:%d (%s)",
            self._tools.binaries.major,
            self._tools.spec.listen,
            self._tools.spec.port,
            self._tools.data_dir,
        )

    def _log_tail(self, log_dir: Path, offsets: dict[str, int]) -> str:
        parts: list[str] = []
        startup = conf.tail_lines(
            read_tail(log_dir / conf.STARTUP_LOG, start=offsets.get(conf.STARTUP_LOG, 0)),
            LOG_TAIL_LINES,
        )
        if startup:
            parts += [f"[{conf.STARTUP_LOG}]", *startup]
        newest = _newest_log(log_dir)
        if newest is not None:
            lines = conf.tail_lines(
                read_tail(newest, start=offsets.get(newest.name, 0)), LOG_TAIL_LINES
            )
            if lines:
                parts += [f"[{newest.name}]", *lines]
        return "\n".join(parts) if parts else "(the server wrote no log)"

    def stop(self, *, mode: str = "fast", timeout: float = 30) -> bool:
        """Stop the server and wait for it; False if it was not running."""
        if mode not in STOP_MODES:
            raise PgError(f"unknown stop mode {mode!r} (use one of {', '.join(STOP_MODES)})")
        if self.alive_pid() is None:
            return False
        argv = [
            str(self._tools.binaries.tool("pg_ctl")), "stop",
            "-D", str(self._tools.data_dir),
            "-m", mode,
            "-w", "-t", str(max(1, math.ceil(timeout))),
            "-s",
        ]  # fmt: skip
        try:
            proc = self._tools.run(argv, timeout=timeout + 30)
            failure = stderr_tail(proc) if proc.returncode != 0 else None
        except subprocess.TimeoutExpired:
            failure = "pg_ctl did not return"
        if failure is not None and self.alive_pid() is not None:
            raise PgError(
                f"PostgreSQL in {self._tools.data_dir} did not stop ({mode}) within {timeout:g}s: "
                f"{failure}",
                hint="try mode 'immediate'",
            )
        log.info("stopped PostgreSQL (%s) in %s", mode, self._tools.data_dir)
        return True

    def kill(self) -> None:
        """SIGKILL the postmaster and its children, as a crash would.

        The data is left in crash state (the next start runs recovery). The
        children are killed too (each runs in its own session, so a process
        group kill would miss them): left alone they would linger until they
        notice their parent's death, and a quick restart would find the old
        shared memory still in use.
        """
        pid = self.alive_pid()
        if pid is None:
            return
        children = _children(pid)
        for victim in [pid, *children]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while any(pid_alive(p) for p in [pid, *children]):
            if time.monotonic() > deadline:
                raise PgError(f"PostgreSQL processes of {self._tools.data_dir} survived SIGKILL")
            time.sleep(0.05)
        log.warning("killed PostgreSQL postmaster %d of %s", pid, self._tools.data_dir)

    def reload(self) -> None:
        """Make the running server re-read its configuration and pg_hba.conf."""
        if self.alive_pid() is None:
            raise PgError(f"PostgreSQL in {self._tools.data_dir} is not running; nothing to reload")
        self._tools.run_tool("pg_ctl", ["reload", "-D", str(self._tools.data_dir), "-s"], timeout=60)

    def wait_ready(self, timeout: float = 30) -> None:
        """Poll pg_isready until the server accepts connections, or raise PgError."""
        host = conf.connect_host(self._tools.spec.listen)
        argv = [
            str(self._tools.binaries.tool("pg_isready")),
            "-h", host, "-p", str(self._tools.spec.port),
            "-U", self._tools.spec.superuser, "-d", "postgres",
            "-t", "2",
        ]  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            proc = self._tools.run(argv, timeout=15)
            if proc.returncode == 0:
                return
            if time.monotonic() >= deadline:
                said = (proc.stdout + proc.stderr).decode(errors="replace").strip()
                raise PgError(
                    f"PostgreSQL on {host}:{self._tools.spec.port} is not ready after {timeout:g}s: {said}"
                )
            time.sleep(0.2)

    def conninfo(self, *, user: str, dbname: str = "postgres") -> dict[str, str]:
        """Connection parameters (psycopg keywords) for a TLS verify-full connection
        from this process (the CA path is the one in the spec)."""
        root = self._tools.spec.tls_ca or self._tools.spec.tls_cert  # a self-signed cert is its own root
        if root is None:
            raise PgError("no TLS CA or certificate configured to verify the server with")
        return {
            "host": conf.connect_host(self._tools.spec.listen),
            "port": str(self._tools.spec.port),
            "dbname": dbname,
            "user": user,
            "sslmode": "verify-full",
            "sslrootcert": str(root),
        }

    def tool_conninfo(self, *, user: str, dbname: str = "postgres") -> str:
        """A conninfo string for tools run through `run_tool`, i.e. as the service user.

        It verifies the server against the CA copy inside PGDATA, which the
        service user can read (the spec's path may sit in a directory it cannot).
        """
        params = self.conninfo(user=user, dbname=dbname)
        params["sslrootcert"] = str(self._tools.tool_sslrootcert())
        return conf.render_conninfo(params)


def port_in_use(host: str, port: int) -> bool:
    """Whether binding `host`:`port` the way PostgreSQL does would fail with EADDRINUSE."""
    if host == "*":
        candidates = [(socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")]  # noqa: S104
    else:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except socket.gaierror:
            return False  # PostgreSQL will say what is wrong with the name
        candidates = [(info[0], str(info[4][0])) for info in infos]
    for family, address in candidates:
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            continue  # e.g. no IPv6
        with sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind((address, port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return True
    return False


def _is_postmaster(pid: int, data_dir: Path) -> bool:
    """Whether `pid` is a live (not zombie) PostgreSQL process working in `data_dir`."""
    if not pid_alive(pid):
        return False
    if not _HAVE_PROC:
        return True  # no procfs: the signal probe must do
    info = _proc_stat(pid)
    if info is None or info[0] != "postgres":
        return False  # the pid was reused by something else
    try:
        return os.path.samefile(Path("/proc") / str(pid) / "cwd", data_dir)
    except PermissionError:
        return True  # another user's process: its name must do
    except OSError:
        return False


def _proc_stat(pid: int) -> tuple[str, str, int] | None:
    """(comm, state, ppid) of a process from /proc, or None if it is gone."""
    try:
        line = (Path("/proc") / str(pid) / "stat").read_text()
    except OSError:
        return None
    # "pid (comm) state ppid ..." — comm may hold spaces or parentheses
    comm = line[line.find("(") + 1 : line.rfind(")")]
    fields = line[line.rfind(")") + 2 :].split()
    return comm, fields[0], int(fields[1])


def pid_alive(pid: int | None) -> bool:
    """Whether process ``pid`` runs (a zombie, dead but not yet reaped by its parent, does not)."""
    if not pid:
        return False
    if not _HAVE_PROC:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    info = _proc_stat(pid)
    return info is not None and info[1] not in ("Z", "X")


def _maybe_postgres(pid: int) -> bool:
    """Whether `pid` is live and might be a PostgreSQL process (of any cluster)."""
    if not pid_alive(pid):
        return False
    if not _HAVE_PROC:
        return True
    info = _proc_stat(pid)
    return info is not None and info[0].startswith(("postgres", "postmaster"))


def _children(pid: int) -> list[int]:
    """Live postgres processes whose parent is `pid` (empty without /proc)."""
    if not _HAVE_PROC:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            info = _proc_stat(int(entry))
            if info is not None and info[2] == pid and info[0] == "postgres":
                found.append(int(entry))
    return found


def _sizes(log_dir: Path) -> dict[str, int]:
    try:
        return {e.name: e.stat(follow_symlinks=False).st_size for e in os.scandir(log_dir)}
    except OSError:
        return {}


def _newest_log(log_dir: Path) -> Path | None:
    try:
        files = [
            e
            for e in os.scandir(log_dir)
            if e.name != conf.STARTUP_LOG and e.is_file(follow_symlinks=False)
        ]
    except OSError:
        return None
    if not files:
        return None
    return Path(max(files, key=lambda e: e.stat().st_mtime).path)
