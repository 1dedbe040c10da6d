"""Safehold on a real Patroni cluster (etcd, two PostgreSQL members, synchronous mode): two app servers and
an emergency read-only server, each its own process, while the engine's leader is killed, the app servers die
and come back (issue 11).

The engine owns failover: Safehold never promotes, fences or restarts anything here.  What must hold:
writes through both app servers are accepted again after the leader's kill without restarting a Safehold
process, no request gets a 500, no acknowledged write is lost (synchronous mode), the read-only server
serves passwords from a replica when no app server answers and ships its spool exactly once when they are
back, every audit chain verifies, and a backup taken through the URL restores through it.
"""

from __future__ import annotations

import contextlib
import secrets
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.patroni_support import PatroniCluster, cluster_fixture
from tests.support import Server, run_cli, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

patroni_cluster = cluster_fixture(n=2, synchronous_mode=True)

FAST = {"SAFEHOLD_HA__CHECK_INTERVAL": "0.5", "SAFEHOLD_HA__PEER_TIMEOUT": "1", "SAFEHOLD_LOG_LEVEL": "INFO",
        # a request's database calls are abandoned after 5 s (the default is 20 s), shorter than the writers'
        # HTTP timeout, so that a frozen database host shows as 503 answers rather than requests with no answer
        "SAFEHOLD_DATABASE__OPERATION_TIMEOUT": "5", "SAFEHOLD_DATABASE__CONNECT_TIMEOUT": "2"}


@dataclass
class OnPatroni:
    cluster: PatroniCluster
    app1: Server
    app2: Server
    ro: Server
    key: Path

    def servers(self) -> list[Server]:
        return [self.app1, self.app2, self.ro]


def _join(server: Server, cluster_url: str, key: Path, *extra: str) -> None:
    run_cli("join", "--data-dir", str(server.data_dir), "--database-url", cluster_url, "--key-file", str(key),
            "--port", str(server.port), "--name", server.data_dir.name, *extra)


@pytest.fixture(scope="module")
def on_patroni(patroni_cluster: PatroniCluster, server_root: Path) -> Iterator[OnPatroni]:
    base = Path(tempfile.mkdtemp(dir=server_root))
    app1, app2, ro = Server(base / "app1"), Server(base / "app2"), Server(base / "ro")
    try:
        # the first app server makes the cluster (libpq's multi-host form) ...
        app1.init("--database-url", patroni_cluster.url("read-write", form="hosts"))
        key = app1.data_dir / "safehold.key"
        app1.start(env=FAST)
        # ... the second joins with SQLAlchemy's form, the read-only server with a replica-only URL
        _join(app2, patroni_cluster.url("read-write", form="sqlalchemy"), key)
        _join(ro, patroni_cluster.url("standby", form="query"), key, "--readonly")
        app2.start(env=FAST)
        ro.start(env=FAST)
        yield OnPatroni(patroni_cluster, app1, app2, ro, key)
    finally:
        for s in (ro, app2, app1):
            s.cleanup()


@dataclass
class Writer:
    """Creates accounts through one app server until told to stop; remembers what was acknowledged."""

    server: Server
    token: str
    resource_id: str
    acked: list[str] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with self.server.client(self.token) as c:
            n = 0
            while not self.stop.is_set():
                n += 1
                name = f"{self.server.data_dir.name}-{n}"
                try:
                    r = c.post(f"/resources/{self.resource_id}/accounts",
                               json={"username": name, "password": secrets.token_urlsafe(12)}, timeout=15)
                except httpx.HTTPError:
                    self.statuses.append(0)  # no answer: not acknowledged
                    continue
                self.statuses.append(r.status_code)
                if r.status_code == 201:
                    self.acked.append(name)
                elif r.status_code == 503:
                    self.stop.wait(0.2)


