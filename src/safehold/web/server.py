"""Run one server: HTTPS with uvicorn, in this process, until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from types import FrameType

import uvicorn

from safehold import logs, systemd
from safehold.config import Settings
from safehold.crypto.keyfile import MasterKey
from safehold.errors import ConfigError, DatabaseError
from safehold.ha.fencing import STARTUP
from safehold.runtime import open_runtime
from safehold.services.keys import check_key_file
from safehold.storage.db import (
    DB_ERRORS,
    SQLAlchemyError,
    app_target,
    check_reachable,
    driver_reason,
    make_engine,
)
from safehold.web.app import create_app

log = logging.getLogger(__name__)

#: how often 'serve' says it is still waiting for its database
WAIT_SAY_EVERY = 5.0


def apply_log_settings(settings: Settings) -> None:
    """The settings file's [log] section, and this server's name and role on every line (until each worker's
    runtime says them, as they change)."""
    logs.setup_from(os.environ, settings.log.format, settings.log.level)
    logs.identify(lambda: (settings.server.name, settings.server.role.value))


def check_port_free(host: str, port: int) -> None:
    from safehold.web.supervisor import bound_socket

    bound_socket(host, port).close()


# --- before 'serve' says it serves (and forks its workers) ------------------------------------------------

def database_where(settings: Settings) -> str:
    """Where this server's database is, for messages (never a password)."""
    return app_target(settings).where()


def database_hint(settings: Settings) -> str:
    """What to look at when this server's database does not answer: it depends on whose database it is."""
    db = settings.database
    if db.mode == "bundled":
        return (f"see PostgreSQL's log in {settings.pg_data_dir / 'log'}; "
                f"'safehold db status --data-dir {settings.data_dir}' tells whether it runs")
    if db.mode == "remote":
        return (f"this server uses another Safehold server's database ({db.host}:{db.port}, the primary's): start "
                "that server (or its database, 'safehold db start' there) and check that this host reaches it; "
                "database.connect_wait sets how long 'serve' waits for it")
    return ("check that the database (or the HA engine that runs it) is up, that this host reaches it and that "
            "database.url is right; database.connect_wait sets how long 'serve' waits for it")


def database_problem(settings: Settings) -> str | None:
    """Why this server's database does not answer one round trip now (None: it does)."""
    try:
        check_reachable(app_target(settings), timeout=settings.database.connect_timeout)
    except DatabaseError as exc:
        return exc.message
    except DB_ERRORS as exc:
        return driver_reason(exc)
    return None


def wait_for(probe: Callable[[], str | None], limit: float, say: Callable[[float, str], None], *,
             every: float = WAIT_SAY_EVERY, clock: Callable[[], float] = time.monotonic,
             sleep: Callable[[float], None] = time.sleep) -> str | None:
    """Call ``probe`` until it answers None or ``limit`` seconds have passed; ``say(elapsed, problem)`` at the
    first failure (``elapsed`` 0) and then every ``every`` seconds.  Returns the last problem when time ran
    out, else None."""
    start = clock()
    said_at: float | None = None
    while True:
        problem = probe()
        if problem is None:
            return None
        elapsed = clock() - start
        if elapsed >= limit:
            return problem
        if said_at is None or elapsed - said_at >= every:
            say(0.0 if said_at is None else elapsed, problem)
            said_at = elapsed
        sleep(min(1.0, limit - elapsed))


def wait_for_database(settings: Settings, say: Callable[[str], None]) -> None:
    """Wait (at most ``database.connect_wait`` seconds, saying so every few seconds) for a database that does
    not answer yet: another server's, or an engine's, may be starting at the same moment as this one.
    Raises DatabaseError, with a hint that fits whose database it is, when it still does not answer."""
    limit = settings.database.connect_wait
    where = database_where(settings)

    def progress(elapsed: float, problem: str) -> None:
        if not elapsed:
            say(f"the database at {where} does not answer yet ({problem}); waiting up to {limit:g} s for it")
        else:
            say(f"still waiting for the database at {where} ({elapsed:.0f} s of {limit:g} s): {problem}")

    problem = wait_for(lambda: database_problem(settings), limit, progress)
    if problem is not None:
        waited = f" within {limit:g} s" if limit else ""
        raise DatabaseError(f"the database at {where} did not answer{waited}: {problem}",
                            hint=database_hint(settings))


