"""The audit, High Availability and settings pages, driven like a browser without JavaScript (GET a form,
send it back with its CSRF token, follow the 303s, keep the cookies), against real server processes."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from typing import Any

import httpx

from tests.support import Server, free_port, run_cli, wait_until
from tests.ui_client import Browser, Node, dom, error_of, no_csrf_refused


def poll(what: str, fn: Callable[[], Any], timeout: float = 60) -> Any:
    return wait_until(fn, timeout=timeout, interval=0.5, what=what)


# --- audit and HA dashboard of a primary + read-only pair ------------------------------------------------


def test_audit_and_ha_dashboard_of_a_pair(primary_and_readonly: tuple[Server, Server]) -> None:
    primary, readonly = primary_and_readonly
    with Browser(primary) as b:
        b.sign_in()

        # --- the HA dashboard: both servers active, both statuses Alive
        def dashboard_alive() -> Node | None:
            page = b.page("/ui/ha")
            rows = page.by_id("servers-table").find_all("tr", data_server_name=None)
            statuses = {r.attrs["data-server-name"]: r.find("td", cls="status").text() for r in rows}
            ok = (statuses == {"primary": "active", "readonly": "active"}
                  and page.by_id("ha-status").text() == "Alive"
                  and page.by_id("replication-status").text() == "Alive")
            return page if ok else None

        page = poll("the dashboard to show both servers active and Alive", dashboard_alive)
        svg = page.by_id("topology")
        assert svg.tag == "svg"
        names = {g.attrs["data-server-name"] for g in svg.find_all("g", cls="server")}
        assert names == {"primary", "readonly"}
        dbs = sorted(g.attrs["data-database-role"] for g in svg.find_all("g", cls="database"))
        assert dbs == ["primary", "replica"]
        for g in svg.find_all("g", cls="node"):
            assert g.find("rect", cls="box").classes & {"active", "alive"}, g.attrs
        links = svg.find_all("path", cls="link")
        assert {(p.attrs["data-link"], p.attrs["data-status"]) for p in links} == {
            ("connection", "active"), ("replication", "alive")}
        assert len([p for p in links if p.attrs["data-link"] == "connection"]) == 2
        db_rows = page.by_id("databases-table").find_all("tr", data_database_role=None)
        assert sorted(r.attrs["data-database-role"] for r in db_rows) == ["primary", "replica"]
        primary_row = page.by_id("databases-table").find("tr", data_database_role="primary")
        assert [c.text() for c in primary_row.find_all("td")][3:] == ["1", "1"]
        assert page.by_id("generation").text().isdigit()
        assert page.find_all(id="fenced-notice") == []
        assert page.by_id("checks").find_all("tr", data_check=None), "no readiness check shown"
        assert page.by_id("events").find("table")
        live = page.by_id("ha-live")
        assert live.attrs["data-refresh-url"] == "/ui/ha/live" and live.attrs["data-refresh-every"] == "3"
        assert page.by_id("refresh-link").attrs["href"] == "/ui/ha"
        sessions = page.by_id("servers-table").find("tr", data_server_name="primary").find("td", cls="sessions")
        assert int(sessions.text()) >= 1

        # the live fragment: the same parts, without the page around them
        r = b.get("/ui/ha/live")
        assert "<html" not in r.text and "<header" not in r.text
        fragment = dom(r.text)
        assert fragment.by_id("topology") and fragment.by_id("servers-table")
        assert fragment.by_id("replication-status").text() == "Alive"
        with httpx.Client(base_url=primary.url, verify=primary.ssl_context()) as anonymous:
            assert anonymous.get("/ui/ha/live").status_code == 401  # never a redirect into the container
            assert anonymous.get("/ui/ha").status_code == 303

    # --- the primary app goes down (its database stays up): the read-only server serves users itself;
    # its dashboard shows the primary inactive, with no rename form (read-only), its settings read-only,
    # and a sign-in there is spooled, then shipped to the primary database
    primary.proc.kill()  # type: ignore[union-attr]
    primary.proc.wait()  # type: ignore[union-attr]
    with Browser(readonly) as ro:
        poll("the read-only server to serve its own pages", lambda: ro.c.get("/ui/login").status_code == 200)
        ro.sign_in()

        def primary_inactive() -> Node | None:
            page = ro.page("/ui/ha")
            rows = page.by_id("servers-table").find_all("tr", data_server_name=None)
            statuses = {r.attrs["data-server-name"]: r.find("td", cls="status").text() for r in rows}
            return page if statuses == {"primary": "inactive", "readonly": "active"} else None

        page = poll("the read-only server to see the primary inactive", primary_inactive)
        assert page.by_id("servers-table").find_all("form") == []
        assert page.by_id("mode-banner")
        box = page.by_id("topology").find("g", data_server_name="primary")
        assert "inactive" in box.find("rect").classes
        settings = ro.page("/ui/settings")
        assert settings.by_id("settings-readonly")
        inputs = [i for i in settings.by_id("failover-form").find_all("input") if i.attrs.get("type") != "hidden"]
        assert inputs and all("disabled" in i.attrs for i in inputs)
        assert settings.by_id("failover-form").find_all("button") == []
        r = ro.c.post("/ui/settings/failover", data={"csrf": ro.csrf("/ui/ha"), "ping_iterations": "3"})
        assert r.status_code == 403

        def shipped() -> bool:
            page = ro.page("/ui/audit")
            return int(page.by_id("backlog-pending").text()) == 0 and int(page.by_id("backlog-shipped").text()) >= 1

        poll("the read-only server's audit spool to be shipped", shipped)
    primary.start()

    with Browser(primary) as b:
        b.sign_in()

        # --- the audit page: a tab per server, Primary first, then the read-only server
        page = b.page("/ui/audit")
        tabs = page.by_id("audit-tabs").find_all("a")
        assert [t.text() for t in tabs] == ["All", "primary", "readonly"]  # the role only when the name does not say it
        assert tabs[0].attrs.get("aria-current") == "page"
        ids = {t.text().split()[0]: t.attrs["data-server-id"] for t in tabs[1:]}
        assert tabs[2].attrs["href"] == f"?server={ids['readonly']}"

        def rows_of(server_id: str) -> list[Node] | None:
            p = b.page("/ui/audit", server=server_id)
            current = [t for t in p.by_id("audit-tabs").find_all("a") if t.attrs.get("aria-current") == "page"]
            assert [t.attrs["data-server-id"] for t in current] == [server_id]
            rows = p.by_id("audit-table").find_all("tr", data_record_id=None)
            return rows or None

        ro_rows = poll("the read-only server's records to be shipped", lambda: rows_of(ids["readonly"]))
        assert {r.attrs["data-server-id"] for r in ro_rows} == {ids["readonly"]}
        pr_rows = rows_of(ids["primary"])
        assert pr_rows and {r.attrs["data-server-id"] for r in pr_rows} == {ids["primary"]}

        # the other filters, kept across the tabs
        page = b.page("/ui/audit", action="login", actor="ADMIN", server=ids["primary"])
        rows = page.by_id("audit-table").find_all("tr", data_record_id=None)
        assert rows and all(r.find_all("td")[4].text() == "login" for r in rows)
        all_tab = page.by_id("audit-tabs").find_all("a")[0]
        assert "action=login" in all_tab.attrs["href"] and "server=" not in all_tab.attrs["href"]
        assert page.by_id("f-action").find("option", value="login").attrs.get("selected") is not None
        page = b.page("/ui/audit", text="no-such-text-anywhere-xyz")
        assert page.by_id("audit-table").find_all("tr", data_record_id=None) == []
        page = b.page("/ui/audit", 422, since="yesterday")
        assert "date and time" in error_of(page, "f-since")

        # CSV of the current filter
        export = b.page("/ui/audit", server=ids["readonly"]).by_id("audit-export").attrs["href"]
        assert export.startswith("/ui/audit/export.csv?") and ids["readonly"] in export
        r = b.c.get(export)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
        assert "attachment" in r.headers["content-disposition"]
        records = list(csv.DictReader(io.StringIO(r.text)))
        assert records and {x["server_id"] for x in records} == {ids["readonly"]}
        assert {x["server_name"] for x in records} == {"readonly"}

        # the chain verification, and the spool backlog
        page = b.page("/ui/audit")
        assert page.by_id("chain-verify").attrs["href"] == "?verify=1"
        page = b.page("/ui/audit", verify="1")
        result = page.by_id("chain-result")
        assert result.attrs["data-ok"] == "true" and "OK" in result.text(), result.text()
        assert int(page.by_id("backlog-shipped").text()) >= 1 and int(page.by_id("backlog-pending").text()) >= 0


# --- renaming a server in place ---------------------------------------------------------------------------


def test_rename_a_server_in_place(server: Server) -> None:
    with Browser(server) as b:
        b.sign_in()
        row = b.page("/ui/ha").by_id("servers-table").find("tr", data_server_name=None)
        sid = row.attrs["data-server-id"]
        assert row.find("form", cls="rename").attrs["action"] == f"/ui/ha/servers/{sid}/rename"
        form_id = f"rename-{sid}"  # the name input

        def rename(name: str) -> httpx.Response:
            return b.submit("/ui/ha", f"rename-form-{sid}", {"name": name})

        page = b.follow_page(rename("  Vault A (rack 4)  "))
        row = page.by_id("servers-table").find("tr", data_server_id=sid)
        assert row.attrs["data-server-name"] == "Vault A (rack 4)"
        assert page.by_id(form_id).attrs["value"] == "Vault A (rack 4)"
        svg_names = {g.attrs["data-server-name"] for g in page.by_id("topology").find_all("g", cls="server")}
        assert svg_names == {"Vault A (rack 4)"}

        for bad, message in (("   ", "enter a name"), ("x" * 101, "at most 100 characters")):
            r = rename(bad)
            assert r.status_code == 422, r.text[:2000]
            page = dom(r.text)
            assert error_of(page, form_id) == message
            assert page.by_id(form_id).attrs["value"] == bad.strip()  # what was typed is kept
            assert "data-refresh-url" not in page.by_id("ha-live").attrs  # not wiped by a live refresh
        assert b.page("/ui/ha").by_id("servers-table").find("tr", data_server_id=sid).attrs["data-server-name"] \
            == "Vault A (rack 4)"
        r = b.c.post("/ui/ha/servers/00000000-0000-0000-0000-000000000000/rename",
                     data={"name": "ghost", "csrf": b.csrf("/ui/ha")})
        assert r.status_code == 404 and "server not found" in r.text
        no_csrf_refused(b, f"/ui/ha/servers/{sid}/rename", {"name": "forged"})
        audit = b.page("/ui/audit", action="server_renamed").by_id("audit-table")
        assert len(audit.find_all("tr", data_record_id=None)) == 1



# --- settings: the failover policy and the alert channels ----------------------------------------------


def stored(server: Server, what: str) -> dict[str, Any]:
    """The cluster's settings as the API shows them: what = "failover" or "alerts"."""
    with server.client(server.login()) as c:
        r = c.get(f"/ha/{what}")
        assert r.status_code == 200, r.text
        return r.json()


