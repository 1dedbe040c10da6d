"""What an operator reads about the cluster, tried as a new user would: ``safehold ha status`` and ``safehold
alerts show`` (whole ids and URLs at any width, no "None", ``--json``), the HA event log as a page, the
read-only server's "last seen", and the HA endpoints of a read-only server called with the primary's token.

One primary + read-only pair serves the whole module (each its own process, see ``tests.support``); the
tests that stop a server start it again before they end."""

from __future__ import annotations

import datetime as dt
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import Server, run_cli, running_pair, serves_users_itself, wait_until

NARROW = {"COLUMNS": "80"}
PIPE = {"COLUMNS": ""}  # no width given: a pipe counts as 80 columns


@pytest.fixture(scope="module")
def pair(server_root: Path) -> Iterator[tuple[Server, Server]]:
    with running_pair(Path(tempfile.mkdtemp(dir=server_root))) as servers:
        yield servers


@pytest.fixture(scope="module")
def token(pair: tuple[Server, Server]) -> str:
    return pair[0].login()


def status_of(server: Server, token: str) -> dict[str, Any]:
    with server.client(token) as c:
        r = c.get("/ha/status")
    assert r.status_code == 200, r.text
    return dict(r.json())


def entry(status: dict[str, Any], name: str) -> dict[str, Any]:
    return dict(next(s for s in status["servers"] if s["name"] == name))


def at(iso: str) -> dt.datetime:
    return dt.datetime.fromisoformat(iso)


# --- the commands' output ---------------------------------------------------------------------------------


@pytest.mark.parametrize("env", [NARROW, PIPE], ids=["80 columns", "a pipe"])
def test_ha_status_never_cuts_an_id_or_url(pair: tuple[Server, Server], token: str, env: dict[str, str]) -> None:
    primary, _ = pair
    shown = run_cli("ha", "status", "--data-dir", str(primary.data_dir), env=env).stdout
    for s in status_of(primary, token)["servers"]:
        assert s["id"] in shown and s["url"] in shown, shown
    assert "…" not in shown and "None" not in shown, shown
    assert "HA status: " in shown and "Replication lag: " in shown


def test_ha_status_of_a_standalone_server_shows_no_none(shared_server: Server) -> None:
    shown = run_cli("ha", "status", "--data-dir", str(shared_server.data_dir), env=NARROW).stdout
    assert "None" not in shown, shown
    assert "HA status: n/a (no read-only server)" in shown and "Replication lag: no replica" in shown, shown


def test_ha_status_json_has_the_api_keys(pair: tuple[Server, Server], token: str) -> None:
    primary, _ = pair
    shown = json.loads(run_cli("ha", "status", "--json", "--data-dir", str(primary.data_dir), env=NARROW).stdout)
    api = status_of(primary, token)
    assert list(shown) == list(api)
    assert list(shown["servers"][0]) == list(api["servers"][0])
    assert {s["id"] for s in shown["servers"]} == {s["id"] for s in api["servers"]}
    assert shown["confirmed"] is not None and shown["confirmed"]["confirm_checks"] == 3


def test_alerts_show_names_the_sections_literally(pair: tuple[Server, Server]) -> None:
    """The [alerts.email] … names were eaten as Rich markup ("add , , ,  or  to safehold.toml")."""
    primary, _ = pair
    shown = run_cli("alerts", "show", "--data-dir", str(primary.data_dir), env=NARROW).stdout
    assert "no alert channel is configured" in shown, shown
    assert ("[alerts.email], [alerts.syslog], [alerts.snmp], [alerts.webhook] or [alerts.script] section to "
            "safehold.toml") in shown, shown
    body = json.loads(run_cli("alerts", "show", "--json", "--data-dir", str(primary.data_dir)).stdout)
    assert body["channels"] == [] and body["source"] == "safehold.toml" and body["version"] is None, body
    assert list(body) == ["channels", "retry", "source", "version", "updated_at", "updated_by"]


def test_ha_check_json(pair: tuple[Server, Server]) -> None:
    _, readonly = pair
    r = run_cli("ha", "check", "--json", "--data-dir", str(readonly.data_dir), check=False)
    body = json.loads(r.stdout)
    assert r.returncode == (0 if body["ok"] else 1), r.stdout + r.stderr
    assert body["checks"] and all(list(c) == ["name", "ok", "detail", "state"] for c in body["checks"]), body


