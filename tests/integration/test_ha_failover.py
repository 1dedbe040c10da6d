"""Failover stories, each server its own process on 127.0.0.1: promotion after the primary's database
dies, fencing of the old primary when it comes back, and its rejoin as a replica of the new primary."""

from __future__ import annotations

import json
import os
import signal
import tempfile
from pathlib import Path

from tests.support import Server, app_connect, run_cli, running_topology, wait_until


def kill_database(server: Server) -> None:
    pid = int((server.data_dir / "pg" / "postmaster.pid").read_text().split()[0])
    os.kill(pid, signal.SIGKILL)


def kill_app(server: Server) -> None:
    assert server.proc is not None
    server.proc.kill()
    server.proc.wait()
    server.proc = None


def local(server: Server) -> dict:
    with server.client() as c:
        return c.get("/ha/local").json()


def resources(data_dir: Path) -> set[str]:
    with app_connect(data_dir) as conn:
        return {r[0] for r in conn.execute("SELECT name FROM resources")}


def vault_digest(data_dir: Path) -> dict[str, str]:
    """A digest of every table's rows: what the server 'holds'."""
    with app_connect(data_dir) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename")]
        return {t: conn.execute(f"SELECT coalesce(md5(string_agg(md5(t::text), ',' ORDER BY md5(t::text))), '') "  # noqa: S608
                                f"FROM {t} AS t").fetchone()[0] for t in tables}


