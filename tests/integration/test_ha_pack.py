"""Setup packs for read-only servers: 'safehold ha pack' on a serving primary, 'safehold ha join' on the
new host, as real processes on 127.0.0.1.

The story: a writer keeps creating accounts and changing passwords through the primary's REST API
while the pack (an online base backup through the new server's slot) is taken; the read-only server
joins from it and its replica streams; every write the API acknowledged is on the replica, which
refuses writes. A damaged pack, a wrong passphrase, a wrong key file and a data directory of another
cluster are each refused with a clear message and change nothing on disk. Every process is stopped
by the fixtures, the replicas' postmasters included, also when a test fails.
"""

from __future__ import annotations

import base64
import os
import re
import secrets
import shutil
import subprocess
import tarfile
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest

from safehold.config import (
    HaSection,
    ServerSection,
    Settings,
    load_settings,
    write_settings,
)
from safehold.crypto.certs import fingerprint
from safehold.crypto.keyfile import create_key_file, load_key_file
from safehold.domain import ServerRole
from safehold.ha.pack import create_pack
from safehold.ha.setupfile import payload, read_setup_file
from safehold.pg import conf
from safehold.runtime import database
from safehold.storage import admin
from safehold.storage.db import owner_target
from tests.support import (
    SAFEHOLD,
    Server,
    app_connect,
    free_port,
    run_cli,
    running_server,
    superuser_connect,
    tree_snapshot,
    wait_until,
)

LOCALHOST = "127.0.0.1"
PASSPHRASE_LINE = re.compile(r"passphrase \(shown once[^)]*\): (\S+)")


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def primary(server_root: Path) -> Iterator[Server]:
    """A standalone server (its own bundled PostgreSQL) that the packs are taken from while it serves."""
    with running_server(Path(tempfile.mkdtemp(dir=server_root)) / "primary") as server:
        yield server


@pytest.fixture()
def place(server_root: Path) -> Iterator[Callable[[], Path]]:
    """New directories for the joining side; any server joined into them is stopped afterwards
    (its replica's postmaster included)."""
    made: list[Path] = []

    def make() -> Path:
        made.append(Path(tempfile.mkdtemp(dir=server_root)))
        return made[-1]

    yield make
    for base in made:
        for candidate in [base, *base.iterdir()] if base.is_dir() else []:
            if (candidate / "pg").is_dir():
                Server(candidate).cleanup()


class Writer(threading.Thread):
    """Creates accounts and changes passwords through the primary's API, one request at a time, and
    records every write the API acknowledged: account id -> the password it last acknowledged.

    Bounded: stops after `max_writes`, after `max_seconds`, or when asked."""

    def __init__(self, server: Server, token: str, resource_id: str, *, max_writes: int = 200,
                 max_seconds: float = 45) -> None:
        super().__init__(name="api-writer", daemon=True)
        self.server, self.token, self.resource_id = server, token, resource_id
        self.max_writes, self.max_seconds = max_writes, max_seconds
        self.acknowledged: dict[str, str] = {}
        self.acknowledged_at: list[float] = []  # time.monotonic() of every acknowledgement
        self.writes = 0
        self.error: BaseException | None = None
        self._stop_asked = threading.Event()
        self._lock = threading.Lock()

    def run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        try:
            with self.server.client(self.token) as c:
                while (not self._stop_asked.is_set() and self.writes < self.max_writes
                       and time.monotonic() < deadline):
                    password = secrets.token_urlsafe(16)
                    ids = list(self.acknowledged)
                    if ids and self.writes % 3 == 2:  # every third write changes an earlier password
                        account = ids[self.writes % len(ids)]
                        r = c.patch(f"/accounts/{account}", json={"password": password})
                        assert r.status_code == 200, r.text
                    else:
                        r = c.post(f"/resources/{self.resource_id}/accounts",
                                   json={"username": f"svc-{self.writes}", "password": password})
                        assert r.status_code == 201, r.text
                        account = r.json()["id"]
                    with self._lock:  # answered 200/201: committed on the primary
                        self.acknowledged[account] = password
                        self.acknowledged_at.append(time.monotonic())
                        self.writes += 1
                    self._stop_asked.wait(0.005)  # two cores, shared with PostgreSQL and the backup
        except BaseException as exc:  # noqa: BLE001 - reported by finish()
            self.error = exc

    def count(self) -> int:
        with self._lock:
            return self.writes

    def count_between(self, start: float, end: float) -> int:
        with self._lock:
            return sum(1 for t in self.acknowledged_at if start <= t <= end)

    def finish(self) -> dict[str, str]:
        self._stop_asked.set()
        self.join(30)
        assert not self.is_alive(), "the writer did not stop"
        if self.error is not None:
            raise AssertionError(f"the writer failed: {self.error!r}")
        return dict(self.acknowledged)


