"""The HA view of a single server: the registry, heartbeats, renaming, and the CLI table."""

from __future__ import annotations

from tests.support import Server, wait_until


def test_status_of_a_standalone_server(shared_server: Server, admin_token: str) -> None:
    with shared_server.client(admin_token) as c:
        first = c.get("/ha/status").json()
        me = first["server"]
        assert [s["id"] for s in first["servers"]] == [me["id"]]
        assert first["servers"][0]["status"] == "active"
        assert first["ha_status"] is None and first["replication_status"] is None  # no read-only server
        assert first["databases"][0]["role"] == "primary"
        assert first["audit_backlog"]["pending"] == 0

        def session_counted() -> bool:
            rows = {s["id"]: s for s in c.get("/ha/status").json()["servers"]}
            with shared_server.client(admin_token) as c2:
                return bool(c2.get("/health").status_code == 200 and rows[me["id"]]["sessions"] >= 1)

        wait_until(session_counted, timeout=20, what="the admin's session to be counted")

        renamed = c.patch(f"/ha/servers/{me['id']}", json={"name": "Primary (rack 4)"})
        assert renamed.status_code == 200, renamed.text
        assert c.get("/ha/status").json()["servers"][0]["name"] == "Primary (rack 4)"
        assert c.patch("/ha/servers/00000000-0000-0000-0000-000000000000", json={"name": "x"}).status_code == 404
        assert c.get("/audit", params={"action": "server_renamed"}).json()["total"] == 1

    with shared_server.client() as anonymous:
        assert anonymous.get("/ha/status").status_code == 401
        local = anonymous.get("/ha/local").json()
        assert local["role"] == "standalone" and local["audit_backlog"] is None


def test_ha_status_command(server: Server) -> None:
    server.stop()
    table = server.cli("ha", "status").stdout
    assert "Servers" in table and "Databases" in table and "active" in table
    assert "no read-only server" in table
