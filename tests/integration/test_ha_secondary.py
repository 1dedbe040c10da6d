"""A secondary server, as real processes on 127.0.0.1: 'ha add-secondary' on a running primary,
'ha join', both serving the same data; the refusals of 'ha join'; the schedules lease.

Every process is stopped by its fixture's finalizer (or the test's own ``finally``) even when a
test fails; data directories live under the session's ``server_root``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from safehold.config import load_settings
from safehold.crypto.keyfile import create_key_file
from safehold.domain import ServerRole
from safehold.ha.setupfile import add_bytes, payload, read_setup_file, write_setup_file
from tests.support import (
    Server,
    copy_key_file,
    join_cli,
    make_secondary,
    seed_account,
    superuser_connect,
    tree_snapshot,
    wait_until,
)

# --- the topology: a primary and its secondary ------------------------------------------


@dataclass(frozen=True)
class Topology:
    root: Path
    primary: Server
    secondary: Server
    setup: Path
    passphrase: Path
    key: Path


@pytest.fixture(scope="module")
def topology(server_root: Path) -> Iterator[Topology]:
    root = Path(tempfile.mkdtemp(dir=server_root, prefix="secondary-"))
    primary = Server(root / "primary")
    secondary = Server(root / "secondary")
    try:
        primary.init()
        primary.start()
        secondary = make_secondary(primary, root / "secondary", name="secondary")
        # the primary was standalone while serving: a restart makes it serve as the primary
        primary.stop()
        primary.start()
        secondary.start()
        yield Topology(root, primary, secondary, root / "secondary.setup", root / "secondary.passphrase",
                       root / "secondary.key")
    finally:
        secondary.cleanup()
        primary.cleanup()


def server_id(server: Server) -> str:
    return load_settings(server.data_dir).server.id


def test_add_secondary_makes_the_primary_and_a_secondary_of_its_cluster(topology: Topology) -> None:
    primary, secondary = load_settings(topology.primary.data_dir), load_settings(topology.secondary.data_dir)
    assert primary.server.role == ServerRole.PRIMARY
    assert (secondary.server.role, secondary.server.name) == (ServerRole.SECONDARY, "secondary")
    assert primary.ha.cluster_id is not None and secondary.ha.cluster_id == primary.ha.cluster_id
    db = secondary.database
    assert (db.mode, db.host, db.port, db.name) == ("remote", "127.0.0.1", primary.database.port,
                                                    primary.database.name)
    assert db.user.startswith("app_") and db.user != primary.database.user
    assert secondary.key_file == topology.key
    assert (topology.setup.stat().st_mode & 0o777) == 0o600
    assert (topology.secondary.data_dir / "secrets" / "db_password").stat().st_mode & 0o077 == 0
    assert (topology.secondary.data_dir / "tls" / "server.key").stat().st_mode & 0o077 == 0
    assert not (topology.secondary.data_dir / "tls" / "ca.key").exists()  # the CA key stays on the primary
    assert (topology.secondary.data_dir / "tls" / "ca.crt").read_bytes() == \
        (topology.primary.data_dir / "tls" / "ca.crt").read_bytes()
    hba = (topology.primary.data_dir / "pg" / "pg_hba.conf").read_text()
    assert f"hostssl {db.name} {db.user} 127.0.0.1/32 scram-sha-256" in hba.splitlines()
    # the master key never travels in the setup file
    with read_setup_file(topology.setup, topology.passphrase.read_text()) as (manifest, tar):
        members = {name: stream.read() for name, stream in payload(tar)}
    assert list(members) == ["ca.crt", "server.crt", "server.key", "db_password"]
    assert manifest.kind == "secondary" and manifest.cluster_id == primary.ha.cluster_id
    assert manifest.fields["db_user"] == db.user and manifest.fields["server_id"] == secondary.server.id
    key_text = topology.key.read_text().strip()
    assert all(key_text.encode() not in data for data in [manifest.to_json(), *members.values()])


def _privileges(conn: Any, role: str) -> dict[tuple[str, str], bool]:
    """Every privilege ``role`` has, directly or inherited, on the tables and sequences of the schema."""
    tables = conn.execute(
        "SELECT c.relname, p.priv, has_table_privilege(%s, c.oid, p.priv) FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace CROSS JOIN (VALUES ('SELECT'), ('INSERT'), ('UPDATE'), "
        "('DELETE'), ('TRUNCATE'), ('REFERENCES'), ('TRIGGER')) p(priv) "
        "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')", (role,)).fetchall()
    sequences = conn.execute(
        "SELECT c.relname, p.priv, has_sequence_privilege(%s, c.oid, p.priv) FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace CROSS JOIN (VALUES ('USAGE'), ('SELECT'), ('UPDATE')) p(priv) "
        "WHERE n.nspname = 'public' AND c.relkind = 'S'", (role,)).fetchall()
    return {(r[0], r[1]): r[2] for r in [*tables, *sequences]}


def test_the_secondary_login_has_exactly_the_app_logins_privileges_now_and_later(topology: Topology) -> None:
    app = load_settings(topology.primary.data_dir).database.user
    login = load_settings(topology.secondary.data_dir).database.user
    with superuser_connect(topology.primary) as conn:
        app_privileges, login_privileges = _privileges(conn, app), _privileges(conn, login)
        assert app_privileges and login_privileges == app_privileges
        assert login_privileges[("audit_log", "INSERT")] and not login_privileges[("audit_log", "UPDATE")]
        assert not login_privileges[("audit_log", "DELETE")]
        attrs = conn.execute("SELECT rolsuper, rolcreaterole, rolcreatedb, rolreplication FROM pg_roles "
                             "WHERE rolname = %s", (login,)).fetchone()
        assert attrs == (False, False, False, False)
        # a table a later migration adds (granted to the app login, as migrate does) is the secondary's too
        conn.execute("CREATE TABLE later_table (id int)")
        try:
            conn.execute(f'GRANT SELECT, INSERT ON later_table TO "{app}"')
            assert conn.execute("SELECT has_table_privilege(%s, 'later_table', 'INSERT')", (login,)).fetchone() \
                == (True,)
        finally:
            conn.execute("DROP TABLE later_table")


def test_both_servers_read_and_write_the_same_vault_and_audit_trail(topology: Topology) -> None:
    primary, secondary = topology.primary, topology.secondary
    primary_token, secondary_token = primary.login(), secondary.login()
    _, account = seed_account(primary, primary_token, "Written-On-The-Primary-1", resource="shared-db")
    with secondary.client(secondary_token) as c:
        r = c.get(f"/accounts/{account}/password")
        assert r.status_code == 200, r.text
        assert r.json()["password"] == "Written-On-The-Primary-1"
        r = c.patch(f"/accounts/{account}", json={"password": "Changed-On-The-Secondary-2"})
        assert r.status_code == 200, r.text
    with primary.client(primary_token) as c:
        r = c.get(f"/accounts/{account}/password")
        assert r.status_code == 200, r.text
        assert r.json()["password"] == "Changed-On-The-Secondary-2"
    # a session made on one server works on the other: sessions live in the shared database
    with primary.client(secondary_token) as c:
        assert c.get("/me").status_code == 200

    ids = {"primary": server_id(primary), "secondary": server_id(secondary)}

    def trail(server: Server) -> list[dict[str, Any]]:
        with server.client(primary_token) as c:
            r = c.get("/audit", params={"limit": 500})
            assert r.status_code == 200, r.text
            return list(r.json()["items"])

    on_primary, on_secondary = trail(primary), trail(secondary)
    last = min(max(r["id"] for r in on_primary), max(r["id"] for r in on_secondary))
    assert [r for r in on_primary if r["id"] <= last] == [r for r in on_secondary if r["id"] <= last]
    mine = [(r["server_id"], r["server_role"], r["action"]) for r in on_primary if r["target_id"] == account]
    assert (ids["primary"], "primary", "account_created") in mine
    assert (ids["secondary"], "secondary", "password_retrieved") in mine
    assert (ids["secondary"], "secondary", "password_changed") in mine
    assert (ids["primary"], "primary", "password_retrieved") in mine
    logins = {(r["server_id"], r["server_role"]) for r in on_primary if r["action"] == "login"}
    assert {(ids["primary"], "primary"), (ids["secondary"], "secondary")} <= logins
    with primary.client(primary_token) as c:
        by_server = c.get("/audit", params={"server": ids["secondary"], "limit": 500}).json()["items"]
        assert by_server and {r["server_id"] for r in by_server} == {ids["secondary"]}
        report = c.get("/audit/verify").json()
    assert report["ok"], report["problems"]
    assert {s["server_id"] for s in report["servers"]} >= set(ids.values())


# --- refusals ------------------------------------------------------------------------------


def _rewritten(src: Path, dst: Path, passphrase: str, **changes: Any) -> Path:
    """A copy of a setup file, sealed again with the same passphrase, its manifest changed."""
    with read_setup_file(src, passphrase) as (manifest, tar):
        members = [(name, stream.read()) for name, stream in payload(tar)]
    with write_setup_file(dst, passphrase, dataclasses.replace(manifest, **changes)) as tar:
        for name, data in members:
            add_bytes(tar, name, data)
    return dst


def test_join_refuses_bad_files_keys_clusters_and_directories_changing_nothing(topology: Topology) -> None:
    work = topology.root / "refusals"
    work.mkdir()
    passphrase = topology.passphrase.read_text()
    key = copy_key_file(topology.primary, work / "good.key")
    other_key_path = work / "other.key"
    other_key = create_key_file(other_key_path)
    wrong_passphrase = work / "wrong.passphrase"
    wrong_passphrase.write_text("not-the-passphrase")
    damaged = work / "damaged.setup"
    blob = bytearray(topology.setup.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    damaged.write_bytes(bytes(blob))
    foreign = _rewritten(topology.setup, work / "foreign.setup", passphrase, cluster_id=str(uuid.uuid4()))
    other_keyed = _rewritten(topology.setup, work / "other-key.setup", passphrase,
                             key_check=other_key.check_value.hex(), key_id=other_key.key_id)
    busy = work / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("something of the operator's")
    target = work / "data"

    cases = [
        ("wrong passphrase", topology.setup, target, key, wrong_passphrase, "wrong passphrase"),
        ("damaged file", damaged, target, key, topology.passphrase, "damaged"),
        ("wrong key file", topology.setup, target, other_key_path, topology.passphrase,
         "key file does not match this cluster"),
        ("file of another cluster", foreign, target, key, topology.passphrase, "holds cluster"),
        ("key of another database", other_keyed, target, other_key_path, topology.passphrase,
         "does not match the primary database"),
        ("non-empty directory", topology.setup, busy, key, topology.passphrase, "not empty"),
        ("existing server", topology.setup, topology.secondary.data_dir, key, topology.passphrase,
         "already a Safehold data directory"),
    ]
    for what, setup, data_dir, key_file, passphrase_file, message in cases:
        before = tree_snapshot(work), tree_snapshot(topology.secondary.data_dir)
        proc = join_cli(setup, data_dir, key_file, passphrase_file, "--port", "9", check=False)
        said = " ".join((proc.stdout + proc.stderr).split())
        assert proc.returncode != 0, f"{what}: joined\n{said}"
        assert message in said, f"{what}: {said}"
        assert (tree_snapshot(work), tree_snapshot(topology.secondary.data_dir)) == before, what
        assert not target.exists(), what

    # the same target, holding only the key file, then joins
    target.mkdir()
    inside = copy_key_file(topology.primary, target / "safehold.key")
    join_cli(topology.setup, target, inside, topology.passphrase, "--port", "9")
    settings = load_settings(target)
    assert settings.security.key_file == Path("safehold.key") and settings.key_file == inside
    assert settings.server.id == server_id(topology.secondary)
    assert settings.server.name == "secondary"  # the name the primary gave it


def test_add_secondary_refuses_an_unknown_host_and_undoes_a_failure(topology: Topology,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from safehold.crypto.keyfile import load_key_file
    from safehold.ha import add_secondary as secondary_module
    from safehold.runtime import database

    work = topology.root / "add-failures"
    work.mkdir()
    (work / "pp").write_text("a-passphrase-for-this-test")
    before = (topology.primary.data_dir / "safehold.toml").read_text(), \
        (topology.primary.data_dir / "pg" / "pg_hba.conf").read_text()

    def roles() -> set[str]:
        with superuser_connect(topology.primary) as conn:
            return {r[0] for r in conn.execute("SELECT rolname FROM pg_roles WHERE rolname LIKE 'app\\_%'")}

    known = roles()
    proc = topology.primary.cli("ha", "add-secondary", "--host", "no-such-host.invalid", "--out",
                                str(work / "x.setup"), "--passphrase-file", str(work / "pp"), check=False)
    assert proc.returncode != 0 and "cannot resolve" in proc.stderr + proc.stdout

    def broken_certificate(*_: Any, **__: Any) -> tuple[bytes, bytes]:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(secondary_module, "make_server_cert", broken_certificate)
    settings = load_settings(topology.primary.data_dir)
    said: list[str] = []
    with pytest.raises(OSError, match="No space"):
        secondary_module.add_secondary(settings, load_key_file(settings.key_file), database.manager(settings),
                                       host="127.0.0.1", out=work / "y.setup", passphrase="pp", say=said.append)
    assert "failed; undoing what was done" in said
    assert roles() == known
    assert ((topology.primary.data_dir / "safehold.toml").read_text(),
            (topology.primary.data_dir / "pg" / "pg_hba.conf").read_text()) == before
    assert sorted(p.name for p in work.iterdir()) == ["pp"]


# --- the schedules lease -----------------------------------------------------------------

HOLDER = """
import asyncio, sys
from pathlib import Path
from safehold.config import load_settings
from safehold.domain import ServerRole
from safehold.ha.lease import LeaseConfig, ScheduleLease
from safehold.storage import servers
from safehold.storage.db import app_target, make_engine

