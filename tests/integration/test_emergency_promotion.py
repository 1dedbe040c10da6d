"""An emergency period that ends in a promotion: the read-only server serves users itself while the primary is
down, an operator promotes it, and the period still reaches the cluster's event log — its start from the spool
the take-over ships into the promoted database, its end written there by the promoted server itself — each
once, beside the retrieval made during the period, also once."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from tests.integration.test_ha_failover import kill_app, kill_database, local
from tests.support import Server, run_cli, running_pair, serves_users_itself, wait_until


def emergency_events(server: Server) -> list[str]:
    with server.client(server.login()) as c:
        items: list[dict[str, Any]] = c.get("/ha/events", params={"limit": 200}).json()["items"]
    return [e["message"] for e in items if e["kind"] == "EmergencyMode"]


def test_an_emergency_period_ended_by_a_promotion_is_logged_once(server_root: Path) -> None:
    with running_pair(Path(tempfile.mkdtemp(dir=server_root))) as (primary, readonly):
        token = primary.login()
        with primary.client(token) as c:
            res = c.post("/resources", json={"name": "db-7"}).json()
            acct = c.post(f"/resources/{res['id']}/accounts", json={"username": "root", "password": "S3cret-7"}).json()
        wait_until(lambda: not serves_users_itself(readonly), timeout=60, what="the read-only server to redirect")
        wait_until(lambda: (local(readonly)["data_age_seconds"] or 99) < 5, timeout=60, what="the replica to catch up")

        kill_database(primary)
        kill_app(primary)
        wait_until(lambda: serves_users_itself(readonly), timeout=60, what="emergency mode")
        with readonly.client(readonly.login()) as c:
            r = c.get(f"/accounts/{acct['id']}/password", params={"reason": "during the outage"})
            assert r.status_code == 200 and r.json()["password"] == "S3cret-7", r.text

        run_cli("ha", "promote", "--data-dir", str(readonly.data_dir))
        wait_until(lambda: local(readonly)["role"] == "primary" and local(readonly)["mode"] == "read-write",
                   timeout=60, what="the read-only server to take over")
        messages = wait_until(lambda: len(m := emergency_events(readonly)) >= 2 and m, timeout=30,
                              what="the period's start and end in the event log")
        began = [m for m in messages if "began serving users in read-only emergency mode" in m]
        ended = [m for m in messages if "served users in read-only emergency mode from" in m]
        assert len(began) == 1 and len(ended) == 1, messages
        with readonly.client(readonly.login()) as c:
            records = c.get("/audit", params={"limit": 500}).json()["items"]
        retrieved = [x for x in records if x["action"] == "password_retrieved" and x["target_id"] == acct["id"]]
        assert len(retrieved) == 1, retrieved
        assert len(emergency_events(readonly)) == 2  # nothing logged twice meanwhile
