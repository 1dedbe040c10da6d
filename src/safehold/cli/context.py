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
from safehold.runtime import Runtime, database, open_runtime

T = TypeVar("T")
PID_FILE = "run/safehold.pid"


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