def _verify(server: Server) -> None:
    out = run_cli("audit", "verify", "--data-dir", str(server.data_dir))
    assert "audit chain intact" in out.stdout, out.stdout + out.stderr


def test_writes_survive_the_engines_failover_with_nothing_lost(on_patroni: OnPatroni) -> None:
    cluster, app1, app2 = on_patroni.cluster, on_patroni.app1, on_patroni.app2
    token = app1.login()
    with app1.client(token) as c:
        rid = c.post("/resources", json={"name": "db-on-patroni"}).json()["id"]
    with app2.client(token) as c:  # a session made on one app server is good on the other (it is in the database)
        assert c.get(f"/resources/{rid}").status_code == 200
        # the primary database, as the status shows it: the engine's members (whichever is writable)
        db = c.get("/ha/status").json()["databases"][0]
        assert (db["host"], db["port"]) == (",".join("127.0.0.1" for _ in cluster.ports), cluster.ports[0])

    writers = [Writer(app1, token, rid), Writer(app2, token, rid)]
    threads = [threading.Thread(target=w.run, daemon=True) for w in writers]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: all(len(w.acked) >= 5 for w in writers), timeout=60, what="writes through both servers")
        old = cluster.kill_leader()
        before = [len(w.acked) for w in writers]
        new = cluster.wait_leader(exclude={old})
        # accepted again, without restarting any Safehold process
        wait_until(lambda: all(len(w.acked) >= b + 5 for w, b in zip(writers, before, strict=True)), timeout=120,
                   what=f"writes through both app servers after {new} took over")
    finally:
        for w in writers:
            w.stop.set()
        for t in threads:
            t.join(30)
    assert new != old
    for w in writers:
        assert 500 not in w.statuses and set(w.statuses) <= {0, 201, 503}, sorted(set(w.statuses))
        assert w.statuses.count(201) < len(w.statuses), "the failover was felt: some writes were refused"
    with app2.client(token) as c:
        listed = {a["username"] for a in c.get(f"/resources/{rid}").json()["accounts"]}
    lost = [name for w in writers for name in w.acked if name not in listed]
    assert lost == [], f"{len(lost)} acknowledged write(s) lost: {lost[:10]}"
    for s in (app1, app2):
        assert s.proc is not None and s.proc.poll() is None, "no Safehold process was restarted"
    _verify(app1)

    # the schedules run on exactly one app server: one advisory lock, on the new leader
    with psycopg.connect(cluster.superuser_url(dbname=cluster.dbname), autocommit=True, connect_timeout=10) as conn:
        def holders() -> int:
            row = conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted").fetchone()
            return int(row[0]) if row else -1

        wait_until(lambda: holders() == 1, timeout=30, what="one schedules lease holder on the new leader")
        seen = {holders() for _ in range(10) if not threading.Event().wait(0.3)}
        assert seen == {1}, seen

    # the old leader comes back as a replica (the read-only server's kind of database again)
    cluster.start_member(old)
    cluster.wait_replicas_streaming()


def _backlog(server: Server) -> int:
    with server.client() as c:
        return int(c.get("/ha/local").json()["audit_backlog"]["pending"])


def _redirect_of(ro: Server) -> str | None:
    with ro.client() as c:
        r = c.get("/me")
    return r.headers.get("location") if r.status_code == 307 else None


