"""Pages of the operator-experience findings in headless Chromium against real servers, asserted on what the
browser computes from the stylesheet (not on pixels); screenshots go to the build folder.

- The audit page's result badges: "success" and "failure" differ in colour and in mark, each with a text
  contrast a reader can rely on (WCAG AA: at least 4.5:1).
- A read-only server in emergency mode: its dashboard says since when, its readiness panel marks what the
  outage took down as expected (not in the failure red) and shows the command that takes over."""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Page, expect

from tests.browser.conftest import screenshot
from tests.integration.test_ha_failover import kill_app, kill_database
from tests.support import ADMIN_PASSWORD, Server, running_pair, running_server, wait_until


@pytest.fixture(scope="module")
def audited_server(server_root: Path) -> Iterator[Server]:
    with running_server(Path(tempfile.mkdtemp(dir=server_root)) / "data") as server:
        with server.client() as c:  # a failed sign-in: a "failure" record
            assert c.post("/auth/login", json={"username": "admin", "password": "not-the-password-1"}).status_code == 401
        yield server


def rgb(css_colour: str) -> tuple[float, float, float]:
    m = re.fullmatch(r"rgba?\((\d+), (\d+), (\d+)(?:, [\d.]+)?\)", css_colour)
    assert m, css_colour
    r, g, b = (int(x) / 255 for x in m.groups())
    return r, g, b


def contrast(a: str, b: str) -> float:
    def lum(colour: str) -> float:
        r, g, b = (c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb(colour))
        return 0.2126 * r + 0.7152 * g + 0.0722 * b

    hi, lo = sorted((lum(a), lum(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def badge_style(page: Page, result: str) -> dict[str, str]:
    badge = page.locator(f'#audit-table span.result[data-result="{result}"]').first
    expect(badge).to_be_visible()
    style: dict[str, str] = badge.evaluate(
        """el => { const s = getComputedStyle(el);
                   return {color: s.color, background: s.backgroundColor, border: s.borderTopColor,
                           text: el.innerText.trim()}; }""")
    return style


def sign_in(page: Page, server: Server) -> None:
    page.goto(f"{server.url}/ui/login")
    page.fill("#f-username", "admin")
    page.fill("#f-password", ADMIN_PASSWORD)
    page.click("#login-form button[type=submit]")
    expect(page.locator("header .who")).to_have_text("admin")


def test_success_and_failure_badges_look_different(audited_server: Server, page: Page) -> None:
    sign_in(page, audited_server)
    page.goto(f"{audited_server.url}/ui/audit")

    success, failure = badge_style(page, "success"), badge_style(page, "failure")
    assert (success["text"], failure["text"]) == ("✓ success", "✗ failure")
    assert success["color"] != failure["color"]
    assert success["background"] != failure["background"] and success["border"] != failure["border"]
    for style in (success, failure):
        assert style["background"] not in ("rgba(0, 0, 0, 0)", "transparent"), style  # a filled badge
        assert contrast(style["color"], style["background"]) >= 4.5, style
    screenshot(page, "audit-results")


def colour_of(page: Page, selector: str) -> str:
    colour: str = page.locator(selector).first.evaluate("el => getComputedStyle(el).color")
    return colour


def failure_colour(page: Page) -> str:
    """The stylesheet's failure colour (--bad) as the browser computes a colour: rgb(r, g, b)."""
    hex_colour: str = page.evaluate("getComputedStyle(document.documentElement).getPropertyValue('--bad').trim()")
    r, g, b = (int(hex_colour.lstrip("#")[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgb({r}, {g}, {b})"


def serves_own_page(page: Page, url: str) -> bool:
    try:
        page.goto(url)
    except PlaywrightError:  # the server is between its redirect and emergency mode
        return False
    return page.url.startswith(url.split("/ui/")[0])


def test_emergency_dashboard(server_root: Path, page: Page) -> None:
    with running_pair(Path(tempfile.mkdtemp(dir=server_root))) as (primary, readonly):
        kill_app(primary)
        kill_database(primary)
        wait_until(lambda: serves_own_page(page, f"{readonly.url}/ui/login"), timeout=60,
                   what="the read-only server to serve its own pages")
        sign_in(page, readonly)

        def dashboard_in_emergency() -> bool:  # once the replica has noticed its primary database is gone
            page.goto(f"{readonly.url}/ui/ha")
            return bool(page.locator('#checks-table tr[data-check="replication"][data-state="expected"]').count())

        wait_until(dashboard_in_emergency, timeout=90, interval=1, what="the dashboard to show emergency mode")
        expect(page.locator("#emergency-notice")).to_contain_text("Serving in read-only emergency mode since")
        expect(page.locator("#promote-command")).to_have_text(f"safehold ha promote --data-dir {readonly.data_dir}")
        expected_mark = '#checks-table tr[data-state="expected"] td.status'
        expect(page.locator(expected_mark).first).to_have_text("–")
        assert colour_of(page, expected_mark) != failure_colour(page)
        assert colour_of(page, expected_mark) != colour_of(page, '#checks-table tr[data-state="passed"] td.status')
        screenshot(page, "ha-emergency")
