"""Multi-server stories: a primary, a secondary and a read-only server, each its own process with its
own data directory on 127.0.0.1, and what users get while servers die and come back."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from safehold.config import load_settings
from safehold.runtime import database
from tests.support import Server, running_topology, wait_until


@pytest.fixture()
def topology(server_root: Path) -> Iterator[tuple[Server, Server, Server]]:
    with running_topology(Path(tempfile.mkdtemp(dir=server_root))) as servers:
        yield servers


def _redirect_of(readonly: Server) -> str | None:
    with readonly.client() as c:
        r = c.get("/me")
    return r.headers.get("location") if r.status_code == 307 else None


def test_readonly_redirects_then_serves_passwords_in_emergency_mode(
        topology: tuple[Server, Server, Server]) -> None:
    primary, secondary, readonly = topology
    token = primary.login()
    with primary.client(token) as c:
        rid = c.post("/resources", json={"name": "db-story"}).json()["id"]
        aid = c.post(f"/resources/{rid}/accounts", json={"username": "root", "password": "story-pw-1"}).json()["id"]

    # (a) written on the primary, read on the secondary; the read-only server sends users to the primary
    with secondary.client(secondary.login()) as c:
        assert c.get(f"/accounts/{aid}/password").json()["password"] == "story-pw-1"
    wait_until(lambda: _redirect_of(readonly) == f"{primary.url}/api/v1/me", timeout=20,
               what="the read-only server to redirect to the primary")

    # (b) the primary app dies: users are sent to the secondary
    primary.proc.kill()  # type: ignore[union-attr]
    primary.proc.wait()  # type: ignore[union-attr]
    wait_until(lambda: _redirect_of(readonly) == f"{secondary.url}/api/v1/me", timeout=20,
               what="the read-only server to redirect to the secondary")

    # ... and the secondary too: the read-only server serves passwords itself and refuses writes
    secondary.proc.kill()  # type: ignore[union-attr]
    secondary.proc.wait()  # type: ignore[union-attr]
    wait_until(lambda: _redirect_of(readonly) is None, timeout=20, what="read-only emergency mode")
    ro_token = readonly.login()
    with readonly.client(ro_token) as c:
        r = c.get(f"/accounts/{aid}/password")
        assert r.status_code == 200 and r.json()["password"] == "story-pw-1"
        assert r.headers["x-safehold-mode"] == "read-only-emergency"
        refused = c.post("/resources", json={"name": "not-now"})
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "read_only"
        assert "read-only emergency mode" in refused.json()["error"]["message"]

    # (c) the primary database dies too: the read-only server keeps serving from its replica, and
    # what happens on it is spooled (nothing can be shipped now)
    primary_db = database.manager(load_settings(primary.data_dir))
    primary_db.kill()
    with readonly.client(ro_token) as c:
        assert c.get(f"/accounts/{aid}/password").json()["password"] == "story-pw-1"
    wait_until(lambda: _backlog(readonly) >= 1, timeout=20, what="a pending spooled record")

    # (d) the read-only server restarts with records still pending; they survive it
    readonly.stop()
    readonly.start()
    with readonly.client() as c:
        assert c.post("/auth/login", json={"username": "admin", "password": "wrong-password"}).status_code == 401
    with readonly.client(readonly.login()) as c:
        assert c.get(f"/accounts/{aid}/password").json()["password"] == "story-pw-1"
    pending = _backlog(readonly)
    assert pending >= 4

    # the database comes back: the replica catches up, the spool is shipped, each record exactly once
    primary.cli("db", "start")
    wait_until(lambda: _backlog(readonly) == 0, timeout=60, what="the audit spool to be shipped")
    primary.start()
    with primary.client(primary.login()) as c:
        ro_id = readonly.client().get("/health").json()["server"]["id"]
        records = c.get("/audit", params={"server": ro_id, "limit": 500}).json()["items"]
        seqs = sorted(r["seq"] for r in records)
        assert seqs == list(range(1, len(seqs) + 1)), "each spooled record exactly once, none missing"
        actions = [r["action"] for r in records]
        assert actions.count("password_retrieved") == 3
        assert actions.count("login") == 2 and actions.count("login_failed") == 1
        assert {r["server_role"] for r in records} == {"readonly"}
        assert c.get("/audit/verify").json()["ok"] is True
        wait_until(lambda: c.get("/ha/status").json()["replication_status"] == "Alive", timeout=30,
                   what="replication to be Alive again")


def _backlog(server: Server) -> int:
    with server.client() as c:
        return int(c.get("/ha/local").json()["audit_backlog"]["pending"])


def test_cutting_the_replica_off_turns_both_statuses_failed_then_alive_each_logged_once(
        primary_and_readonly: tuple[Server, Server]) -> None:
    primary, readonly = primary_and_readonly
    with primary.client(primary.login()) as c:
        def statuses() -> tuple[str, str]:
            st = c.get("/ha/status").json()
            return st["ha_status"], st["replication_status"]

        wait_until(lambda: statuses() == ("Alive", "Alive"), timeout=20, what="both statuses Alive")
        # what happened while the read-only server was joining (it may have been Failed for a moment) is not
        # what this test looks at: only the events logged from here on
        def settled() -> bool:  # the monitor has logged the Alive state too (events come newest first)
            events = c.get("/ha/events").json()["items"]
            last = {p: next((e["kind"] for e in events if e["kind"].startswith(p)), None)
                    for p in ("HA", "Replication")}
            return all(k is None or k.endswith("Alive") for k in last.values())

        wait_until(settled, timeout=20, what="the monitor to log the Alive state")
        before = max((e["id"] for e in c.get("/ha/events").json()["items"]), default=0)

        def since() -> list[dict]:
            return [e for e in c.get("/ha/events").json()["items"] if e["id"] > before]

        def logged(kind: str) -> int:
            return sum(1 for e in since() if e["kind"] == kind)

        replica = database.manager(load_settings(readonly.data_dir))
        replica.kill()  # the replica is cut off
        wait_until(lambda: statuses() == ("Failed", "Failed"), timeout=30, what="both statuses Failed")
        wait_until(lambda: logged("HAFailed") == 1 and logged("ReplicationFailed") == 1, timeout=30,
                   what="the Failed transitions in the HA event log")
        readonly.cli("db", "start")  # restored
        wait_until(lambda: statuses() == ("Alive", "Alive"), timeout=30, what="both statuses Alive again")
        wait_until(lambda: logged("HAAlive") == 1 and logged("ReplicationAlive") == 1, timeout=30,
                   what="the Alive transitions in the HA event log")
        events = since()
        assert [e["kind"] for e in events].count("HAFailed") == 1, events  # each transition once
        assert [e["kind"] for e in events].count("ReplicationFailed") == 1, events
