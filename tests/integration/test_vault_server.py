"""A standalone server as a user meets it: store, retrieve, audit, restart, back up — over real HTTPS
against the server's own bundled PostgreSQL."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tarfile
import uuid
from pathlib import Path

import pytest

from safehold.crypto.keyfile import create_key_file
from tests.support import ADMIN_PASSWORD, Server, pg_dump, run_cli, seed_account, superuser_connect

SECRET = "Tr0ub4dor&3-correct-horse-battery-staple"


def test_stored_password_comes_back_audited_with_its_server(server: Server) -> None:
    token = server.login()
    _, account = seed_account(server, token, SECRET)
    with server.client(token) as c:
        r = c.get(f"/accounts/{account}/password")
        assert r.status_code == 200
        assert r.json()["password"] == SECRET
        audit = c.get("/audit", params={"action": "password_retrieved"}).json()
        health = c.get("/health").json()
    assert audit["total"] == 1
    record = audit["items"][0]
    assert record["target_id"] == account
    assert record["actor"] == "admin"
    assert record["server_id"] == health["server"]["id"]
    assert record["server_name"] == server.data_dir.name
    assert record["server_role"] == "standalone"


def test_database_dump_and_backup_hold_no_clear_password(server: Server, tmp_path: Path) -> None:
    token = server.login()
    seed_account(server, token, SECRET)
    with server.client(token) as c:
        c.patch(f"/accounts/{seed_account(server, token, SECRET + '-2', resource='db02')[1]}",
                json={"password": SECRET + "-3", "notes": "notes-" + SECRET})
    dump = pg_dump(server)
    assert b"db01.example.internal" in dump  # the dump is real and complete
    for needle in (SECRET, SECRET + "-2", SECRET + "-3", ADMIN_PASSWORD):
        assert needle.encode() not in dump

    backup = tmp_path / "vault.backup"
    server.cli("backup", "--out", str(backup))
    raw = backup.read_bytes()
    assert len(raw) > 1000
    for needle in (SECRET, SECRET + "-2", SECRET + "-3", ADMIN_PASSWORD):
        assert needle.encode() not in raw
    with tarfile.open(backup) as tar:
        assert sorted(tar.getnames()) == ["database.dump", "manifest.json"]
        key = (server.data_dir / "safehold.key").read_text().split(":", 1)[1].strip()
        assert all(key.encode() not in tar.extractfile(m).read() for m in tar.getmembers())  # type: ignore[union-attr]


def test_wrong_key_file_is_refused_at_start(server: Server, tmp_path: Path) -> None:
    server.stop()
    key = server.data_dir / "safehold.key"
    shutil.copy2(key, tmp_path / "right.key")
    key.unlink()
    create_key_file(key)  # a valid key file, of another cluster
    proc = run_cli("serve", "--data-dir", str(server.data_dir), check=False, timeout=60)
    assert proc.returncode != 0
    assert "does not match" in proc.stderr
    shutil.copy2(tmp_path / "right.key", key)
    server.start()  # the right key works again


def test_world_readable_key_is_refused(server: Server) -> None:
    server.stop()
    key = server.data_dir / "safehold.key"
    os.chmod(key, 0o644)
    proc = run_cli("serve", "--data-dir", str(server.data_dir), check=False, timeout=60)
    assert proc.returncode != 0
    assert "readable" in proc.stderr and "chmod 600" in proc.stderr
    os.chmod(key, 0o600)


def test_key_file_may_go_offline_once_started(server: Server, tmp_path: Path) -> None:
    token = server.login()
    _, account = seed_account(server, token, SECRET)
    key = server.data_dir / "safehold.key"
    shutil.move(key, tmp_path / "offline.key")
    try:
        with server.client(token) as c:
            assert c.get(f"/accounts/{account}/password").json()["password"] == SECRET
            assert c.patch(f"/accounts/{account}", json={"password": SECRET + "!"}).status_code == 200
            assert c.get(f"/accounts/{account}/password").json()["password"] == SECRET + "!"
    finally:
        shutil.move(tmp_path / "offline.key", key)


def test_restart_keeps_data_and_the_audit_chain_detects_an_edit(server: Server) -> None:
    token = server.login()
    _, account = seed_account(server, token, SECRET)
    with server.client(token) as c:
        c.get(f"/accounts/{account}/password")
    assert server.stop() == 0
    assert not (server.data_dir / "pg" / "postmaster.pid").exists(), "serve must stop the database it started"

    server.start()
    token = server.login()
    with server.client(token) as c:
        assert c.get(f"/accounts/{account}/password").json()["password"] == SECRET
        assert c.get("/audit/verify").json()["ok"] is True
    server.stop()

    ok = server.cli("audit", "verify")
    assert "intact" in ok.stdout

    server.start()
    with superuser_connect(server) as conn:
        row = conn.execute("SELECT id, seq FROM audit_log WHERE action = 'password_retrieved' "
                           "ORDER BY id LIMIT 1").fetchone()
        conn.execute("UPDATE audit_log SET actor = 'someone-else' WHERE id = %s", (row[0],))
    with server.client(server.login()) as c:
        report = c.get("/audit/verify").json()
    assert report["ok"] is False
    assert [p["record_id"] for p in report["problems"]] == [row[0]]

    bad = server.cli("audit", "verify", check=False)
    assert bad.returncode == 1
    assert f"record id {row[0]}" in bad.stderr and "altered" in bad.stderr


def test_the_command_line_exports_what_the_api_exports(shared_server: Server, admin_token: str,
                                                       tmp_path: Path) -> None:
    """'safehold audit export' writes the API's CSV byte for byte, and the same records as JSON lines."""
    reason = 'ticket "4711", on call'
    _, account = seed_account(shared_server, admin_token, SECRET, resource=f"export-{uuid.uuid4().hex[:8]}")
    with shared_server.client(admin_token) as c:
        assert c.get(f"/accounts/{account}/password", params={"reason": reason}).status_code == 200
        server_id = c.get("/health").json()["server"]["id"]
        api_csv = c.get("/audit/export", params={"server": server_id}).text
    out = tmp_path / "audit.csv"
    shared_server.cli("audit", "export", "--server", server_id, "--out", str(out))
    assert out.read_bytes().decode() == api_csv
    rows = list(csv.DictReader(io.StringIO(api_csv)))
    assert rows[-1]["target_id"] == account and json.loads(rows[-1]["detail"]) == {"reason": reason}

    lines = shared_server.cli("audit", "export", "--server", server_id, "--format", "jsonl").stdout.splitlines()
    records = [json.loads(line) for line in lines]
    assert [str(r["id"]) for r in records] == [row["id"] for row in rows]
    assert records[-1]["detail"] == {"reason": reason} and records[-1]["server_id"] == server_id


