"""What CLI commands share: loading a server's settings and key, and a database-backed runtime."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

from safehold.config import Settings, load_settings
from safehold.crypto.keyfile import MasterKey, load_key_file
from safehold.errors import SafeholdError
from safehold.ha.fencing import STARTUP
from safehold.pg.process import pid_alive
from safehold.runtime import Runtime, database, open_runtime

T = TypeVar("T")
PID_FILE = "run/safehold.pid"
#: written by a 'serve' that runs the bundled database as its own (it started it, or took it over from a
#: 'serve' that was killed): its pid.  A database running without it was started on purpose ('safehold db
#: start', 'safehold ha join'…) and outlives the 'serve' that finds it.
DB_OWNER_FILE = "run/database.owner"


def cli_actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def load(data_dir: Path) -> tuple[Settings, MasterKey]:
    settings = load_settings(data_dir)
    return settings, load_key_file(settings.key_file)


def pid_path(settings: Settings) -> Path:
    return settings.data_dir / PID_FILE


def server_pid(settings: Settings) -> int | None:
    """The pid of a 'safehold serve' running on this data directory, if any."""
    try:
        pid = int(pid_path(settings).read_text().strip())
        os.kill(pid, 0)
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return None
    except PermissionError:
        return pid
    return pid


def database_owner(settings: Settings) -> int | None:
    """The pid the database's owner mark names (see DB_OWNER_FILE), None without a readable one."""
    try:
        return int((settings.data_dir / DB_OWNER_FILE).read_text().strip())
    except (OSError, ValueError):
        return None


def serve_stops_database(started: bool, owner: int | None, owner_alive: bool) -> bool:
    """Whether a starting 'serve' stops the bundled database when it stops (pure): it started it; or it found
    it running with the mark of a 'serve' that is gone (killed), which it takes over.  A database running
    without the mark was started on purpose and is left running."""
    return started or (owner is not None and not owner_alive)


def claim_database(settings: Settings, started: bool) -> bool:
    """Decide whether this 'serve' runs the bundled database as its own, and mark it so (its pid) if it does."""
    owner = database_owner(settings)
    mine = serve_stops_database(started, owner, owner is not None and pid_alive(owner))
    if mine:
        path = settings.data_dir / DB_OWNER_FILE
        path.parent.mkdir(exist_ok=True)
        path.write_text(f"{os.getpid()}\n")
    return mine


def release_database(settings: Settings) -> None:
    """The bundled database is no longer a 'serve's (it was stopped, or an operator started it on purpose)."""
    (settings.data_dir / DB_OWNER_FILE).unlink(missing_ok=True)


def refuse_if_serving(settings: Settings, what: str) -> None:
    pid = server_pid(settings)
    if pid is not None:
        raise SafeholdError(f"the server is running (pid {pid}); stop it before {what}")


@contextlib.contextmanager
def database_for(settings: Settings) -> Iterator[object]:
    with database.database_running(settings) as pg:
        yield pg


def with_runtime(data_dir: Path, fn: Callable[[Runtime], Awaitable[T]]) -> T:
    """Run ``fn`` with a runtime over this server's database (started for the command if needed)."""
    settings, master = load(data_dir)
    with database.database_running(settings):
        async def main() -> T:
            async with runtime(settings, master) as rt:
                return await fn(rt)

        return asyncio.run(main())


@contextlib.asynccontextmanager
async def runtime(settings: Settings, master: MasterKey) -> AsyncIterator[Runtime]:
    rt = await open_runtime(settings, master, register=False, fencing=STARTUP)
    try:
        yield rt
    finally:
        await rt.close()


def not_bundled(settings: Settings, where: str) -> str:
    """What this server's database is when it is not the bundled one (for 'safehold db …')."""
    whose = ("another Safehold server's (the primary's)" if settings.database.mode == "remote"
             else "an external PostgreSQL (database.url)")
    return f"this server's database is not bundled: it uses {whose} at {where} (database.mode = {settings.database.mode})"


def db_status_report(settings: Settings, *, running: bool, pid: int | None, where: str,
                     problem: str | None = None) -> dict[str, object]:
    """What 'safehold db status --json' prints (pure; the keys are stable): ``running`` is whether the bundled
    PostgreSQL runs, or for a database that is not bundled whether it answers (``problem``: why not)."""
    db = settings.database
    bundled = db.mode == "bundled"
    return {
        "mode": db.mode,
        "bundled": bundled,
        "running": running,
        "pid": pid if bundled else None,
        "where": where,
        "port": db.port if db.mode != "external" else None,
        "data_dir": str(settings.pg_data_dir) if bundled else None,
        "problem": None if running else problem,
    }


def init_port_problems(listen: str, port: int, db_port: int | None, in_use: Callable[[str, int], bool],
                       db_host: str = "127.0.0.1") -> list[str]:
    """Why the ports 'safehold init' would write cannot be used (pure but for ``in_use``): each taken one, with
    the option that chooses another.  ``db_port`` None: no bundled database, or one chosen free by init."""
    problems = []
    if db_port is not None and db_port == port:
        problems.append(f"the HTTPS port and the database port are both {port}: pass a different --db-port "
                        "(or leave it out to get a free one)")
    if in_use(listen, port):
        problems.append(f"the HTTPS port {port} on {listen} is already in use: pass --port with a free port")
    if db_port is not None and db_port != port and in_use(db_host, db_port):
        problems.append(f"the database port {db_port} on {db_host} is already in use: pass --db-port with a free "
                        "port (or leave it out to get a free one)")
    return problems
