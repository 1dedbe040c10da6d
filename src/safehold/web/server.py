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
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            raise ConfigError(f"HTTPS port {port} on {host} is already in use",
                              hint="stop what uses it, or set http.port in safehold.toml") from None


async def serve(settings: Settings, master: MasterKey) -> None:
    """Open the runtime first (fail fast on a wrong key or an unreachable database), then serve."""
    rt = await open_runtime(settings, master, fencing=STARTUP)
    app = create_app(settings, runtime=rt)
    config = uvicorn.Config(
        app, host=settings.http.listen, port=settings.http.port, log_level="warning", access_log=False,
        ssl_certfile=str(settings.path(settings.http.tls_cert)), ssl_keyfile=str(settings.path(settings.http.tls_key)),
        server_header=False, proxy_headers=False, timeout_graceful_shutdown=10, lifespan="on",
    )
    server = uvicorn.Server(config)
    await server.serve()
    if not server.started:
        raise ConfigError(f"the HTTPS server could not start on {settings.http.listen}:{settings.http.port}")


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        return None
    return uvloop.new_event_loop


def run(settings: Settings, master: MasterKey) -> None:
    """Serve until SIGTERM/SIGINT.  uvicorn re-raises the signal after its graceful shutdown;
    our handlers swallow it so the caller can still stop the bundled database."""
    received: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, _frame: received.append(signum))
                for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(serve(settings, master))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:
        log.info("stopped by signal %s", received[0])
