"""The operator-experience findings on the pages, against a real primary and a real read-only server (each its
own process on 127.0.0.1), driven like a browser without JavaScript.

The story: on the primary, the failover policy is a cluster setting edited there and carried out by the
read-only servers (no warning about this host's 'ping'); the audit page's tabs show a server's role only when
its name does not say it, and its results are badges of their own class and mark.  Then the primary's app and
database die: the read-only server serves users in emergency mode and its dashboard says since when, marks what
the outage took down as expected rather than failed, and names the command that makes it take over."""

from __future__ import annotations

import datetime as dt
import re
import shlex
from collections.abc import Callable
from typing import Any

from safehold.ha.probe import ping_program
from tests.integration.test_ha_failover import kill_app, kill_database
from tests.support import Server, wait_until
from tests.ui_client import Browser, Node

ICMP_WITNESS = "192.0.2.10"  # a documentation address: stored, never contacted (the policy stays disabled)


def poll(what: str, fn: Callable[[], Any], timeout: float = 90) -> Any:
    return wait_until(fn, timeout=timeout, interval=0.5, what=what)


def tab_texts(page: Node) -> list[str]:
    return [t.text() for t in page.by_id("audit-tabs").find_all("a")]


def warnings_of(page: Node) -> list[str]:
    return [li.text() for ul in page.find_all("ul", id="failover-warnings") for li in ul.find_all("li")]


def css_rule(css: str, selector: str) -> dict[str, str]:
    """The declarations of the rule whose selector is exactly ``selector``."""
    m = re.search(re.escape(selector) + r"\s*\{([^}]*)\}", css)
    assert m, f"no CSS rule {selector}"
    return {k.strip(): v.strip() for k, v in (d.split(":", 1) for d in m.group(1).split(";") if ":" in d)}


