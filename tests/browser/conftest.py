"""Browser tests: Debian's headless Chromium (/usr/bin/chromium) driven by Playwright for Python.

Fixtures
  ``chromium``       (session) the launched Playwright ``Browser``
  ``network_guard``  (function) the :class:`NetworkGuard` of the test's page
  ``page``           (function) a fresh ``Page`` in a fresh context (1280x800) with the guard installed;
                     the test fails at teardown if the page tried any external request
Helper
  :func:`screenshot` (page, name) -> ``build/screenshots/<name>.png`` (full page)

We use the system Chromium: ``playwright install`` is never run. Without /usr/bin/chromium the tests
are skipped, unless the environment variable CI is set: CI must run them, so they fail there.
Every test in this directory gets the ``browser`` marker (select or skip them with ``-m``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    Playwright,
    Request,
    Route,
    WebSocketRoute,
    sync_playwright,
)

CHROMIUM = "/usr/bin/chromium"
HERE = Path(__file__).resolve().parent
# screenshots go to the build folder (a test run never changes tracked files); to refresh the README's pictures,
# run the browser tests with SAFEHOLD_SCREENSHOTS=docs/screenshots
SCREENSHOTS = HERE.parents[1] / os.environ.get("SAFEHOLD_SCREENSHOTS", "build/screenshots")
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]", "::1"})
# schemes that never leave the browser
LOCAL_SCHEMES = frozenset({"data", "blob", "about"})
# a page's CSP violations, reported from the page to NetworkGuard (an init script runs in every
# document before its own scripts, whatever its CSP)
CSP_BINDING = "__safeholdTestsCspViolation"
CSP_LISTENER = f"""document.addEventListener("securitypolicyviolation",
  (e) => window.{CSP_BINDING}(String(e.blockedURI), String(e.effectiveDirective)), true);"""
CHROMIUM_ARGS = [
    "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    # shared memory in /tmp: a container's /dev/shm (often 64 MB) crashes Chromium, and Debian's
    # launcher script's own check for that does not always work
    "--disable-dev-shm-usage",
]


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.resolve().parents:
            item.add_marker(pytest.mark.browser)


def is_local(url: str) -> bool:
    """A URL the pages may load: http(s)/ws(s) to this machine's loopback, or one that never leaves the
    browser (data:, blob:, about:)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in LOCAL_SCHEMES:
        return True
    if scheme not in ("http", "https", "ws", "wss"):
        return False
    return (parts.hostname or "").lower() in LOCAL_HOSTS


class NetworkGuard:
    """Aborts and records every request of a browser context that would leave 127.0.0.1/localhost.

    ``external``        the URLs (``METHOD url``) of the external requests attempted, in order
    ``take()``          returns ``external`` and clears it (for a test that provokes one on purpose)
    ``failed``          requests that failed (``METHOD url: reason``), the guard's own aborts included
    ``console_errors``  the pages' console errors (CSP violations show up here too)
    ``csp_violations``  every Content-Security-Policy violation (``directive blocked-uri``), reported by
                        the pages' ``securitypolicyviolation`` events
    ``csp_refusals``    the violations that refused an external URL: the page tried to reach outside
                        (its CSP stopped it before any request), so they fail the test as well
    """

    def __init__(self) -> None:
        self.external: list[str] = []
        self.csp_refusals: list[str] = []
        self.csp_violations: list[str] = []
        self.failed: list[str] = []
        self.console_errors: list[str] = []

    def install(self, context: BrowserContext) -> None:
        context.route("**/*", self._route)
        context.route_web_socket(re.compile(r".*"), self._route_web_socket)
        context.on("requestfailed", self._request_failed)
        context.on("console", self._console)
        context.expose_binding(CSP_BINDING, self._csp_violation)
        context.add_init_script(CSP_LISTENER)

    def take(self) -> list[str]:
        """The external attempts recorded so far (requests and CSP refusals); clears both lists."""
        taken = [*self.external, *self.csp_refusals]
        self.external.clear()
        self.csp_refusals.clear()
        return taken

    def attempts(self) -> list[str]:
        return [*self.external, *self.csp_refusals]

    def _route(self, route: Route) -> None:
        request = route.request
        if is_local(request.url):
            route.fallback()
        else:
            self.external.append(f"{request.method} {request.url}")
            route.abort("blockedbyclient")

    def _route_web_socket(self, ws: WebSocketRoute) -> None:
        if is_local(ws.url):
            ws.connect_to_server()
        else:
            self.external.append(f"WEBSOCKET {ws.url}")
            ws.close(code=1008, reason="external WebSocket blocked by the tests' network guard")

    def _request_failed(self, request: Request) -> None:
        self.failed.append(f"{request.method} {request.url}: {request.failure}")

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.console_errors.append(message.text)

    def _csp_violation(self, source: object, blocked: str, directive: str) -> None:
        self.csp_violations.append(f"{directive} {blocked}")
        if "://" in blocked and not is_local(blocked):
            self.csp_refusals.append(f"{blocked} (refused by the page's CSP, {directive})")


@pytest.fixture(scope="session")
def playwright_driver() -> Iterator[Playwright]:
    if not os.access(CHROMIUM, os.X_OK):
        reason = (f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium; "
                  "scripts/test does it when run as root)")
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser tests, but {reason}", pytrace=False)
        pytest.skip(reason)
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="session")
def chromium(playwright_driver: Playwright) -> Iterator[Browser]:
    """One headless Chromium for the session (Playwright gives it a fresh temporary profile)."""
    browser = playwright_driver.chromium.launch(executable_path=CHROMIUM, headless=True,
                                                args=CHROMIUM_ARGS)
    try:
        yield browser
    finally:
        browser.close()


@pytest.fixture()
def network_guard() -> NetworkGuard:
    return NetworkGuard()


@pytest.fixture()
def page(chromium: Browser, network_guard: NetworkGuard) -> Iterator[Page]:
    """A page in a context of its own (no cookies or storage shared between tests), 1280x800.

    TLS: ``ignore_https_errors=True``. The servers the tests start serve a certificate of their own
    CA, and Chromium cannot be handed a CA file (it trusts only its NSS database), so the browser
    cannot verify them. Certificate errors are ignored only in effect for the 127.0.0.1 servers the
    tests start: the network guard aborts every request to any other host before a connection is
    made, and ``tests.support.Server`` has already verified the server against its CA (httpx with
    the CA file) before a test gets it.
    Service workers are blocked so that every request passes through the guard's route. (A test's own
    ``page.route`` runs before the guard's: fulfil or ``fallback()`` from it, never ``continue_()``.)"""
    context = chromium.new_context(viewport={"width": 1280, "height": 800}, ignore_https_errors=True,
                                   service_workers="block")
    try:
        network_guard.install(context)
        yield context.new_page()
    finally:
        context.close()
    attempts = network_guard.attempts()
    if attempts:
        pytest.fail("the page tried to reach outside 127.0.0.1 (no page may make an external request):\n  "
                    + "\n  ".join(attempts), pytrace=False)


def screenshot(page: Page, name: str, directory: Path | None = None) -> Path:
    """Save a full-page PNG of ``page`` as ``<directory>/<name>.png``; the directory defaults to the
    build folder, build/screenshots, or $SAFEHOLD_SCREENSHOTS (created if missing). Returns the file's path."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise ValueError(f"screenshot name must be a plain file name without extension: {name!r}")
    target = (directory if directory is not None else SCREENSHOTS) / f"{name}.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=target, full_page=True, animations="disabled", caret="hide")
    return target