# --- the read-only server's HA endpoints with the primary's tokens -----------------------------------------


def test_a_token_the_primary_issued_works_on_the_readonly_ha_endpoints(pair: tuple[Server, Server]) -> None:
    """A read-only server answers /api/v1/ha/* itself while it sends users to the primary: a session or an
    API token made there is read from its replica; once revoked there, replication deletes it here too."""
    primary, readonly = pair
    session = primary.login()
    with primary.client(session) as c:
        created = c.post("/me/tokens", json={"name": "monitoring"})
        assert created.status_code == 201, created.text
        api_token, api_id = created.json()["token"], created.json()["id"]

    def answer(token: str, path: str = "/ha/status") -> int:
        with readonly.client(token) as c:
            return c.get(path).status_code

    # replication brings the new session and token to the replica within moments
    wait_until(lambda: answer(session) == 200 and answer(api_token) == 200, timeout=20,
               what="the primary's tokens to be taken by the read-only server")
    for path in ("/ha/events", "/ha/checks"):
        assert answer(session, path) == 200 and answer(api_token, path) == 200
    with readonly.client(session) as c:
        assert c.get("/me").status_code == 307  # everything else: sent to the primary, as before
    assert answer("shs_not-a-session-anyone-made") == 401

    with primary.client(session) as c:
        assert c.delete(f"/me/tokens/{api_id}").status_code == 204
        assert c.post("/auth/logout").status_code == 204
    wait_until(lambda: answer(api_token) == 401, timeout=20, what="the revoked API token to be refused")
    wait_until(lambda: answer(session) == 401, timeout=20, what="the ended session to be refused")


# --- last seen, hysteresis, the event log as a page -------------------------------------------------------


def test_readonly_last_seen_moves_forward_and_stays_while_it_is_down(pair: tuple[Server, Server], token: str) -> None:
    """A read-only server cannot write its registry row: the HA monitor on the primary notes when it last
    answered.  While it runs, its "last seen" moves forward; stopped, it keeps the last answer's time; the
    stop is logged once it held for ha.status_confirm_checks checks, as ServerInactive and StandbyOffline."""
    primary, readonly = pair
    name = readonly.data_dir.name  # running_pair names the read-only server after its directory

    def last_seen() -> dt.datetime:
        seen = entry(status_of(primary, token), name)["last_seen"]
        assert seen is not None
        return at(seen)

    first = last_seen()
    wait_until(lambda: last_seen() > first, timeout=20, what="the read-only server's last seen to move forward")
    with primary.client(token) as c:
        before = max((e["id"] for e in c.get("/ha/events", params={"limit": 500}).json()["items"]), default=0)

    readonly.stop()
    try:
        wait_until(lambda: entry(status_of(primary, token), name)["confirmed_status"] == "inactive", timeout=30,
                   what="the read-only server to be confirmed inactive")
        stopped = last_seen()
        assert stopped > first
        wait_until(lambda: _logged(primary, token, before, "StandbyOffline") == 1, timeout=20,
                   what="the StandbyOffline event")
        assert last_seen() == stopped  # it did not answer since
        cli = json.loads(run_cli("ha", "status", "--json", "--data-dir", str(primary.data_dir)).stdout)
        assert at(entry(cli, name)["last_seen"]) == stopped
    finally:
        readonly.start()
    wait_until(lambda: last_seen() > stopped, timeout=30, what="last seen to move on after the restart")
    wait_until(lambda: entry(status_of(primary, token), name)["confirmed_status"] == "active", timeout=30,
               what="the read-only server to be confirmed active again")
    assert _logged(primary, token, before, "ServerInactive") == 1
    assert _logged(primary, token, before, "ServerActive") == 1
    _the_event_log_is_a_page_like_the_audit_trail(primary, token)


def _logged(server: Server, token: str, after: int, kind: str) -> int:
    with server.client(token) as c:
        items = c.get("/ha/events", params={"limit": 500}).json()["items"]
    return sum(1 for e in items if e["id"] > after and e["kind"] == kind)


