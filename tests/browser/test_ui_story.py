"""The issue's browser story, in headless Chromium against real servers (primary, secondary and read-only,
each its own process on 127.0.0.1): sign in with TOTP, create a resource and an account, reveal and copy
the password, find the retrieval under the right server's audit tab, see the HA dashboard; then kill the
primary and secondary app servers and watch the dashboard and the read-only server's pages.  Screenshots
go to build/screenshots/ (SAFEHOLD_SCREENSHOTS=docs/screenshots refreshes the README's).  Any request to a host other than 127.0.0.1 fails the
test (the page fixture's network guard)."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pyotp
import pytest
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Page, expect

from tests.browser.conftest import screenshot
from tests.support import ADMIN_PASSWORD, Server, running_topology

PASSWORD = "Story-Password-4711"
OPERATOR = ("operator", "Operator-Password-For-Tests-9")


@pytest.fixture(scope="module")
def topology(server_root: Path) -> Iterator[tuple[Server, Server, Server]]:
    with running_topology(Path(tempfile.mkdtemp(dir=server_root))) as servers:
        yield servers


def enable_totp(server: Server, token: str) -> pyotp.TOTP:
    with server.client(token) as c:
        secret = c.post("/me/totp").json()["secret"]
        totp = pyotp.TOTP(secret)
        assert c.post("/me/totp/confirm", json={"code": totp.now()}).status_code == 204
    return totp


def sign_in(page: Page, server: Server, username: str, password: str, totp: pyotp.TOTP | None = None,
            shot: str | None = None) -> None:
    page.goto(f"{server.url}/ui/login")
    if shot:
        screenshot(page, shot)
    page.fill("#f-username", username)
    page.fill("#f-password", password)
    page.click("#login-form button[type=submit]")
    if totp is not None:
        expect(page.locator("#totp-form")).to_be_visible()
        # the code of the next time step: the one just used to confirm enrolment is spent
        page.fill("#f-totp", totp.at(time.time() + totp.interval))
        page.click("#totp-form button[type=submit]")
    expect(page.locator("header .who")).to_have_text(username)


def server_status(page: Page, name: str) -> str:
    return page.locator(f'#servers-table tr[data-server-name="{name}"] td.status').inner_text().strip()


def test_the_browser_story(topology: tuple[Server, Server, Server], page: Page) -> None:
    primary, secondary, readonly = topology
    token = primary.login()
    with primary.client(token) as c:
        assert c.post("/users", json={"username": OPERATOR[0], "password": OPERATOR[1],
                                      "role": "administrator"}).status_code == 201
    totp = enable_totp(primary, token)
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=primary.url)

    # sign in with TOTP
    sign_in(page, primary, "admin", ADMIN_PASSWORD, totp, shot="signin")

    # create a resource and an account
    page.goto(f"{primary.url}/ui/vault")
    page.click("#add-resource")
    page.fill("#f-name", "db-prod-01")
    page.fill("#f-address", "db-prod-01.example.internal")
    page.click("#save-resource")
    expect(page.locator("#resource-name")).to_have_text("db-prod-01")
    page.click("#add-account")
    page.fill("#f-username", "postgres")
    page.fill("#f-password", PASSWORD)
    page.click("#save-account")
    account = page.locator('tr[data-username="postgres"]')
    expect(account).to_be_visible()
    assert PASSWORD not in page.content()

    # reveal and copy the password
    account.locator(".reveal").click()
    expect(page.locator("#revealed-password")).to_have_text(PASSWORD)
    page.click("#copy-password")
    expect(page.locator("#copy-password")).to_have_text("Copied")  # the copy is asynchronous; the button says when
    assert page.evaluate("navigator.clipboard.readText()") == PASSWORD
    page.goto(f"{primary.url}/ui/vault?q=db-prod")
    expect(page.locator('#resources tr[data-name="db-prod-01"]')).to_be_visible()
    screenshot(page, "vault")

    # the audit page shows the retrieval under the primary's tab
    page.goto(f"{primary.url}/ui/audit")
    page.get_by_role("link", name="primary", exact=False).first.click()
    expect(page.locator("#audit-table")).to_contain_text("password_retrieved")
    screenshot(page, "audit")
    page.get_by_role("link", name="secondary", exact=False).first.click()
    expect(page.locator("#audit-table")).not_to_contain_text("password_retrieved")

    # the HA dashboard: three servers active, both statuses Alive
    page.goto(f"{primary.url}/ui/ha")
    for name in ("primary", "secondary", "readonly"):
        expect(page.locator(f'#servers-table tr[data-server-name="{name}"] td.status')).to_have_text(
            "active", timeout=30_000)
    expect(page.locator("#ha-status")).to_have_text("Alive", timeout=30_000)
    expect(page.locator("#replication-status")).to_have_text("Alive", timeout=30_000)
    expect(page.locator("#topology")).to_be_visible()
    screenshot(page, "ha-dashboard")

    # the primary and secondary app servers die
    for s in (primary, secondary):
        assert s.proc is not None
        s.proc.kill()
        s.proc.wait()
        s.proc = None
    killed = time.monotonic()

    # the read-only server serves its own pages now, with the banner, and still reveals the password
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=readonly.url)
    expect(page.locator("body")).to_be_visible()
    deadline = time.monotonic() + 30
    while True:  # it redirects to the primary (now refusing connections) until it sees it is gone
        try:
            page.goto(f"{readonly.url}/ui/login")
            if page.url.startswith(readonly.url):
                break
        except PlaywrightError:
            pass
        assert time.monotonic() < deadline, "the read-only server kept redirecting to dead servers"
        page.wait_for_timeout(500)
    sign_in(page, readonly, *OPERATOR)
    page.goto(f"{readonly.url}/ui/ha")
    for name in ("primary", "secondary"):
        expect(page.locator(f'#servers-table tr[data-server-name="{name}"] td.status')).to_have_text(
            "inactive", timeout=30_000)
    seen_after = time.monotonic() - killed
    expect(page.locator("#mode-banner")).to_contain_text("Read-only emergency access")
    screenshot(page, "ha-dashboard-servers-down")
    print(f"the dashboard showed the primary and secondary inactive {seen_after:.1f} s after they were killed")

    page.goto(f"{readonly.url}/ui/vault?q=db-prod")
    expect(page.locator("#mode-banner")).to_contain_text("data as of")
    page.locator('#resources tr[data-name="db-prod-01"] a').first.click()
    expect(page.locator("#add-account")).to_have_count(0)  # no write controls in emergency mode
    page.locator('tr[data-username="postgres"] .reveal').click()
    expect(page.locator("#revealed-password")).to_have_text(PASSWORD)
    screenshot(page, "vault-read-only-emergency")