def check_database_key(settings: Settings, master: MasterKey) -> None:
    """The key file must be this database's (the runtime's own check, made once here so that 'serve' fails
    before it says it serves, rather than in each worker after)."""
    async def check() -> None:
        engine = make_engine(app_target(settings), pooled=False, connect_timeout=settings.database.connect_timeout)
        try:
            async with engine.connect() as conn:
                await check_key_file(conn, settings, master)  # says which key the database needs
        except SQLAlchemyError as exc:
            raise DatabaseError(f"cannot read the cluster's key check from the database at "
                                f"{database_where(settings)} ({driver_reason(exc)})",
                                hint=database_hint(settings)) from None
        finally:
            await engine.dispose()

    asyncio.run(check())



async def serve(settings: Settings, master: MasterKey, sock: socket.socket | None = None, worker: int = 0) -> None:
    """Open the runtime first (fail fast on a wrong key or an unreachable database), then serve (on ``sock``
    when a supervisor bound it for its workers; ``worker`` is this process's index among them)."""
    if sock is not None:
        settings = settings.model_copy(update={"database": settings.database.model_copy(
            update={"pool_size": worker_pool_size(settings)})})
    rt = await open_runtime(settings, master, fencing=STARTUP)
    logs.identify(lambda: (rt.identity.name, rt.identity.role.value))  # a promotion changes the role
    app = create_app(settings, runtime=rt, worker=worker)
    config = uvicorn.Config(
        app, host=settings.http.listen, port=settings.http.port, log_level="warning", access_log=False,
        log_config=None,  # uvicorn's lines go through our handler (safehold.logs), not handlers of its own
        ssl_certfile=str(settings.path(settings.http.tls_cert)), ssl_keyfile=str(settings.path(settings.http.tls_key)),
        server_header=False, proxy_headers=False, timeout_graceful_shutdown=10, lifespan="on",
    )
    server = NotifyingServer(config, f"serving on https://{settings.http.listen}:{settings.http.port}")
    await server.serve(sockets=[sock] if sock is not None else None)
    if not server.started:
        raise ConfigError(f"the HTTPS server could not start on {settings.http.listen}:{settings.http.port}")


class NotifyingServer(uvicorn.Server):
    """uvicorn's server, telling the service manager (systemd, or the supervisor of the workers: see
    safehold.systemd) once it serves, and when a signal asks it to stop."""

    def __init__(self, config: uvicorn.Config, label: str) -> None:
        super().__init__(config)
        self.label = label

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            systemd.notify("READY=1", f"STATUS={self.label}")

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.should_exit:
            systemd.notify("STOPPING=1", "STATUS=stopping")
        super().handle_exit(sig, frame)


def worker_pool_size(settings: Settings) -> int:
    """Each worker's share of ``database.pool_size`` (the database's connections are shared by the workers)."""
    return max(4, -(-settings.database.pool_size // settings.http.processes))


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        return None
    return uvloop.new_event_loop


def run(settings: Settings, master: MasterKey, sock: socket.socket | None = None, worker: int = 0) -> None:
    """Serve until SIGTERM/SIGINT.  uvicorn re-raises the signal after its graceful shutdown;
    our handlers swallow it so the caller can still stop the bundled database."""
    received: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, _frame: received.append(signum))
                for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(serve(settings, master, sock, worker))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:
        log.info("stopped by signal %s", received[0])


def run_server(settings: Settings, master: MasterKey) -> None:
    """This server in one process, or in ``http.workers`` processes under a supervisor."""
    from safehold.runtime import local_state
    from safehold.web.supervisor import Supervisor

    local_state.reset(settings.data_dir)  # what a read-only server keeps for its workers lasts one run
    if settings.http.processes == 1:
        run(settings, master)
    else:
        Supervisor(settings, master, run, settings.http.processes).run()
