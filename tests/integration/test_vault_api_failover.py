"""hvac through a read-only server, as in a failover: while the primary is up the read-only server sends
it there (307, which hvac follows with its token); once the primary's app and database are dead it
answers the read itself, in emergency mode, and its audit record reaches the primary's database exactly
once when the primary is back."""

from __future__ import annotations

from typing import Any

import hvac

from tests.integration.test_ha_failover import kill_app, kill_database
from tests.support import Server, accounts_in, serves_users_itself, wait_until


def read(server: Server, token: str, path: str) -> dict[str, Any]:
    client = hvac.Client(url=server.url, token=token, verify=server.ca)
    return client.secrets.kv.v2.read_secret_version(  # type: ignore[no-any-return]
        path=path, mount_point="safehold", raise_on_deleted_version=True)


def retrievals(primary: Server, admin: str, account_id: str, **filters: str) -> list[dict[str, Any]]:
    with primary.client(admin) as c:
        r = c.get("/audit", params={"action": "password_retrieved", "limit": 500, **filters})
    assert r.status_code == 200, r.text
    return [rec for rec in r.json()["items"] if rec["target_id"] == account_id]


def backlog(server: Server) -> int:
    with server.client() as c:
        return int(c.get("/ha/local").json()["audit_backlog"]["pending"])


def test_hvac_reads_from_the_read_only_server_redirected_then_in_emergency_mode(
        primary_and_readonly: tuple[Server, Server]) -> None:
    primary, readonly = primary_and_readonly
    admin = primary.login()
    with primary.client(admin) as c:
        made = c.post("/me/tokens", json={"name": "hvac", "days": 1})
        assert made.status_code == 201, made.text
        token = made.json()["token"]
        rid = c.post("/resources", json={"name": "ha-vault-api"}).json()["id"]
        aid = c.post(f"/resources/{rid}/accounts", json={"username": "root", "password": "ha-pw-1"}).json()["id"]
    # the token was made first: once the replica has the account, it has the token too
    wait_until(lambda: aid in accounts_in(readonly.data_dir), timeout=30, what="the replica to have the account")

    # (a) the primary is up: the read-only server sends hvac there, token and all
    wait_until(lambda: not serves_users_itself(readonly), timeout=30, what="the read-only server to redirect")
    assert read(readonly, token, "ha-vault-api/root")["data"]["data"]["password"] == "ha-pw-1"
    [redirected] = retrievals(primary, admin, aid)
    assert redirected["server_role"] == "primary" and redirected["detail"] == {"via": "vault-api"}

    # (b) the primary's app and database die: the read-only server answers hvac itself, from its replica
    kill_app(primary)
    kill_database(primary)
    wait_until(lambda: serves_users_itself(readonly), timeout=60, what="read-only emergency mode")
    assert read(readonly, token, "ha-vault-api/root")["data"]["data"]["password"] == "ha-pw-1"
    assert backlog(readonly) >= 1  # its audit record waits in the spool: no database takes it now

    # (c) the primary comes back: the spool is shipped, the read's record lands exactly once
    primary.start()
    wait_until(lambda: backlog(readonly) == 0, timeout=90, what="the audit spool to be shipped")
    admin = primary.login()
    with readonly.client() as c:
        readonly_id = c.get("/health").json()["server"]["id"]
    shipped = retrievals(primary, admin, aid, server=readonly_id)
    assert len(shipped) == 1, shipped
    assert shipped[0]["server_role"] == "readonly" and shipped[0]["detail"] == {"via": "vault-api"}
    assert len(retrievals(primary, admin, aid)) == 2  # the redirected read and the emergency one, no more