def _the_event_log_is_a_page_like_the_audit_trail(primary: Server, token: str) -> None:
    """``/ha/events`` answers ``{items, total, limit, offset}`` as ``/audit`` does (with the events just logged)."""
    with primary.client(token) as c:
        audit = c.get("/audit", params={"limit": 1}).json()
        first = c.get("/ha/events", params={"limit": 2}).json()
        assert list(first) == list(audit) == ["items", "total", "limit", "offset"]
        assert first["total"] >= 2 and first["limit"] == 2 and first["offset"] == 0, first
        assert len(first["items"]) == 2 and first["items"][0]["id"] > first["items"][1]["id"]  # newest first
        second = c.get("/ha/events", params={"limit": 1, "offset": 1}).json()
        assert second["items"] == first["items"][1:] and second["offset"] == 1
        past = c.get("/ha/events", params={"offset": first["total"]}).json()
        assert past["items"] == [] and past["total"] == first["total"]
        assert c.get("/ha/events", params={"limit": 0}).status_code == 422


# --- the audit backlog, seen from both servers ---------------------------------------------------------------


def test_both_servers_count_the_readonly_audit_spool_alike(pair: tuple[Server, Server], token: str) -> None:
    """The read-only server's spool as the primary (its /ha/local answer), the read-only server itself (its own
    spool) and a command beside it (its own spool, never counted a second time through the server's answer)
    see it: the same numbers, per server.  In emergency mode the primary's session is still refused outside
    /api/v1/ha (a sign-out here could not end it)."""
    primary, readonly = pair
    name = readonly.data_dir.name

    def local_backlog() -> dict[str, Any]:
        with readonly.client() as c:
            return dict(c.get("/ha/local").json()["audit_backlog"])

    def mine(status: dict[str, Any]) -> dict[str, Any]:
        return dict(next(b for b in status["audit_backlog"]["servers"] if b["name"] == name))

    def alike(seen: dict[str, Any], expected: dict[str, Any]) -> None:
        backlog = seen["audit_backlog"]
        assert len(backlog["servers"]) == 1 and mine(seen)["reported"], backlog
        for key in ("pending", "shipped"):
            assert backlog[key] == mine(seen)[key] == expected[key], (key, backlog, expected)

    primary.stop()  # its app and its bundled database: the read-only server's records wait in its spool
    try:
        wait_until(lambda: serves_users_itself(readonly), timeout=30, what="read-only emergency mode")
        with readonly.client(token) as c:
            assert c.get("/me").status_code == 401
            assert c.get("/ha/status").status_code == 200
        with readonly.client() as c:
            assert c.post("/auth/login", json={"username": "admin", "password": "not-the-password"}).status_code == 401
        readonly.login()
        wait_until(lambda: local_backlog()["pending"] >= 2, timeout=20, what="two records in the spool")
        spooled = local_backlog()
        alike(status_of(readonly, token), spooled)
        alike(json.loads(run_cli("ha", "status", "--json", "--data-dir", str(readonly.data_dir)).stdout), spooled)
    finally:
        primary.start()
    wait_until(lambda: not serves_users_itself(readonly), timeout=30, what="the read-only server to redirect again")

    def period_logged() -> bool:  # the end of the emergency period is the last record the read-only server spools
        with primary.client(token) as c:
            items = c.get("/ha/events", params={"limit": 50}).json()["items"]
        return any(e["kind"] == "EmergencyMode" and "served users" in e["message"] for e in items)

    wait_until(period_logged, timeout=60, what="the emergency period in the event log")
    wait_until(lambda: local_backlog()["pending"] == 0, timeout=30, what="the spool to be shipped")
    shipped = local_backlog()
    assert shipped["shipped"] >= spooled["pending"]
    on_primary = wait_until(lambda: mine(status_of(primary, token))["reported"] and status_of(primary, token),
                            timeout=30, what="the read-only server to answer the primary")
    for seen in (on_primary, status_of(readonly, token),
                 json.loads(run_cli("ha", "status", "--json", "--data-dir", str(readonly.data_dir)).stdout)):
        alike(seen, shipped)