def test_failover_policy_form(server: Server) -> None:
    with Browser(server) as b:
        b.sign_in()
        page = b.page("/ui/settings")
        assert "the cluster's" in page.by_id("settings-notice").text()
        assert page.by_id("f-ping_iterations").attrs["value"] == "12"

        before = stored(server, "failover")
        r = b.submit("/ui/settings", "failover-form", {
            "ping_iterations": "25", "ping_interval": "5", "witness_1": "192.0.2.10", "witness_2": "192.0.2.10",
            "gateway": "192.0.2.1"})
        assert r.status_code == 422, r.text[:2000]
        page = dom(r.text)
        assert error_of(page, "f-ping_iterations") == "ping_iterations must be between 2 and 20 (got 25)"
        assert "given twice" in error_of(page, "f-witness_2")
        assert page.by_id("f-witness_2").attrs["value"] == "192.0.2.10"  # kept as typed
        assert page.by_id("f-ping_interval").attrs["value"] == "5"

        r = b.submit("/ui/settings", "failover-form", {"ping_interval": "soon", "witness_1": "127.0.0.1",
                                                       "gateway": "bad host!"})
        page = dom(r.text)
        assert r.status_code == 422 and error_of(page, "f-ping_interval") == "enter a number of seconds"
        r = b.submit("/ui/settings", "failover-form", {"witness_1": "127.0.0.1", "gateway": "bad host!"})
        page = dom(r.text)
        assert r.status_code == 422
        assert "one of this cluster's own addresses" in error_of(page, "f-witness_1")
        assert error_of(page, "f-gateway").startswith("gateway ")
        assert stored(server, "failover")["version"] == before["version"]

        r = b.submit("/ui/settings", "failover-form", {
            "ping_interval": "7.5", "ping_iterations": "4", "witness_1": "192.0.2.10", "witness_3": "192.0.2.11:22",
            "gateway": "192.0.2.1", "may_promote": None})
        page = b.follow_page(r)
        assert "whole cluster" in page.by_id("failover-saved").text()
        fo = stored(server, "failover")["policy"]
        assert (fo["enabled"], fo["ping_interval"], fo["ping_iterations"], fo["witness_targets"], fo["gateway"],
                fo["may_promote"]) == (False, 7.5, 4, ["192.0.2.10", "192.0.2.11:22"], "192.0.2.1", False)
        assert page.by_id("f-witness_2").attrs["value"] == "192.0.2.11:22"
        assert "checked" not in page.by_id("f-may_promote").attrs
        assert "cluster-wide (database)" in page.by_id("failover-source").text()
        no_csrf_refused(b, "/ui/settings/failover", {"ping_iterations": "3"})
        assert stored(server, "failover")["policy"]["ping_iterations"] == 4