@dataclass
class Packed:
    stdout: str
    passphrase: str  # as printed; "" when it came from --passphrase-file
    backup_started: float  # time.monotonic() when 'ha pack' said it starts / finished the base backup
    backup_done: float


def _pack(primary: Server, out: Path, *extra: str) -> Packed:
    """Run 'safehold ha pack' for a read-only server on 127.0.0.1, noting when it says what it does."""
    argv = [*SAFEHOLD, "ha", "pack", "--data-dir", str(primary.data_dir), "--readonly-host", LOCALHOST,
            "--out", str(out), *extra]
    lines: list[tuple[float, str]] = []
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, "COLUMNS": "200"}) as proc:
        try:
            assert proc.stdout is not None and proc.stderr is not None
            for line in proc.stdout:
                lines.append((time.monotonic(), line))
            stderr = proc.stderr.read()
            code = proc.wait(120)
        finally:
            if proc.poll() is None:
                proc.kill()
    stdout = "".join(line for _, line in lines)
    assert code == 0, f"ha pack failed ({code}):\n{stdout}\n{stderr}"
    found = PASSPHRASE_LINE.search(stdout)
    started = next(t for t, line in lines if "taking an online base backup" in line)
    done = next(t for t, line in lines if "base backup done" in line)
    return Packed(stdout, found.group(1) if found else "", started, done)


def _join(pack: Path, data_dir: Path, key_file: Path, passphrase_file: Path,
          check: bool = True) -> tuple[int, str]:
    proc = run_cli("ha", "join", str(pack), "--data-dir", str(data_dir), "--key-file", str(key_file),
                   "--passphrase-file", str(passphrase_file), "--port", str(free_port()),
                   "--db-port", str(free_port()), "--name", "ro-test", check=check, timeout=120)
    return proc.returncode, proc.stdout + proc.stderr


def _rows(conn: psycopg.Connection, ids: list[str]) -> dict[str, bytes]:
    return {row[0]: bytes(row[1]) for row in conn.execute(
        "SELECT id::text, password_enc FROM accounts WHERE id = ANY(%s::uuid[])", (ids,))}


def _slots(primary: Server) -> set[str]:
    return {s.name for s in admin.list_slots(owner_target(load_settings(primary.data_dir), dbname="postgres"))}


def _roles(primary: Server) -> set[str]:
    with superuser_connect(primary, "postgres") as conn:
        return {r[0] for r in conn.execute("SELECT rolname FROM pg_roles WHERE rolname LIKE 'repl\\_%'")}


def _hba(primary: Server) -> str:
    return (primary.data_dir / "pg" / "pg_hba.conf").read_text()


# --- (f) a pack taken while the primary takes writes -----------------------------------------------


