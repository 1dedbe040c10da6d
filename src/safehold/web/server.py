"""Run one server: HTTPS with uvicorn, in this process, until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Callable

import uvicorn

from safehold.config import Settings
from safehold.crypto.keyfile import MasterKey
from safehold.errors import ConfigError
from safehold.ha.fencing import STARTUP
from safehold.runtime import open_runtime
from safehold.web.app import create_app

log = logging.getLogger(__name__)


def check_port_free(host: str, port: int) -> None:
    from safehold.web.supervisor import bound_socket

    bound_socket(host, port).close()


async def serve(settings: Settings, master: MasterKey, sock: socket.socket | None = None, worker: int = 0) -> None:
    """Open the runtime first (fail fast on a wrong key or an unreachable database), then serve (on ``sock``
    when a supervisor bound it for its workers; ``worker`` is this process's index among them)."""
    if sock is not None:
        settings = settings.model_copy(update={"database": settings.database.model_copy(
            update={"pool_size": worker_pool_size(settings)})})
    rt = await open_runtime(settings, master, fencing=STARTUP)
    app = create_app(settings, runtime=rt, worker=worker)
    config = uvicorn.Config(
        app, host=settings.http.listen, port=settings.http.port, log_level="warning", access_log=False,
        ssl_certfile=str(settings.path(settings.http.tls_cert)), ssl_keyfile=str(settings.path(settings.http.tls_key)),
        server_header=False, proxy_headers=False, timeout_graceful_shutdown=10, lifespan="on",
    )
    server = uvicorn.Server(config)
    await server.serve(sockets=[sock] if sock is not None else None)
    if not server.started:
        raise ConfigError(f"the HTTPS server could not start on {settings.http.listen}:{settings.http.port}")


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