def test_the_readonly_server_serves_when_no_app_server_answers_and_ships_its_spool_once(
        on_patroni: OnPatroni) -> None:
    cluster, app1, app2, ro = on_patroni.cluster, on_patroni.app1, on_patroni.app2, on_patroni.ro
    token = app1.login()
    with app1.client(token) as c:
        rid = c.post("/resources", json={"name": "db-emergency"}).json()["id"]
        aid = c.post(f"/resources/{rid}/accounts", json={"username": "root", "password": "ro-story-pw"}).json()["id"]
    wait_until(lambda: (_redirect_of(ro) or "").startswith((app1.url, app2.url)), timeout=30,
               what="the read-only server to redirect to an app server")

    for s in (app1, app2):  # both app servers die at once
        assert s.proc is not None
        s.proc.kill()
        s.proc.wait()
    wait_until(lambda: _redirect_of(ro) is None, timeout=30, what="read-only emergency mode")
    reason = f"emergency-{secrets.token_hex(4)}"
    with ro.client(ro.login()) as c:
        def served() -> bool:  # the replica has the account (synchronous mode: it had it before the kill)
            r = c.get(f"/accounts/{aid}/password", params={"reason": reason})
            return r.status_code == 200 and r.json()["password"] == "ro-story-pw"

        wait_until(served, timeout=30, what="the password from the replica")
        for _ in range(2):
            assert served()
        assert c.post("/resources", json={"name": "not-now"}).status_code == 503
    assert _backlog(ro) >= 3

    for s in (app1, app2):
        s.start(env=FAST)
    wait_until(lambda: _backlog(ro) == 0, timeout=90, what="the spool to be shipped")
    with psycopg.connect(cluster.url("read-write"), connect_timeout=10) as conn:
        count = conn.execute("SELECT count(*) FROM audit_log WHERE action = 'password_retrieved' "
                             "AND detail->>'reason' = %s", (reason,)).fetchone()
    assert count is not None and count[0] == 3, "each served password audited exactly once"
    wait_until(lambda: (_redirect_of(ro) or "").startswith((app1.url, app2.url)), timeout=30,
               what="the read-only server to redirect again")
    _verify(app2)


def test_backup_and_restore_through_the_url(on_patroni: OnPatroni, server_root: Path) -> None:
    app1, app2, ro = on_patroni.app1, on_patroni.app2, on_patroni.ro
    token = app1.login()
    with app1.client(token) as c:
        rid = c.post("/resources", json={"name": "kept-by-the-backup"}).json()["id"]
    out = Path(tempfile.mkdtemp(dir=server_root)) / "cluster.backup"
    app1.cli("backup", "--out", str(out))
    with app2.client(token) as c:
        later = c.post("/resources", json={"name": "made-after-the-backup"}).json()["id"]

    for s in (ro, app2, app1):  # a restore needs every server of the cluster stopped
        s.stop()
    app1.cli("restore", str(out), "--yes")
    for s in (app1, app2, ro):
        s.start(env=FAST)
    token = app1.login()  # the backup's sessions: a new one
    with app2.client(token) as c:
        assert c.get(f"/resources/{rid}").status_code == 200
        assert c.get(f"/resources/{later}").status_code == 404
    _verify(app1)


def test_join_refuses_bad_input_and_the_bundled_ha_commands_point_at_the_engine(
        on_patroni: OnPatroni, server_root: Path) -> None:
    cluster, app1 = on_patroni.cluster, on_patroni.app1
    base = Path(tempfile.mkdtemp(dir=server_root))
    url = cluster.url("read-write")

    def join(data_dir: Path, *args: str) -> str:
        r = run_cli("join", "--data-dir", str(data_dir), *args, check=False)
        assert r.returncode != 0, r.stdout
        assert "Traceback" not in r.stderr and "Error:" not in r.stderr.replace("error:", "")
        return r.stdout + r.stderr

    from safehold.crypto.keyfile import create_key_file

    other_key = base / "other.key"
    create_key_file(other_key)
    said = join(base / "a", "--database-url", url, "--key-file", str(other_key))
    assert "does not match" in said and not (base / "a").exists()
    said = join(base / "b", "--database-url", "postgresql://safehold:s3cret-pw@127.0.0.1:99999/safehold",
                "--key-file", str(on_patroni.key))
    assert "invalid port number" in said and "s3cret-pw" not in said
    said = join(base / "c", "--database-url", url, "--key-file", str(on_patroni.key), "--primary-url", url)
    assert "--primary-url is for a read-only server" in said
    (base / "d").mkdir()
    (base / "d" / "something").write_text("x")
    assert "not empty" in join(base / "d", "--database-url", url, "--key-file", str(on_patroni.key))
    wrong_pw = cluster.url("read-write", password="not-the-password")
    said = join(base / "e", "--database-url", wrong_pw, "--key-file", str(on_patroni.key))
    assert "password authentication failed" in said and "not-the-password" not in said

    second = Server(base / "second-init")
    r = run_cli("init", "--data-dir", str(second.data_dir), "--port", str(second.port), "--database-url", url,
                check=False)
    assert r.returncode != 0 and "already holds a Safehold cluster" in r.stderr and "safehold join" in r.stderr

    for args, needle in ((("ha", "pack", "--readonly-host", "127.0.0.1", "--out", str(base / "x.pack")), "safehold join --readonly"),
                         (("ha", "switchover", "--to", "ro"), "owns its switchover"),
                         (("ha", "failover", "--enable"), "owns failover"),
                         (("ha", "sync", "--on"), "synchronous_mode")):
        r = app1.cli(*args, check=False)
        assert r.returncode != 0, args
        assert needle in r.stderr + r.stdout, (args, r.stdout, r.stderr)