def luminance(hex_colour: str) -> float:
    channels = [int(hex_colour.lstrip("#")[i:i + 2], 16) / 255 for i in (0, 2, 4)]
    r, g, b = (c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(a: str, b: str) -> float:
    hi, lo = sorted((luminance(a), luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def check_states(page: Node) -> dict[str, str]:
    return {r.attrs["data-check"]: r.attrs["data-state"] for r in page.by_id("checks-table").find_all("tr", data_check=None)}


def test_pages_of_a_pair_before_and_during_an_outage(primary_and_readonly: tuple[Server, Server]) -> None:
    primary, readonly = primary_and_readonly
    with primary.client() as c:  # a failed sign-in: a "failure" record beside the successful ones
        assert c.post("/auth/login", json={"username": "admin", "password": "not-the-password-1"}).status_code == 401
    with Browser(primary) as b:
        b.sign_in()

        # --- settings: the policy is the cluster's, edited here and carried out by the read-only servers; an
        # ICMP witness says nothing about this host's 'ping' (it is not pinged from here)
        page = b.follow_page(b.submit("/ui/settings", "failover-form", {"witness_1": ICMP_WITNESS}))
        assert page.by_id("failover-saved")
        applies = page.by_id("failover-applies")
        assert applies.attrs["data-readers"] == "readonly"
        assert "the read-only servers carry it out, this primary server does not" in applies.text(), applies.text()
        assert "safehold ha failover --data-dir DIR" in applies.text()
        assert not any("'ping'" in w for w in warnings_of(page)), warnings_of(page)
        assert "disabled" not in page.by_id("f-witness_1").attrs  # still edited here

        # --- the audit tabs: the name, and the role only when the name does not say it
        page = b.page("/ui/audit")
        assert tab_texts(page) == ["All", "primary", "readonly"]
        primary_id = page.by_id("audit-tabs").find_all("a")[1].attrs["data-server-id"]
        b.follow(b.submit("/ui/ha", f"rename-form-{primary_id}", {"name": "vault-a"}))
        page = b.page("/ui/audit")
        assert tab_texts(page) == ["All", "vault-a (Primary)", "readonly"]

        # --- the audit results: a badge of its own class, mark and colours per result
        rows = page.by_id("audit-table").find_all("tr", data_record_id=None)
        badges = {r.find("span", cls="result").attrs["data-result"]: r.find("span", cls="result") for r in rows}
        assert {"success", "failure"} <= set(badges), set(badges)
        assert "result-success" in badges["success"].classes and badges["success"].text() == "✓ success"
        assert "result-failure" in badges["failure"].classes and badges["failure"].text() == "✗ failure"
        css = b.get("/static/safehold.css").text
        ok, bad = css_rule(css, ".pill.result-success"), css_rule(css, ".pill.result-failure")
        assert ok["color"] != bad["color"] and ok["background"] != bad["background"]
        for rule in (ok, bad, css_rule(css, ".pill.result-denied")):
            assert contrast(rule["color"], rule["background"]) >= 4.5, rule

        # --- the primary's readiness: nothing to take over
        page = b.page("/ui/ha")
        assert page.find_all(id="takeover") == [] and page.find_all(id="emergency-notice") == []
        assert "expected" not in check_states(page).values()

    # --- the outage: the primary's app and database die; the read-only server serves users itself
    killed_at = dt.datetime.now(dt.UTC)
    kill_app(primary)
    kill_database(primary)
    with Browser(readonly) as ro:
        poll("the read-only server to serve its own pages", lambda: ro.c.get("/ui/login").status_code == 200)
        ro.sign_in()

        def emergency_dashboard() -> Node | None:
            page = ro.page("/ui/ha")
            ready = page.find_all(id="emergency-notice") and check_states(page).get("replication") == "expected"
            return page if ready else None

        page = poll("the dashboard to show emergency mode and the replica cut off", emergency_dashboard)

        # since when (from the server's memory), said on the dashboard and in the banner
        notice = page.by_id("emergency-notice")
        since = dt.datetime.fromisoformat(notice.attrs["data-since"])
        assert killed_at <= since <= dt.datetime.now(dt.UTC), (killed_at, since)
        assert f"Serving in read-only emergency mode since {since:%Y-%m-%d %H:%M:%S} UTC" in notice.text()
        assert "reaches the event log" in notice.text()
        assert f"emergency mode since {since:%Y-%m-%d %H:%M:%S} UTC" in page.by_id("mode-banner").text()
        assert 'id="emergency-notice"' in ro.get("/ui/ha/live").text  # the live part says it too

        # the readiness panel: what the outage took down is expected, not failed; and how to take over
        states = check_states(page)
        assert states["replication"] == "expected" and states["peer vault-a"] == "expected", states
        assert states["key file"] == "passed" and states["generation"] == "passed", states
        row = page.by_id("checks-table").find("tr", data_check="peer vault-a")
        mark = row.find("td", cls="status")
        assert mark.text() == "–" and "status-expected" in mark.classes and "status-failed" not in mark.classes
        assert "expected while no primary or secondary answers" in row.text()
        assert page.by_id("promote-command").text() == f"safehold ha promote --data-dir {shlex.quote(str(readonly.data_dir))}"
        assert "acting primary" in page.by_id("promote-when").text()

        # the settings here: this server carries the policy out, so its own host's 'ping' matters
        settings = ro.page("/ui/settings")
        assert "This read-only server carries this policy out" in settings.by_id("failover-applies").text()
        no_ping = any("no 'ping' program on this host" in w for w in warnings_of(settings))
        assert no_ping is (ping_program() is None), warnings_of(settings)

    # --- the primary comes back: the period, audited by the read-only server, is in the cluster's event log
    primary.cli("db", "start")
    primary.start()
    wait_until(lambda: readonly.client().get("/me").status_code == 307, timeout=60, what="the redirect again")

    def logged() -> list[str]:
        with primary.client(primary.login()) as c:
            items = c.get("/ha/events", params={"limit": 200}).json()["items"]
        return [e["message"] for e in items if e["kind"] == "EmergencyMode"]

    messages = wait_until(lambda: (m := logged()) and len(m) >= 2 and m, timeout=60, what="the EmergencyMode events")
    began = [m for m in messages if "began serving users in read-only emergency mode at" in m]
    ended = [m for m in messages if "served users in read-only emergency mode from" in m]
    assert len(began) == 1 and len(ended) == 1, f"each period logged once: {messages}"
    at = dt.datetime.fromisoformat(re.search(r" at (\S+):", began[0]).group(1))  # type: ignore[union-attr]
    assert abs((at - since).total_seconds()) < 5, (at, since)  # what the dashboard said, give or take a check
