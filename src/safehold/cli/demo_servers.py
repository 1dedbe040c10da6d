"""The servers of ``safehold demo`` as processes: each server's app (a ``safehold serve`` the demo is the
parent of) and its bundled database, how a process ended in words, and what still runs in a folder."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from safehold.cli.demo_ops import ServerEntry, command
from safehold.pg.process import pid_alive

if TYPE_CHECKING:
    from safehold.pg import PgManager


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def how_it_ended(returncode: int) -> str:
    """A process's end, in words."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return "exited normally" if returncode == 0 else f"exited with status {returncode}"


def stop_line(name: str, app: str | None, database: str | None, log: Path) -> str:
    """The one line the demo prints when a server's app or database stopped without being asked to."""
    parts = [f"its app {app}" if app else "", f"its database {database}" if database else ""]
    return (f"{name} stopped: {' and '.join(p for p in parts if p)}; the other servers keep running "
            f"(log: {log}; start it again: {command()} demo start {name})")


@dataclass
class Node:
    """One server of the demo and the processes the demo knows of it."""

    name: str
    data_dir: Path
    port: int
    log: Path
    database_of: str | None  # whose bundled database it works on (see ServerEntry)
    proc: subprocess.Popen[bytes] | None = None
    db_pid: int | None = None
    _pg: PgManager | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def role(self) -> str:
        from safehold.config import load_settings

        with contextlib.suppress(Exception):
            return str(load_settings(self.data_dir).server.role)
        return self.name

    @property
    def pg(self) -> PgManager | None:
        """Its own bundled database, once it has been set up."""
        if self._pg is None and self.database_of == self.name and (self.data_dir / "safehold.toml").exists():
            from safehold.config import load_settings
            from safehold.runtime import database

            self._pg = database.manager(load_settings(self.data_dir))
        return self._pg

    def database_pid(self) -> int | None:
        with contextlib.suppress(OSError):
            return self.pg.status().pid if self.pg is not None else None
        return None

    def app_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def entry(self) -> ServerEntry:
        app_pid = self.proc.pid if self.proc is not None and self.app_running() else None
        return ServerEntry(name=self.name, role=self.role, url=self.url, data_dir=str(self.data_dir),
                           log=str(self.log), app_pid=app_pid, database_pid=self.db_pid, database_of=self.database_of)

    def spawn(self) -> int:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "safehold", "serve", "--data-dir", str(self.data_dir)],
                                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        return self.proc.pid

    def stop_app(self) -> None:
        """Ask its app to stop (SIGTERM): 'serve' stops its workers, and the database it started, itself."""
        if self.proc is not None and self.app_running():
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)

    def kill_app(self) -> None:
        """SIGKILL its app and the workers it forked (its own process group), as a crash would."""
        if self.proc is None or not self.app_running():
            return
        with contextlib.suppress(ProcessLookupError):
            if os.getpgid(self.proc.pid) == self.proc.pid:
                os.killpg(self.proc.pid, signal.SIGKILL)
            else:
                self.proc.kill()


def processes_in(base: Path) -> list[str]:
    """Servers and databases still running on the demo's folder (their command line names it)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")) if os.path.isdir("/proc") else []:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if f"{base}/" in cmd and ("postgres" in cmd or " serve " in cmd) and pid_alive(int(pid)):
            found.append(f"pid {pid}")
    return found