def test_deleting_audit_records_is_detected(server: Server) -> None:
    token = server.login()
    _, account = seed_account(server, token, SECRET)
    with server.client(token) as c:
        for _ in range(3):
            c.get(f"/accounts/{account}/password")
    with superuser_connect(server) as conn:
        victim = conn.execute("SELECT id FROM audit_log WHERE action = 'password_retrieved' ORDER BY id "
                              "LIMIT 1").fetchone()[0]
        conn.execute("DELETE FROM audit_log WHERE id = %s", (victim,))
    with server.client(server.login()) as c:
        report = c.get("/audit/verify").json()
    assert not report["ok"]
    assert any("missing" in p["problem"] for p in report["problems"])


def test_the_app_login_cannot_rewrite_the_audit_log(server: Server) -> None:
    import psycopg

    from safehold.config import load_settings
    from safehold.storage.db import app_target

    t = app_target(load_settings(server.data_dir))
    with psycopg.connect(host=t.host, port=t.port, user=t.user, password=t.password, dbname=t.dbname,
                         sslmode="verify-full", sslrootcert=str(t.sslrootcert)) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("UPDATE audit_log SET actor = 'x'")


def test_backup_restore_round_trip_needs_the_same_key(server: Server, tmp_path: Path) -> None:
    token = server.login()
    _, account = seed_account(server, token, SECRET)
    backup = tmp_path / "vault.backup"
    server.cli("backup", "--out", str(backup))
    with server.client(token) as c:
        c.patch(f"/accounts/{account}", json={"password": "changed-after-backup"})
    server.stop()

    other = tmp_path / "other.key"
    create_key_file(other)
    shutil.copy2(server.data_dir / "safehold.key", tmp_path / "right.key")
    shutil.copy2(other, server.data_dir / "safehold.key")
    refused = server.cli("restore", str(backup), "--yes", check=False)
    assert refused.returncode != 0 and "does not match" in refused.stderr
    shutil.copy2(tmp_path / "right.key", server.data_dir / "safehold.key")

    damaged = tmp_path / "damaged.backup"
    data = bytearray(backup.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    bad = server.cli("restore", str(damaged), "--yes", check=False)
    assert bad.returncode != 0 and ("damaged" in bad.stderr or "not a Safehold backup" in bad.stderr)

    server.cli("restore", str(backup), "--yes")
    server.start()
    with server.client(server.login()) as c:
        assert c.get(f"/accounts/{account}/password").json()["password"] == SECRET
        assert c.get("/audit/verify").json()["ok"] is True


def test_conflicts_and_bad_ids_get_clear_answers(shared_server: Server, admin_token: str) -> None:
    with shared_server.client(admin_token) as c:
        first = c.post("/resources", json={"name": "dup-host"})
        assert first.status_code == 201
        again = c.post("/resources", json={"name": "DUP-host"})
        assert again.status_code == 409 and "already exists" in again.json()["error"]["message"]
        rid = first.json()["id"]
        assert c.post(f"/resources/{rid}/accounts", json={"username": "u", "password": "p1"}).status_code == 201
        dup = c.post(f"/resources/{rid}/accounts", json={"username": "u", "password": "p2"})
        assert dup.status_code == 409
        assert c.get("/accounts/not-a-uuid/password").status_code == 404
        assert c.get("/resources/00000000-0000-0000-0000-000000000000").status_code == 404


def test_scheduled_backups_are_made_and_pruned(server: Server) -> None:
    from safehold.services.backup import read_backup
    from tests.support import wait_until

    server.stop()
    server.start(env={"SAFEHOLD_BACKUP__EVERY_MINUTES": "0.05", "SAFEHOLD_BACKUP__KEEP": "2"})
    backups = server.data_dir / "backups"
    wait_until(lambda: len(list(backups.glob("safehold-*.backup"))) >= 2, timeout=60, what="two scheduled backups")
    wait_until(lambda: server.client(server.login()).get(
        "/audit", params={"action": "backup_created", "actor": "scheduler"}).json()["total"] >= 3, timeout=60,
        what="a third scheduled backup")
    files = sorted(backups.glob("safehold-*.backup"))
    assert len(files) == 2, "older backups are pruned"
    manifest, dump = read_backup(files[-1])
    from safehold.crypto.keyfile import load_key_file

    assert dump and manifest.key_check == load_key_file(server.data_dir / "safehold.key").check_value.hex()