def test_pack_taken_while_writing_loses_no_acknowledged_write(primary: Server,
                                                              place: Callable[[], Path]) -> None:
    token = primary.login()
    with primary.client(token) as c:
        r = c.post("/resources", json={"name": "pack-writes", "address": "db.example.internal"})
        assert r.status_code == 201, r.text
        resource_id = r.json()["id"]
    base = place()
    pack = base / "ro.pack"
    writer = Writer(primary, token, resource_id)
    writer.start()
    try:
        wait_until(lambda: writer.count() >= 15 or writer.error, timeout=30, what="the writer to get going")
        packed = _pack(primary, pack, "--name", "ro-pack")
        after_pack = writer.count()
        # a few more after the pack: these reach the replica by streaming, not in the pack
        wait_until(lambda: writer.count() >= after_pack + 10 or writer.error, timeout=30,
                   what="writes after the pack")
    finally:
        acknowledged = writer.finish()
    during = writer.count_between(packed.backup_started, packed.backup_done)
    assert during > 0, "the primary acknowledged no write while the base backup ran"
    stdout, passphrase = packed.stdout, packed.passphrase

    # The passphrase is printed once; the primary is now the primary of a cluster.
    assert passphrase and stdout.count(passphrase) == 1, stdout
    primary_settings = load_settings(primary.data_dir)
    assert primary_settings.server.role == ServerRole.PRIMARY
    assert primary_settings.ha.cluster_id
    assert re.search(r"^hostssl replication repl_[0-9a-f]{12} 127\.0\.0\.1/32 scram-sha-256$", _hba(primary),
                     re.MULTILINE)

    # Join, with the key file inside the new data directory (allowed: it is the only thing there).
    ro_dir = base / "readonly"
    ro_dir.mkdir(mode=0o700)
    key_file = ro_dir / "safehold.key"
    shutil.copy2(primary_settings.key_file, key_file)
    key_file.chmod(0o600)
    passphrase_file = base / "passphrase"
    passphrase_file.write_text(passphrase + "\n")
    _, said = _join(pack, ro_dir, key_file, passphrase_file)
    assert "joined as readonly" in said, said

    ro = load_settings(ro_dir)
    assert ro.server.role == ServerRole.READONLY and ro.server.name == "ro-test"
    assert ro.ha.cluster_id == primary_settings.ha.cluster_id
    assert (ro.ha.primary_db_host, ro.ha.primary_db_port) == (LOCALHOST, primary_settings.database.port)
    assert ro.key_file == key_file.resolve() and ro.database.port != primary_settings.database.port
    assert not (ro_dir / "tls" / "ca.key").exists()  # trust, never the CA's key
    assert (ro_dir / "tls" / "ca.crt").read_bytes() == (primary.data_dir / "tls" / "ca.crt").read_bytes()
    assert (ro_dir / "tls" / "server.key").read_bytes() != (primary.data_dir / "tls" / "server.key").read_bytes()
    assert (ro_dir / "secrets" / "db_password").read_text() == (
        primary.data_dir / "secrets" / "db_password").read_text()
    replica = database.manager(ro)
    assert replica.is_standby() and not replica.status().running  # join stopped it again: serve starts it

    # The replica streams, and has every write the API acknowledged, byte for byte.
    assert replica.start() is True
    replica.wait_ready()
    ids = sorted(acknowledged)
    with app_connect(primary.data_dir) as on_primary:
        expected = _rows(on_primary, ids)
    assert set(expected) == set(ids)
    with app_connect(ro_dir) as on_replica:
        wait_until(lambda: _rows(on_replica, ids) == expected, timeout=30,
                   what="the replica to hold every acknowledged write")
        status = wait_until(lambda: on_replica.execute(
            "SELECT status, slot_name FROM pg_stat_wal_receiver WHERE status = 'streaming'").fetchone(),
            timeout=30, what="the replica to stream")
        assert status[1].startswith("ro_")  # visible to the app login: it was granted pg_monitor
        assert on_replica.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            on_replica.execute("UPDATE accounts SET username = username || '-x' WHERE id = %s::uuid",
                               (ids[0],))
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            on_replica.execute("DELETE FROM accounts")
    # ...and those rows are the acknowledged passwords (the primary reveals exactly what was acknowledged).
    with primary.client(token) as c:
        for account, password in acknowledged.items():
            r = c.get(f"/accounts/{account}/password")
            assert r.status_code == 200 and r.json()["password"] == password, account
    # The primary's registry lists it (written at join, through the primary database, as the app login).
    with app_connect(primary.data_dir) as on_primary:
        listed = on_primary.execute("SELECT name, role, url, port, cert_fingerprint FROM servers WHERE id = %s",
                                    (ro.server.id,)).fetchone()
    assert listed == ("ro-test", "readonly", f"https://{LOCALHOST}:{ro.http.port}", ro.http.port,
                      fingerprint((ro_dir / "tls" / "server.crt").read_bytes()))
    with superuser_connect(primary, "postgres") as conn:
        link = conn.execute("SELECT state FROM pg_stat_replication WHERE application_name = %s",
                            (ro.server.id,)).fetchone()
    assert link == ("streaming",)

    # What the pack holds: the expected members, never the master key, never the primary's TLS key;
    # and nothing secret in clear in the file.
    with read_setup_file(pack, passphrase) as (manifest, tar):
        assert manifest.kind == "readonly" and manifest.cluster_id == ro.ha.cluster_id
        assert manifest.fields["server_id"] == ro.server.id
        names = []
        for name, stream in payload(tar):
            names.append(name)
            if name == conf.BASE_TAR:
                with tarfile.open(fileobj=stream, mode="r|") as base_tar:
                    members = [m.name for m in base_tar]
                assert conf.MARKER_FILE in members and conf.SERVER_KEY not in members
                assert not [m for m in members if m.startswith("log/")]
            else:
                stream.read()
    assert names == ["ca.crt", "server.crt", "server.key", "replication_password", "db_password",
                     "db_superuser_password", conf.BASE_TAR, conf.WAL_TAR]
    raw = pack.read_bytes()
    repl_password = (ro.pg_data_dir / conf.REPLICATION_PASSFILE).read_text().strip().rsplit(":", 1)[1]
    key_text = key_file.read_text().strip()
    body = key_text.split(":", 1)[1]
    key_bytes = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    for secret in (repl_password.encode(), primary_settings.read_secret(primary_settings.database.password_file)
                   .encode(), key_text.encode(), key_bytes, passphrase.encode()):
        assert secret not in raw
    assert load_key_file(key_file).key_id == manifest.key_id


# --- (e) what a joiner refuses ------------------------------------------------------------------