def test_alert_channels(server: Server, tmp_path: Any) -> None:
    secret = "webhook-secret-never-shown-1234"
    (tmp_path / "webhook.secret").write_text(secret)
    r = run_cli("alerts", "set", "webhook", "url=https://127.0.0.1:1/hook/path-token-xyz",
                f"secret_file={tmp_path / 'webhook.secret'}", "--data-dir", str(server.data_dir))
    assert "saved for the whole cluster" in r.stdout, r.stdout + r.stderr
    dead = free_port()  # nothing listens there
    with Browser(server) as b:
        b.sign_in()
        page = b.page("/ui/settings")
        text = b.get("/ui/settings").text
        assert secret not in text and "path-token-xyz" not in text
        webhook = page.by_id("alerts-webhook")
        assert webhook.attrs["data-configured"] == "true"
        assert page.by_id("webhook-secret").text().endswith("set")
        assert page.by_id("f-webhook-url").attrs["value"] == ""  # write-only
        assert page.by_id("f-webhook-secret").attrs["value"] == ""  # write-only
        assert page.by_id("alerts-script").find_all("form") == []  # its path is set on the host
        assert page.by_id("alerts-syslog").attrs["data-configured"] == "false"

        # a syslog channel over TCP to a closed port: bad values first
        r = b.submit("/ui/settings", "syslog-form", {"transport": "tcp", "host": "bad host!", "port": "70000",
                                                     "timeout": "soon"})
        assert r.status_code == 422, r.text[:2000]
        page = dom(r.text)
        assert error_of(page, "f-syslog-host") == "must be a host name or an IP address"
        assert "65535" in error_of(page, "f-syslog-port")
        assert error_of(page, "f-syslog-timeout") == "enter a number"
        assert page.by_id("f-syslog-port").attrs["value"] == "70000"
        assert "syslog" not in [ch["name"] for ch in stored(server, "alerts")["channels"]]

        r = b.submit("/ui/settings", "syslog-form", {"transport": "tcp", "host": "127.0.0.1", "port": str(dead),
                                                     "timeout": "3"})
        page = b.follow_page(r)
        assert page.by_id("syslog-saved")
        saved = {ch["name"]: ch["settings"] for ch in stored(server, "alerts")["channels"]}["syslog"]
        assert (saved["transport"], saved["port"]) == ("tcp", dead)
        assert page.by_id("alerts-syslog").attrs["data-configured"] == "true"

        r = b.submit("/ui/settings", "syslog-test")
        assert r.status_code == 502, r.text[:2000]
        result = dom(r.text).by_id("syslog-test-result")
        assert result.attrs["data-ok"] == "false"
        assert f"syslog: tcp://127.0.0.1:{dead} refused the connection" in result.text(), result.text()

        # the webhook: the URL and the secret are kept when left empty; its test fails clearly (nothing on port 1)
        r = b.submit("/ui/settings", "webhook-form", {"timeout": "2"})
        b.follow_page(r)
        hook = {ch["name"]: ch["settings"] for ch in stored(server, "alerts")["channels"]}["webhook"]
        assert hook["timeout"] == 2 and hook["secret"] == "set"
        r = b.submit("/ui/settings", "webhook-test")
        assert r.status_code == 502 and "refused the connection" in dom(r.text).by_id("webhook-test-result").text()
        assert "127.0.0.1:1" in r.text and secret not in r.text and "path-token-xyz" not in r.text

        for path in ("/ui/settings/alerts/syslog", "/ui/settings/alerts/syslog/test",
                     "/ui/settings/alerts/syslog/remove"):
            no_csrf_refused(b, path, {"host": "192.0.2.50"})
        assert "syslog" in [ch["name"] for ch in stored(server, "alerts")["channels"]]

        page = b.follow_page(b.submit("/ui/settings", "syslog-remove"))
        assert page.by_id("alerts-syslog").attrs["data-configured"] == "false"
        assert "syslog" not in [ch["name"] for ch in stored(server, "alerts")["channels"]]
        run_cli("alerts", "remove", "webhook", "--data-dir", str(server.data_dir))