data_dir, role, me, beat = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"

async def main():
    engine = make_engine(app_target(load_settings(Path(data_dir))), pool_size=1)
    lease = ScheduleLease(engine, server_id=me, role=ServerRole(role), poll_interval=0.2,
                          config=LeaseConfig(primary_grace=2, free_grace=2))

    async def acquired():
        print("acquired", flush=True)

    async def heartbeat():
        while beat:
            async with engine.begin() as conn:
                await servers.register(conn, id=me, name="lease-" + role, role=role)
            await asyncio.sleep(0.3)

    await asyncio.gather(lease.run(acquired), heartbeat())

asyncio.run(main())
"""


class Holder:
    """A ScheduleLease in a process of its own (to be killed with SIGKILL); it prints "acquired"
    each time it takes the lease."""

    def __init__(self, data_dir: Path, role: ServerRole, me: str, *, heartbeat: bool, log: Path) -> None:
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(data_dir), role.value, me,
                                          "1" if heartbeat else "0"], stdout=out, stderr=subprocess.STDOUT)

    def acquired(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"the lease holder exited with {self.proc.returncode}:\n{self.log.read_text()}")
        return "acquired" in self.log.read_text()

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=20)


def test_schedules_run_on_one_server_and_move_when_it_dies(server_root: Path) -> None:
    """A primary (in a process of its own) holds the lease; a secondary waits. kill -9 the primary:
    the secondary takes the lease over and runs the jobs. A primary that comes back (heartbeating)
    gets the lease handed back."""
    from safehold.ha.lease import ScheduledJobs, ScheduleLease
    from safehold.storage.db import app_target, make_engine
    from tests.support import running_server

    with running_server(Path(tempfile.mkdtemp(dir=server_root)) / "lease") as server:
        # only the database is needed: the app server would heartbeat as a live primary
        server.stop()
        server.cli("db", "start")
        data_dir = server.data_dir
        primary_id, secondary_id = str(uuid.uuid4()), str(uuid.uuid4())
        holders: list[Holder] = []

        async def story() -> None:
            from safehold.ha.lease import LeaseConfig

            engine = make_engine(app_target(load_settings(data_dir)), pool_size=2)
            lease = ScheduleLease(engine, server_id=secondary_id, role=ServerRole.SECONDARY, poll_interval=0.2,
                                  config=LeaseConfig(primary_grace=2, free_grace=2))
            jobs = ScheduledJobs({"tick": (0.05, _noop)})
            try:
                holders.append(Holder(data_dir, ServerRole.PRIMARY, primary_id, heartbeat=False,
                                      log=data_dir.parent / "holder-1.log"))
                await asyncio.to_thread(wait_until, holders[-1].acquired, what="the primary to take the lease")
                for _ in range(8):  # the secondary sees the primary hold it, and waits
                    decision = await lease.step(jobs.start, jobs.stop)
                    assert not lease.holding and lease.holder is not None, decision
                    assert lease.holder.server_id == primary_id
                    assert decision.reason == f"{primary_id} holds the lease"
                    await asyncio.sleep(0.1)
                assert jobs.runs["tick"] == 0 and await _holders(engine) == 1

                holders[-1].kill()  # the primary dies: its session, and the lock, go with it
                await _until(lease, jobs, lambda: lease.holding, "the secondary to take the lease")
                assert lease.last is not None and "taking it" in lease.last.reason
                await _until(lease, jobs, lambda: jobs.runs["tick"] >= 3, "the jobs to run on the secondary")
                assert await _holders(engine) == 1

                # the primary comes back (heartbeating): the secondary hands the lease back
                holders.append(Holder(data_dir, ServerRole.PRIMARY, primary_id, heartbeat=True,
                                      log=data_dir.parent / "holder-2.log"))
                await _until(lease, jobs, lambda: not lease.holding, "the secondary to hand the lease back")
                assert lease.last is not None and "handing the lease back" in lease.last.reason
                assert not jobs.running
                await _until(lease, jobs, holders[-1].acquired, "the primary to take the lease back")
                await _until(lease, jobs, lambda: lease.holder is not None and lease.holder.server_id == primary_id,
                             "the secondary to see the primary hold the lease")
                assert await _holders(engine) == 1
            finally:
                await lease.close()
                await jobs.stop(True)
                await engine.dispose()

        try:
            asyncio.run(story())
        finally:
            for holder in holders:
                holder.kill()


async def _noop() -> None:
    return None


async def _until(lease: Any, jobs: Any, condition: Any, what: str, timeout: float = 20) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, f"timed out waiting for {what} (last: {lease.last})"
        await lease.step(jobs.start, jobs.stop)
        await asyncio.sleep(0.1)


async def _holders(engine: Any) -> int:
    from sqlalchemy import text

    from safehold.ha.lease import NAMESPACE, SCHEDULES

    async with engine.connect() as conn:
        return int((await conn.execute(text(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND classid::bigint = :ns AND objid::bigint = :key AND objsubid = 2"),
            {"ns": NAMESPACE, "key": SCHEDULES})).scalar_one())