def _signal_member(cluster: PatroniCluster, name: str, sig: int) -> None:
    """Send ``sig`` to a member's Patroni (its process group) and to its PostgreSQL: the postmaster and every
    child of it (each backend of the bundled build leads a session of its own, so no group holds them all)."""
    import os

    m = cluster.member(name)
    if m.proc is not None:
        os.killpg(m.proc.pid, sig)
    postmaster = m.postmaster_pid()
    if postmaster is None:
        return
    pids = [postmaster]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == postmaster:  # the parent's pid
                pids.append(int(entry.name))
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def test_a_frozen_leader_does_not_freeze_the_app_servers(on_patroni: OnPatroni) -> None:
    """The leader's host stops (SIGSTOP of its Patroni and its PostgreSQL: connections stay open, nothing
    answers): once the engine has failed over, the app servers write again, without a restart."""
    import signal

    cluster, app1 = on_patroni.cluster, on_patroni.app1
    for s in on_patroni.servers():
        if s.proc is None or s.proc.poll() is not None:
            s.start(env=FAST)
    cluster.wait_replicas_streaming()
    # the worst case: the frozen leader is the first host of the URL, so every new connection tries it first
    first = cluster.names[0]
    leader = cluster.wait_leader()
    if leader != first:
        r = httpx.post(f"{cluster.member(leader).rest_url}/switchover", json={"leader": leader, "candidate": first},
                       timeout=60, trust_env=False)
        assert r.status_code == 200, r.text
        wait_until(lambda: cluster.leader() == first, timeout=60, what=f"{first} to lead")
        cluster.wait_replicas_streaming()
    token = app1.login()
    writer = Writer(app1, token, "")
    with app1.client(token) as c:
        writer.resource_id = c.post("/resources", json={"name": "db-frozen"}).json()["id"]
    thread = threading.Thread(target=writer.run, daemon=True)
    thread.start()
    frozen = first
    try:
        wait_until(lambda: len(writer.acked) >= 3, timeout=30, what="writes before the freeze")
        _signal_member(cluster, frozen, signal.SIGSTOP)
        before = len(writer.acked)
        cluster.wait_leader(exclude={frozen}, timeout=120)
        wait_until(lambda: len(writer.acked) >= before + 3, timeout=120, what="writes on the new leader")
    finally:
        writer.stop.set()
        _signal_member(cluster, frozen, signal.SIGCONT)
        thread.join(30)
    assert 500 not in writer.statuses
    # the requests that met the frozen database were answered (503), not left hanging, and the pool replaced
    assert "the database did not answer within 5 s: the connection pool is replaced" in app1.log()
    assert 503 in writer.statuses