def test_bad_packs_are_refused_and_change_nothing(primary: Server, place: Callable[[], Path]) -> None:
    base = place()
    passphrase_file = base / "passphrase"
    passphrase_file.write_text(secrets.token_urlsafe(18))
    pack = base / "ro.pack"
    packed = _pack(primary, pack, "--passphrase-file", str(passphrase_file))
    assert packed.passphrase == "" and passphrase_file.read_text() not in packed.stdout  # never echoed
    key_file = base / "safehold.key"
    shutil.copy2(primary.data_dir / "safehold.key", key_file)
    data = pack.read_bytes()

    def damaged(name: str, change: Callable[[bytearray], bytes]) -> Path:
        path = base / name
        path.write_bytes(change(bytearray(data)))
        return path

    def flip(at: int) -> Callable[[bytearray], bytes]:
        def change(b: bytearray) -> bytes:
            b[at] ^= 0x01
            return bytes(b)
        return change

    wrong_passphrase = base / "wrong-passphrase"
    wrong_passphrase.write_text("not-the-passphrase-of-this-pack")
    other_key = base / "other.key"
    create_key_file(other_key)
    foreign = base / "foreign"  # a data directory of another cluster
    foreign.mkdir()
    write_settings(Settings(server=ServerSection(id=str(uuid.uuid4()), name="elsewhere", role=ServerRole.READONLY),
                            ha=HaSection(cluster_id=str(uuid.uuid4())), data_dir=foreign))
    occupied = base / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("someone else's")
    cases = [
        # the end cut off: the manifest reads fine, only reading to the end tells
        (damaged("truncated.pack", lambda b: bytes(b[:-1])), base / "new", key_file, passphrase_file,
         "truncated"),
        (damaged("middle.pack", flip(len(data) // 2)), base / "a" / "b" / "new", key_file, passphrase_file,
         "damaged"),
        (damaged("tail.pack", flip(len(data) - 40)), base / "new", key_file, passphrase_file, "damaged"),
        (pack, base / "new", key_file, wrong_passphrase, "wrong passphrase"),
        (pack, base / "new", other_key, passphrase_file, "key file does not match this cluster"),
        (pack, foreign, key_file, passphrase_file, "belongs to another Safehold cluster"),
        (pack, occupied, key_file, passphrase_file, "is not empty"),
    ]
    for setup_file, data_dir, key, passphrase, message in cases:
        before = tree_snapshot(base)
        code, said = _join(setup_file, data_dir, key, passphrase, check=False)
        assert code != 0 and message in said, (setup_file.name, data_dir.name, said)
        assert "Traceback" not in said
        assert tree_snapshot(base) == before, (setup_file.name, data_dir.name)
        assert not (base / "new").exists() and not (base / "a").exists()
    # The good pack still joins (the refusals used it up in no way).
    code, said = _join(pack, base / "new", key_file, passphrase_file)
    assert code == 0, said


# --- the primary side refuses, or undoes --------------------------------------------------------------


def test_pack_refuses_early_and_undoes_a_failure_midway(primary: Server, place: Callable[[], Path]) -> None:
    base = place()
    slots, roles, hba = _slots(primary), _roles(primary), _hba(primary)
    proc = run_cli("ha", "pack", "--data-dir", str(primary.data_dir), "--readonly-host",
                   "no-such-host.invalid", "--out", str(base / "x.pack"), check=False)
    assert proc.returncode != 0 and "cannot resolve 'no-such-host.invalid'" in proc.stderr, proc.stderr
    proc = run_cli("ha", "pack", "--data-dir", str(primary.data_dir), "--readonly-host", LOCALHOST,
                   "--out", str(base / "x.pack"), "--db-host", "db.elsewhere.example", check=False)
    assert proc.returncode != 0 and "does not name db.elsewhere.example" in proc.stderr, proc.stderr

    # A failure in the middle of the base backup: slot, role and pg_hba line are removed again,
    # no file is left, and the server's settings are unchanged.
    settings = load_settings(primary.data_dir)
    master = load_key_file(settings.key_file)

    class Interrupted(Exception):
        pass

    def interrupt(phase: str, done: int, total: int) -> None:
        assert _slots(primary) - slots and _roles(primary) - roles  # made before the backup
        assert "hostssl replication" in _hba(primary)
        raise Interrupted()

    settings_text = (primary.data_dir / "safehold.toml").read_text()
    with pytest.raises(Interrupted):
        create_pack(settings, master, database.manager(settings), readonly_host=LOCALHOST,
                    out=base / "x.pack", passphrase="a passphrase for nothing", progress=interrupt)
    assert (_slots(primary), _roles(primary), _hba(primary)) == (slots, roles, hba)
    assert os.listdir(base) == []
    assert not [p for p in primary.data_dir.iterdir() if p.name.startswith(".safehold-pack-")]
    assert (primary.data_dir / "safehold.toml").read_text() == settings_text
    with httpx.Client(verify=primary.ssl_context(), timeout=5) as c:  # it kept serving throughout
        assert c.get(f"{primary.url}/api/v1/health").status_code == 200
