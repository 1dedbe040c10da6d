"""The ASGI application factory: one app per server process, built from its settings."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from safehold import __version__
from safehold.config import Settings
from safehold.crypto.keyfile import MasterKey
from safehold.domain import AuditAction
from safehold.errors import SafeholdError
from safehold.services import auth as auth_service
from safehold.services.runtime import Runtime, open_runtime, system_event
from safehold.web import errors
from safehold.web.api import audit, auth, system, users, vault

log = logging.getLogger(__name__)
API = "/api/v1"

SECURITY_HEADERS = {
    "Strict-Transport-Security": "max-age=31536000; includeSubDomains",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "Cross-Origin-Opener-Policy": "same-origin",
}


async def _housekeeping(rt: Runtime, every: float = 600) -> None:
    """Periodic clean-up: expired sessions and tokens.  Errors are logged, never fatal."""
    while True:
        await asyncio.sleep(every)
        try:
            purged = await auth_service.purge_expired_tokens(rt)
            if purged:
                log.info("purged %d expired session(s)/token(s)", purged)
        except SafeholdError as exc:
            log.warning("housekeeping skipped: %s", exc.message)


def create_app(settings: Settings, master: MasterKey | None = None, *, runtime: Runtime | None = None) -> FastAPI:
    """Build the app.  The runtime (database, keys) is opened in the app's own event loop at start-up;
    the master key is needed only then."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nonlocal master
        rt = runtime
        if rt is None:
            assert master is not None
            rt = await open_runtime(settings, master)
        master = None  # the key is not kept once the data keys are unwrapped
        rt.start_background()
        app.state.runtime = rt
        await rt.record_audit(system_event(AuditAction.SERVER_STARTED, detail={"version": __version__}))
        housekeeping = asyncio.get_running_loop().create_task(_housekeeping(rt), name="housekeeping")
        try:
            yield
        finally:
            housekeeping.cancel()
            try:
                await rt.record_audit(system_event(AuditAction.SERVER_STOPPED))
            except Exception:  # noqa: BLE001 - the database may already be gone
                log.warning("could not audit the server stop")
            await rt.close()

    app = FastAPI(
        title="Safehold API", version=__version__, lifespan=lifespan,
        openapi_url=f"{API}/openapi.json", docs_url=None, redoc_url=None,
        description="Self-hosted vault for privileged passwords. Authenticate with "
                    "`Authorization: Bearer <token>` (a session token from `/auth/login` or a personal API token).",
    )
    errors.install(app)
    for module in (system, auth, users, vault, audit):
        app.include_router(module.router, prefix=API)

    @app.middleware("http")
    async def observe(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        start = time.perf_counter()
        try:
            response = await call_next(request)
        except Exception as exc:  # noqa: BLE001 - answered here so it gets the headers and is counted
            response = errors.internal_error(request, exc)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        rt: Runtime | None = getattr(request.app.state, "runtime", None)
        if rt is not None:
            rt.metrics.requests.labels(request.method, path, str(response.status_code)).inc()
            rt.metrics.latency.labels(request.method, path).observe(time.perf_counter() - start)
        for k, v in SECURITY_HEADERS.items():
            response.headers.setdefault(k, v)
        if request.url.path.startswith(API):
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        rt: Runtime = request.app.state.runtime
        pool = rt.engine.sync_engine.pool
        for gauge, attr in ((rt.metrics.pool_size, "size"), (rt.metrics.pool_checked_out, "checkedout"),
                            (rt.metrics.pool_overflow, "overflow")):
            fn = getattr(pool, attr, None)
            if callable(fn):
                gauge.set(fn())
        return Response(generate_latest(rt.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    async def root(request: Request) -> JSONResponse:
        rt: Runtime = request.app.state.runtime
        return JSONResponse({"service": "Safehold", "version": __version__, "server": rt.identity.name,
                             "role": rt.identity.role.value, "api": f"{API}/openapi.json",
                             "health": f"{API}/health"})

    return app
