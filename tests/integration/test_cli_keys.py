"""Key rotation, import/export and user administration from the command line, on a real server."""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

from tests.support import ADMIN_PASSWORD, Server, seed_account


def test_key_rotate_rewraps_and_the_old_key_no_longer_opens(server: Server, tmp_path: Path) -> None:
    token = server.login()
    _, account = seed_account(server, token, "before-rotation-secret")
    old_key = tmp_path / "old.key"
    shutil.copy2(server.data_dir / "safehold.key", old_key)

    rotated = server.cli("key", "rotate")  # re-wrap while the server keeps serving
    assert "new master key" in rotated.stdout
    kept = sorted(server.data_dir.glob("safehold.key.old-*"))
    assert len(kept) == 1 and kept[0].read_text() == old_key.read_text()
    assert (server.data_dir / "safehold.key").read_text() != old_key.read_text()
    with server.client(token) as c:
        assert c.get(f"/accounts/{account}/password").json()["password"] == "before-rotation-secret"

    server.stop()
    reenc = server.cli("key", "rotate", "--reencrypt")
    assert "re-encrypted" in reenc.stdout
    server.start()
    with server.client(server.login()) as c:
        assert c.get(f"/accounts/{account}/password").json()["password"] == "before-rotation-secret"
    server.stop()

    shutil.copy2(old_key, server.data_dir / "safehold.key")
    refused = server.cli("audit", "verify", check=False)
    assert refused.returncode != 0 and "does not match" in refused.stderr


def test_reencrypt_refuses_while_serving(server: Server) -> None:
    proc = server.cli("key", "rotate", "--reencrypt", check=False)
    assert proc.returncode != 0 and "running" in proc.stderr
    assert not list(server.data_dir.glob("safehold.key.new")), "a refused rotation leaves nothing behind"


def test_export_needs_reauthentication_and_import_round_trips(server: Server) -> None:
    token = server.login()
    seed_account(server, token, "export-me-1", resource="web01", username="deploy")
    with server.client(token) as c:
        assert c.post("/export", json={"password": "not-my-password"}).status_code == 401
        r = c.post("/export", json={"password": ADMIN_PASSWORD})
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(r.text)))
        assert [(x["resource"], x["username"], x["password"]) for x in rows] == [("web01", "deploy", "export-me-1")]
        assert c.get("/audit", params={"action": "exported"}).json()["total"] == 1

        new = "resource,type,address,description,tags,username,password,notes\n" \
              "web01,server,,,,deploy,export-me-2,\nnew-host,server,10.1.1.1,,lab;prod,admin,fresh-1,hello\n"
        imported = c.post("/import", content=new.encode(), headers={"content-type": "text/csv"})
        assert imported.status_code == 200, imported.text
        assert imported.json() == {"resources_created": 1, "accounts_created": 1, "accounts_updated": 1}
        bad = c.post("/import", content=b"resource,username\nx,y\n", headers={"content-type": "text/csv"})
        assert bad.status_code == 422 and "password" in bad.json()["error"]["message"]

        web01 = c.get("/resources", params={"q": "web01"}).json()["items"][0]
        account = c.get(f"/resources/{web01['id']}").json()["accounts"][0]
        assert c.get(f"/accounts/{account['id']}/password").json()["password"] == "export-me-2"
        history = c.get(f"/accounts/{account['id']}/history", params={"reveal": "true"}).json()
        assert [h["password"] for h in history] == ["export-me-1"]


def test_cli_user_administration_and_tokens(server: Server) -> None:
    added = server.cli("user", "add", "operator", "--role", "password_administrator")
    assert "shown once" in added.stdout
    listing = server.cli("user", "list")
    assert "operator" in listing.stdout and "password_administrator" in listing.stdout
    token = server.cli("token", "create", "--user", "operator", "--name", "ci").stdout.strip()
    with server.client(token) as c:
        me = c.get("/me").json()
        assert me["username"] == "operator" and me["role"] == "password_administrator"
    server.cli("user", "disable", "operator")
    with server.client(token) as c:
        assert c.get("/me").status_code == 401
    missing = server.cli("user", "disable", "ghost", check=False)
    assert missing.returncode == 1 and "no user named 'ghost'" in missing.stderr
    last_admin = server.cli("user", "delete", "admin", check=False)
    assert last_admin.returncode == 1 and "last active administrator" in last_admin.stderr
