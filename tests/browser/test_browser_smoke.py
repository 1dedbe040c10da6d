"""The browser-test infrastructure end to end: headless Chromium against a real Safehold server, and
the network guard catching a page's external requests."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, Route

from tests.browser.conftest import NetworkGuard, screenshot
from tests.support import Server, running_server

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def ui_server(server_root: Path) -> Iterator[Server]:
    with running_server(Path(tempfile.mkdtemp(dir=server_root)) / "data") as server:
        yield server


def wait_for(page: Page, condition: Callable[[], bool], what: str, timeout: float = 10) -> None:
    """Poll through Playwright (its events are delivered only while the test is inside a Playwright
    call, so a plain sleep would never see them)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        page.wait_for_timeout(50)


def test_page_served_by_safehold_over_https(ui_server: Server, page: Page, network_guard: NetworkGuard,
                                            tmp_path: Path) -> None:
    response = page.goto(f"{ui_server.url}/")
    assert response is not None
    assert response.status == 200
    assert page.url.startswith("https://127.0.0.1:")
    headers = response.all_headers()
    assert "default-src 'self'" in headers.get("content-security-policy", ""), headers
    assert headers.get("x-frame-options") == "DENY"
    tls = response.security_details()
    assert tls is not None and str(tls.get("protocol")).startswith("TLS 1."), tls

    shot = screenshot(page, "smoke", tmp_path)
    assert shot == tmp_path / "smoke.png"
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert network_guard.attempts() == []


GUARD_PAGE = """<!doctype html>
<html><head><title>guard check</title></head><body>
<img src="https://example.com/x.png" alt="">
<script>
  fetch("https://example.org/api").catch(() => {});
  new WebSocket("wss://example.net/socket");
</script>
</body></html>"""

CSP_PAGE = """<!doctype html>
<html><head><title>csp check</title></head><body><img src="https://example.com/csp.png" alt=""></body></html>"""


def test_network_guard_catches_external_requests(page: Page, network_guard: NetworkGuard) -> None:
    def serve(route: Route) -> None:
        if route.request.url.endswith("/csp.html"):
            route.fulfill(status=200, content_type="text/html", body=CSP_PAGE,
                          headers={"Content-Security-Policy": "default-src 'self'"})
        else:
            route.fulfill(status=200, content_type="text/html", body=GUARD_PAGE)

    page.route("http://127.0.0.1/guard/*", serve)

    page.goto("http://127.0.0.1/guard/page.html")
    wait_for(page, lambda: len(network_guard.external) >= 3, "the guard to record 3 external requests")
    taken = network_guard.take()
    assert sorted(taken) == ["GET https://example.com/x.png", "GET https://example.org/api",
                             "WEBSOCKET wss://example.net/socket"]
    assert network_guard.take() == []
    assert any("https://example.com/x.png" in f for f in network_guard.failed), network_guard.failed

    # blocked by the page's own CSP before any request: still an attempt, caught from the console
    page.goto("http://127.0.0.1/guard/csp.html")
    wait_for(page, lambda: bool(network_guard.csp_refusals), "the CSP refusal")
    assert network_guard.csp_violations == ["img-src https://example.com/csp.png"]
    taken = network_guard.take()
    assert len(taken) == 1 and taken[0].startswith("https://example.com/csp.png "), taken
    assert network_guard.external == []
