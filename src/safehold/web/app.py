"""The ASGI application factory: one app per server process, built from its settings."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from safehold import __version__, logs
from safehold.config import Settings
from safehold.crypto.keyfile import MasterKey
from safehold.domain import AuditAction
from safehold.errors import SafeholdError
from safehold.ha.agent import HaAgent
from safehold.ha.ca import keep_cluster_ca
from safehold.ha.fencing import STARTUP
from safehold.runtime import FencedMode, Runtime, open_runtime, system_event
from safehold.services import auth as auth_service
from safehold.services.backup import scheduled_backup
from safehold.services.cluster_settings import follow_failover, start_alerts
from safehold.web import errors, metrics_view, ui
from safehold.web.api import alerts, audit, auth, ha, ha_checks, ha_peer, system, users, vault
from safehold.web.api.health import router as health_router
from safehold.web.api.health import vault_router
from safehold.web.api.vault_kv import router as vault_kv_router
from safehold.web.limits import BodyLimit
from safehold.web.ui.core import LoginRequired, login_redirect

log = logging.getLogger(__name__)
access_log = logging.getLogger("safehold.web.access")
API = "/api/v1"
STATIC = Path(__file__).resolve().parent / "static"

SECURITY_HEADERS = {
    "Strict-Transport-Security": "max-age=31536000; includeSubDomains",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # same-origin, not no-referrer: under no-referrer a browser sends "Origin: null" with our own forms,
    # and the sign-in checks the Origin (login CSRF); other sites still get no referrer
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "Cross-Origin-Opener-Policy": "same-origin",
}


class Observe:
    """Every HTTP response: security headers, metrics, a 500 for a bug; on a read-only server, the
    redirect to the active primary or secondary, or the read-only emergency-mode headers.
    (A plain ASGI middleware: the hot path pays no extra task per request.)"""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The request id: the client's X-Request-Id when sane, else a new one; on every response, and on
        every log line written while answering (a context variable, safehold.logs)."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = logs.request_id_for(Headers(scope=scope).get(logs.REQUEST_ID_HEADER))
        token = logs.request_id.set(rid)
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)[logs.REQUEST_ID_HEADER] = rid
            await send(message)

        try:
            await self._observe(scope, receive, send_with_id)
        finally:
            access_log.debug("%s %s -> %d", scope["method"], scope["path"], status)
            logs.request_id.reset(token)

    async def _observe(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        state = scope["app"].state
        rt: Runtime | None = getattr(state, "runtime", None)
        agent: HaAgent | None = getattr(state, "agent", None)
        path: str = scope["path"]
        if rt is not None and agent is not None and rt.readonly:
            await agent.follow_takeover()  # another worker promoted this server: never answer as read-only
        elif rt is not None and agent is not None and rt.fence is None:
            await agent.follow_demotion()  # the server was made read-only: never answer as a writer
        fence = rt.fence if rt is not None else None
        if (fence is not None and scope["method"] not in ("GET", "HEAD", "OPTIONS") and not _served_locally(path)
                and not _reads_by_post(path)):
            # superseded by a newer primary: not a single write, and no redirect that could hide it
            body = {"error": {"code": FencedMode.code, "message": fence.message(),
                              "hint": f"make the change on {fence.acting_primary_url}"}}
            await JSONResponse(body, status_code=503, headers={
                **SECURITY_HEADERS, "X-Safehold-Mode": "fenced", "X-Safehold-Acting-Primary": fence.acting_primary_url,
                "Cache-Control": "no-store"})(scope, receive, send)
            return
        # (only a read-only or fenced server sends users elsewhere: a worker that has just taken over may still
        # hold its read-only redirect until its loops are replaced)
        if (agent is not None and rt is not None and (rt.readonly or fence is not None) and agent.redirect is not None
                and not _served_locally(path)):
            target = agent.redirect.url.rstrip("/") + path
            if scope.get("query_string"):
                target += "?" + scope["query_string"].decode("latin-1")
            await RedirectResponse(target, status_code=307, headers=SECURITY_HEADERS)(scope, receive, send)
            return
        status = 500
        started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started, status = True, message["status"]
                headers = MutableHeaders(scope=message)
                for k, v in SECURITY_HEADERS.items():
                    if k not in headers:
                        headers[k] = v
                if path.startswith(API) and "cache-control" not in headers:
                    headers["Cache-Control"] = "no-store"
                if rt is not None and rt.readonly and agent is not None:
                    age = agent.data_age_seconds
                    headers["X-Safehold-Mode"] = rt.mode
                    if rt.fence is None:
                        headers["X-Safehold-Data-Age"] = "unknown" if age is None else f"{age:.0f}"
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception as exc:  # noqa: BLE001 - answered here so it gets the headers and is counted
            if started:
                raise
            await errors.internal_error(Request(scope), exc)(scope, receive, send_with_headers)
        finally:
            if rt is not None:
                route = getattr(scope.get("route"), "path", "unmatched")
                rt.metrics.requests.labels(scope["method"], route, str(status)).inc()
                rt.metrics.latency.labels(scope["method"], route).observe(time.perf_counter() - start)


def _reads_by_post(path: str) -> bool:
    """POSTs that change no shared data (signing in and out, revealing a password): a fenced server still
    answers them, in its read-only way (local sessions, audit to its spool)."""
    return path in (f"{API}/auth/login", f"{API}/auth/logout", "/ui/login", "/ui/login/totp", "/ui/logout") or (
        path.startswith("/ui/vault/accounts/") and path.endswith("/reveal"))


def _served_locally(path: str) -> bool:
    """What a read-only server answers itself even while it redirects users: its own health, metrics
    and HA view (the others use them to watch it)."""
    return path in (f"{API}/health", "/metrics", f"{API}/openapi.json") or path.startswith(f"{API}/ha/") or (
        path.startswith(f"{API}/health/") or path == "/v1/sys/health")  # the health checks: see web/api/health.py


async def _housekeeping(rt: Runtime, every: float = 600) -> None:
    """Periodic clean-up: expired sessions and tokens.  Errors are logged, never fatal."""
    while True:
        await asyncio.sleep(every)
        if rt.readonly:
            rt.local.purge(auth_service.now())
            continue
        try:
            purged = await auth_service.purge_expired_tokens(rt)
            if purged:
                log.info("purged %d expired session(s)/token(s)", purged)
        except SafeholdError as exc:
            log.warning("housekeeping skipped: %s", exc.message)


def create_app(settings: Settings, master: MasterKey | None = None, *, runtime: Runtime | None = None,
               worker: int = 0) -> FastAPI:
    """Build the app.  The runtime (database, keys) is opened in the app's own event loop at start-up;
    the master key is needed only then.  ``worker``: this process's index among the server's workers
    (what happens once per server happens in worker 0)."""
    first = worker == 0

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nonlocal master
        rt = runtime
        if rt is None:
            assert master is not None
            rt = await open_runtime(settings, master, fencing=STARTUP)
            try:
                await keep_cluster_ca(rt, master)
            except SafeholdError as exc:  # e.g. a writer whose lease no peer confirmed yet: next start
                log.warning("the cluster CA is not kept in the database yet: %s", exc.message)
        master = None  # the key is not kept once the data keys are unwrapped
        rt.start_background()
        app.state.runtime = rt
        agent = HaAgent(rt, backup=scheduled_backup, follow_failover=follow_failover, first_worker=first)
        app.state.agent = agent
        # the cluster's alert channels (from the database; safehold.toml's [alerts] imported once), followed
        alerting = await start_alerts(rt)
        app.state.alerts = agent.alerts = alerting.dispatcher
        agent.start()
        if first:
            try:
                await rt.record_audit(system_event(AuditAction.SERVER_STARTED, detail={"version": __version__}))
            except SafeholdError as exc:  # e.g. a writer whose lease no peer confirmed yet: it still serves reads
                log.warning("the start of this server is not audited: %s", exc.message)
        housekeeping = asyncio.get_running_loop().create_task(_housekeeping(rt), name="housekeeping") if first else None
        try:
            yield
        finally:
            if housekeeping is not None:
                housekeeping.cancel()
            await agent.stop()
            await alerting.stop()
            if first:
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
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.include_router(ui.router)
    app.add_exception_handler(LoginRequired, lambda request, exc: login_redirect(exc))  # type: ignore[arg-type]
    for module in (system, auth, users, vault, audit, ha, ha_peer, alerts, ha_checks):
        app.include_router(module.router, prefix=API)
    # health for load balancers: Patroni's convention under /api/v1/health/, Vault's at /v1/sys/health
    app.include_router(health_router, prefix=API)
    app.include_router(vault_router)
    app.include_router(vault_kv_router)  # Vault's KV version 2 read API, after its health (docs/VAULT-API.md)

    app.add_middleware(BodyLimit, default=settings.http.max_body_bytes, routes={f"{API}/import": vault.MAX_IMPORT})
    app.add_middleware(Observe)  # outside the body limit: its refusals get the headers and are counted

    app.include_router(metrics_view.router)  # /metrics

    @app.get("/", include_in_schema=False)
    async def root(request: Request) -> Response:
        if "text/html" in request.headers.get("accept", ""):
            return RedirectResponse("/ui/vault", status_code=303)  # a browser: the pages
        rt: Runtime = request.app.state.runtime
        return JSONResponse({"service": "Safehold", "version": __version__, "server": rt.identity.name,
                             "role": rt.identity.role.value, "api": f"{API}/openapi.json",
                             "health": f"{API}/health"})

    return app