def test_pages_need_the_right_role(shared_server: Server, admin_token: str) -> None:
    with shared_server.client(admin_token) as api:
        r = api.post("/users", json={"username": "ui-auditor", "password": "Auditor-Password-1234",
                                     "role": "auditor"})
        assert r.status_code in (201, 409), r.text
    with Browser(shared_server) as b:
        b.sign_in("ui-auditor", "Auditor-Password-1234")
        assert b.page("/ui/audit").by_id("audit-table")
        b.get("/ui/ha", 403)
        b.get("/ui/settings", 403)
        assert b.c.get("/ui/ha/live").status_code == 403
    with httpx.Client(base_url=shared_server.url, verify=shared_server.ssl_context()) as anonymous:
        r = anonymous.get("/ui/audit/export.csv")
        assert r.status_code == 303 and r.headers["location"].startswith("/ui/login")


# --- the drawing and the tab order, as pure functions --------------------------------------------------


def test_tabs_and_drawing_of_a_larger_cluster() -> None:
    from types import SimpleNamespace

    from safehold.web.ui.audit import server_tabs
    from safehold.web.ui.ha import topology

    def row(id_: str, name: str, role: str) -> SimpleNamespace:
        return SimpleNamespace(id=id_, name=name, role=role)

    tabs = server_tabs([row("3", "ro-b", "readonly"), row("2", "vault-2", "secondary"), row("4", "ro-a", "readonly"),
                        row("1", "vault-1", "primary")])
    assert [(t["name"], t["role"]) for t in tabs] == [("vault-1", "Primary"), ("vault-2", "Secondary"),
                                                     ("ro-a", "Read-only"), ("ro-b", "Read-only")]

    def server(id_: str, name: str, role: str, status: str) -> dict[str, Any]:
        return {"id": id_, "name": name, "role": role, "status": status, "hostname": f"{name}.example", "url": ""}

    status = {
        "servers": [server("1", "vault-1", "primary", "active"), server("2", "vault-2", "secondary", "inactive"),
                    server("3", "ro-a", "readonly", "active"), server("4", "ro-b", "readonly", "inactive")],
        "databases": [{"host": "db1", "port": 5432, "role": "primary", "servers_configured": 2, "servers_active": 1},
                      {"host": "ro-a", "port": 5433, "role": "replica", "servers_configured": 1, "servers_active": 1}],
        "ha_status": "Failed", "replication_status": "Failed",
    }
    topo = topology(status, readonly_view=False)
    servers = {b.key: b for b in topo.boxes if b.kind == "server"}
    assert [b.key for b in topo.boxes if b.kind == "server"] == ["vault-1", "vault-2", "ro-a", "ro-b"]
    assert servers["vault-2"].status == "inactive" and servers["ro-a"].status == "active"
    assert servers["vault-1"].x < servers["vault-2"].x < servers["ro-a"].x < servers["ro-b"].x
    dbs = [b for b in topo.boxes if b.kind == "database"]
    assert [(b.key, b.status) for b in dbs] == [("primary", "alive"), ("replica", "alive"), ("replica", "failed")]
    assert "5433" in dbs[1].lines[1] and dbs[2].lines[1] == "unknown"  # ro-b did not answer
    assert sorted((lk.kind, lk.status) for lk in topo.links) == [
        ("connection", "active"), ("connection", "active"), ("connection", "inactive"), ("connection", "inactive"),
        ("replication", "failed"), ("replication", "failed")]
    assert all(0 <= b.x and b.x + 180 <= topo.width for b in topo.boxes)