def test_promote_fence_rejoin(primary_and_readonly: tuple[Server, Server]) -> None:
    primary, readonly = primary_and_readonly
    token = primary.login()
    with primary.client(token) as c:
        assert c.post("/resources", json={"name": "before-failover"}).status_code == 201
    wait_until(lambda: "before-failover" in resources(readonly.data_dir), what="the replica to have the resource")

    # the read-only server goes away; the primary takes a change that never reaches it
    readonly.stop()
    with primary.client(token) as c:
        assert c.post("/resources", json={"name": "only-on-old-primary"}).status_code == 201

    # the primary's database and app die; the read-only server comes back and is promoted
    kill_database(primary)
    kill_app(primary)
    readonly.start()
    promoted = run_cli("ha", "promote", "--data-dir", str(readonly.data_dir))
    assert "acting primary (generation 2)" in promoted.stdout, promoted.stdout
    wait_until(lambda: local(readonly)["role"] == "primary" and local(readonly)["mode"] == "read-write",
               timeout=30, what="the running read-only server to take over")
    new_token = readonly.login()
    with readonly.client(new_token) as c:
        assert c.post("/resources", json={"name": "after-failover"}).status_code == 201
        events = c.get("/ha/events").json()["items"]
    failover = [e for e in events if e["kind"] == "Failover"]
    assert len(failover) == 1 and failover[0]["args"] == [readonly.data_dir.name, primary.data_dir.name], events

    # the old primary comes back: fenced before it writes anything
    primary.start()
    report = local(primary)
    assert report["mode"] == "fenced" and report["generation"] == 1, report
    assert report["fence"]["generation"] == 2 and report["fence"]["acting_primary_url"] == readonly.url
    held = vault_digest(primary.data_dir)
    with primary.client(token) as c:
        r = c.post("/resources", json={"name": "split-brain"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "fenced", r.text
        assert readonly.url in r.json()["error"]["message"]
        # signing in changes no shared data: the fenced server sends it on to the acting primary
        r = c.post("/auth/login", json={"username": "admin", "password": "x"})
        assert r.status_code == 307 and r.headers["location"].startswith(readonly.url), r.headers
    with app_connect(primary.data_dir) as conn:  # its database refuses writes too
        assert conn.execute("SHOW default_transaction_read_only").fetchone()[0] == "on"
    assert vault_digest(primary.data_dir) == held, "the fenced server's data changed"
    assert "split-brain" not in resources(primary.data_dir)

    # rejoin: the old primary becomes a replica of the new one; what only it had is exported
    primary.stop()
    out = run_cli("ha", "rejoin", "--data-dir", str(primary.data_dir), "--from", readonly.url, "--yes")
    assert "rejoined as a read-only server (pg_rewind)" in out.stdout, out.stdout + out.stderr
    exported = list(primary.data_dir.glob("rejoin-divergent-*.jsonl"))
    assert len(exported) == 1 and oct(exported[0].stat().st_mode & 0o777) == "0o600"
    rows = [json.loads(line) for line in exported[0].read_text().splitlines()]
    assert any(r["table"] == "resources" and r["row"]["name"] == "only-on-old-primary" for r in rows), rows
    primary.start()
    assert local(primary)["role"] == "readonly"
    with readonly.client(new_token) as c:
        assert c.post("/resources", json={"name": "after-rejoin"}).status_code == 201
    wait_until(lambda: resources(primary.data_dir) == resources(readonly.data_dir)
               and "after-rejoin" in resources(primary.data_dir), timeout=30, what="the data to converge")
    assert "only-on-old-primary" not in resources(primary.data_dir)
    assert "after-failover" in resources(primary.data_dir)


def test_rejoin_a_lost_readonly_server_from_a_pack(primary_and_readonly: tuple[Server, Server]) -> None:
    primary, readonly = primary_and_readonly
    readonly.stop()
    token = primary.login()
    with primary.client(token) as c:
        assert c.post("/resources", json={"name": "while-away"}).status_code == 201
    pack, passphrase = readonly.data_dir.with_name("rejoin.pack"), readonly.data_dir.with_name("rejoin.passphrase")
    passphrase.write_text("rejoin-passphrase-long-enough")
    primary.cli("ha", "pack", "--readonly-host", "127.0.0.1", "--out", str(pack), "--passphrase-file", str(passphrase))
    bad = run_cli("ha", "rejoin", "--data-dir", str(readonly.data_dir), "--from", str(pack), "--passphrase-file",
                  str(primary.data_dir / "safehold.toml"), "--yes", check=False)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    out = run_cli("ha", "rejoin", "--data-dir", str(readonly.data_dir), "--from", str(pack), "--passphrase-file",
                  str(passphrase), "--yes")
    assert "rejoined as a read-only server" in out.stdout, out.stdout + out.stderr
    readonly.start()
    wait_until(lambda: "while-away" in resources(readonly.data_dir), timeout=30, what="the replica to catch up")
    with primary.client(token) as c:
        assert c.post("/resources", json={"name": "after-rejoin"}).status_code == 201
    wait_until(lambda: resources(readonly.data_dir) == resources(primary.data_dir), timeout=30,
               what="the data to converge")


def test_a_secondary_follows_the_new_primary_after_rejoin(server_root: Path) -> None:
    with running_topology(Path(tempfile.mkdtemp(dir=server_root))) as (primary, secondary, readonly):
        token = primary.login()
        with primary.client(token) as c:
            assert c.post("/resources", json={"name": "before"}).status_code == 201
        wait_until(lambda: "before" in resources(readonly.data_dir), what="the replica to have it")
        kill_database(primary)
        kill_app(primary)
        run_cli("ha", "promote", "--data-dir", str(readonly.data_dir))
        wait_until(lambda: local(readonly)["role"] == "primary", timeout=30, what="the take-over")
        secondary.stop()
        out = run_cli("ha", "rejoin", "--data-dir", str(secondary.data_dir), "--from", readonly.url, "--yes")
        assert "rejoined as a secondary" in out.stdout, out.stdout + out.stderr
        secondary.start()
        with secondary.client(secondary.login()) as c:
            assert c.post("/resources", json={"name": "via-secondary"}).status_code == 201
        assert "via-secondary" in resources(readonly.data_dir)
        assert local(secondary)["generation"] == 2 and local(secondary)["mode"] == "read-write"
