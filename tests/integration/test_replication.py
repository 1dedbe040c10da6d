"""Streaming replication between bundled PostgreSQL clusters, as real processes.

A primary and a hot standby on 127.0.0.1, each with its own port and TLS
certificate from one throwaway CA; the standby is made from a base backup
taken while the primary keeps taking writes, and streams over TLS
(verify-full) as a scram replication role through a slot. Every cluster is
stopped (then killed) by its fixture's finalizer even when a test fails. As
root (CI, this machine) the clusters run as the unprivileged service user.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import secrets
import shutil
import socket
import stat
import tarfile
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from sqlalchemy.ext.asyncio import AsyncConnection

from safehold.crypto.certs import make_ca, make_server_cert
from safehold.errors import DatabaseError, InvalidInput
from safehold.pg import Binaries, ClusterSpec, PgError, PgManager, conf, find_binaries
from safehold.storage import admin, replication
from safehold.storage.db import DbTarget, make_engine
from tests.support import free_port, wait_until

T = TypeVar("T")
LOCALHOST = "127.0.0.1"


# --- fixtures -------------------------------------------------------------------------


@dataclass(frozen=True)
class Tls:
    ca: Path
    primary_cert: Path
    primary_key: Path
    standby_cert: Path
    standby_key: Path


@pytest.fixture(scope="module")
def pg_root() -> Iterator[Path]:
    """A fresh directory in /tmp (not pytest's tmp_path, which another session may chmod 0700)."""
    root = Path(tempfile.mkdtemp(prefix="safehold-test-repl-"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def tls(pg_root: Path) -> Tls:
    """One cluster CA; a certificate of its own for each server (both for 127.0.0.1)."""
    directory = pg_root / "tls"
    directory.mkdir()
    ca_pem, ca_key = make_ca("Safehold replication test")
    (directory / "ca.crt").write_bytes(ca_pem)
    for name in ("primary", "standby"):
        cert, key = make_server_cert(ca_pem, ca_key, [LOCALHOST, "localhost"])
        (directory / f"{name}.crt").write_bytes(cert)
        (directory / f"{name}.key").write_bytes(key)
        (directory / f"{name}.key").chmod(0o600)
    return Tls(
        ca=directory / "ca.crt",
        primary_cert=directory / "primary.crt",
        primary_key=directory / "primary.key",
        standby_cert=directory / "standby.crt",
        standby_key=directory / "standby.key",
    )


@pytest.fixture(scope="module")
def binaries() -> Binaries:
    return find_binaries()


@pytest.fixture(scope="module")
def password() -> str:
    return secrets.token_urlsafe(24)


def _teardown(manager: PgManager) -> None:
    try:
        manager.stop(mode="immediate", timeout=20)
    finally:
        manager.kill()


@pytest.fixture(scope="module")
def primary(pg_root: Path, binaries: Binaries, tls: Tls, password: str) -> Iterator[PgManager]:
    spec = ClusterSpec(
        data_dir=pg_root / "primary" / "pg",
        port=free_port(),
        tls_cert=tls.primary_cert,
        tls_key=tls.primary_key,
        tls_ca=tls.ca,
    )
    manager = PgManager(spec, binaries)
    try:
        manager.initdb(password)
        assert manager.start() is True
        yield manager
    finally:
        _teardown(manager)


@pytest.fixture
def standby(pg_root: Path, binaries: Binaries, tls: Tls) -> Iterator[PgManager]:
    """An empty, not yet initialised data directory of a second cluster (own port and cert)."""
    spec = ClusterSpec(
        data_dir=Path(tempfile.mkdtemp(prefix="standby-", dir=pg_root)) / "pg",
        port=free_port(),
        tls_cert=tls.standby_cert,
        tls_key=tls.standby_key,
        tls_ca=tls.ca,
    )
    manager = PgManager(spec, binaries)
    try:
        yield manager
    finally:
        _teardown(manager)


# --- helpers --------------------------------------------------------------------------


def _target(manager: PgManager, user: str, password: str, tls: Tls) -> DbTarget:
    return DbTarget(
        host=LOCALHOST,
        port=manager.spec.port,
        dbname="postgres",
        user=user,
        password=password,
        sslrootcert=tls.ca,
    )


def _connect(manager: PgManager, password: str, **overrides: str) -> psycopg.Connection:
    params = {**manager.conninfo(user=manager.spec.superuser), **overrides}
    return psycopg.connect(
        make_conninfo(**params), password=password, connect_timeout=10, autocommit=True
    )


def _read(target: DbTarget, reader: Callable[[AsyncConnection], Awaitable[T]]) -> T:
    """Run one storage.replication reader over a fresh SQLAlchemy async connection."""

    async def go() -> T:
        engine = make_engine(target, pool_size=1)
        try:
            async with engine.connect() as conn:
                return await reader(conn)
        finally:
            await engine.dispose()

    return asyncio.run(go())


def _ids(manager: PgManager, password: str) -> set[int]:
    with _connect(manager, password) as conn:
        return {row[0] for row in conn.execute("SELECT id FROM items")}


def _replication_conninfo(manager: PgManager, user: str, **overrides: str) -> str:
    params = {**manager.conninfo(user=user), "replication": "true", **overrides}
    return make_conninfo(**params)


class Writer(threading.Thread):
    """Inserts rows one transaction at a time and records the id of every committed one.

    Bounded: stops after `max_rows`, after `max_seconds`, or when asked.
    """

    def __init__(
        self, conninfo: str, password: str, *, max_rows: int = 2000, max_seconds: float = 15.0
    ) -> None:
        super().__init__(name="primary-writer", daemon=True)
        self.conninfo = conninfo
        self.password = password
        self.max_rows = max_rows
        self.max_seconds = max_seconds
        self.committed: list[int] = []
        self.error: BaseException | None = None
        self._stop_asked = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        try:
            with psycopg.connect(self.conninfo, password=self.password, autocommit=True) as conn:
                while (
                    not self._stop_asked.is_set()
                    and len(self.committed) < self.max_rows
                    and time.monotonic() < deadline
                ):
                    row = conn.execute(
                        "INSERT INTO items (note) VALUES ('during backup') RETURNING id"
                    ).fetchone()
                    assert row is not None
                    self.committed.append(row[0])  # autocommit: returned means committed
                    self._stop_asked.wait(0.002)  # pace it: two cores, shared with others
        except BaseException as exc:  # noqa: BLE001 - reported by finish()
            self.error = exc

    def finish(self) -> list[int]:
        self._stop_asked.set()
        self.join(30)
        assert not self.is_alive(), "the writer did not stop"
        if self.error is not None:
            raise AssertionError(f"the writer failed: {self.error!r}")
        return list(self.committed)


# --- pure helpers ---------------------------------------------------------------------


def test_replication_hba_line_is_tls_scram_and_accepted_by_write_hba() -> None:
    line = conf.replication_hba_line("repl_ro1", "10.0.0.5")
    assert line == "hostssl replication repl_ro1 10.0.0.5/32 scram-sha-256"
    assert conf.replication_hba_line("repl_ro1", "::1").endswith(" ::1/128 scram-sha-256")
    assert line in conf.render_hba([line])
    for role, address in (
        ("Repl", "10.0.0.5"),
        ("repl", "10.0.0.0/8"),
        ("repl", "ro1.lan"),
        ("repl x", "10.0.0.5"),
    ):
        with pytest.raises(PgError):
            conf.replication_hba_line(role, address)


def test_standby_settings_keep_the_password_out_of_the_configuration() -> None:
    assert conf.render_pgpass(host="::1", port=5433, user="repl", password="a:b\\c") == (
        "\\:\\:1:5433:*:repl:a\\:b\\\\c\n"
    )
    with pytest.raises(PgError):
        conf.render_pgpass(host="h", port=1, user="repl", password="two\nlines")
    conninfo = conf.primary_conninfo(
        host=LOCALHOST,
        port=5433,
        user="repl_ro1",
        application_name="ro1",
        sslrootcert="/d/root.crt",
        passfile="/d/replication.pgpass",
    )
    assert "sslmode='verify-full'" in conninfo and "passfile='/d/replication.pgpass'" in conninfo
    assert "password" not in conninfo.replace("passfile", "")
    text = conf.render_conf(conf.standby_settings(conninfo=conninfo, slot="ro1"))
    assert "primary_slot_name = 'ro1'" in text and "hot_standby_feedback = on" in text
    assert "host=''127.0.0.1''" in text  # the conninfo's quotes doubled for the conf file
    auto = "a = 1\nprimary_conninfo = 'host=x'\n#primary_slot_name = 'y'\nprimary_slot_name='z'\n"
    assert conf.without_settings(auto, ["primary_conninfo", "primary_slot_name"]) == (
        "a = 1\n#primary_slot_name = 'y'\n"
    )


def test_archive_member_paths() -> None:
    assert conf.archive_member_path("./base/1/1259") == "base/1/1259"
    assert conf.archive_member_path("global//pg_control") == "global/pg_control"
    assert conf.archive_member_path("./") is None
    for bad in ("/etc/passwd", "../x", "base/../../x", "a\\b", "", "a\0b"):
        with pytest.raises(PgError):
            conf.archive_member_path(bad)
    line = "pg_basebackup: write-ahead log start point: 0/2000028 on timeline 1"
    assert conf.parse_basebackup_wal_point(line) == ("start", "0/2000028")
    assert conf.parse_basebackup_progress("  1234/56789 kB (2%), 0/1 tablespace") == (
        1234 * 1024,
        56789 * 1024,
    )


# --- install_standby refuses what it must ----------------------------------------------


def _tar(path: Path, members: list[tuple[str, bytes | None, bytes]]) -> Path:
    """A tar of (name, symlink target or None, content) members."""
    with tarfile.open(path, "w") as tar:
        for name, link, content in members:
            info = tarfile.TarInfo(name)
            if link is not None:
                info.type, info.linkname = tarfile.SYMTYPE, link.decode()
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return path


def test_install_standby_refuses_unsafe_archives(standby: PgManager, pg_root: Path) -> None:
    wal = _tar(pg_root / "empty-wal.tar", [])
    outside = pg_root / "escaped"
    kwargs: dict[str, Any] = {
        "primary_host": LOCALHOST,
        "primary_port": 5432,
        "user": "repl_x",
        "password": "pw",
        "slot": "x",
        "application_name": "x",
    }
    cases: dict[str, list[tuple[str, bytes | None, bytes]]] = {
        "leaves the target": [("PG_VERSION", None, b"17\n"), ("../escaped", None, b"boom")],
        "absolute path": [(str(outside), None, b"boom")],
        "holds a link": [("pg_wal", str(outside).encode(), b"")],
    }
    for message, members in cases.items():
        base = _tar(pg_root / "evil.tar", members)
        with pytest.raises(PgError, match=message):
            standby.install_standby(base, wal, **kwargs)
        assert not outside.exists()
        assert os.listdir(standby.data_dir) == []  # cleaned up, nothing half-installed
    no_marker = _tar(pg_root / "foreign.tar", [("PG_VERSION", None, b"17\n")])
    with pytest.raises(PgError, match="not of a Safehold cluster"):
        standby.install_standby(no_marker, wal, **kwargs)
    assert os.listdir(standby.data_dir) == []
    with pytest.raises(PgError, match="not a valid replication slot"):
        standby.install_standby(no_marker, wal, **{**kwargs, "slot": "Bad-Slot"})
    no_ca = PgManager(
        ClusterSpec(
            data_dir=standby.data_dir,
            port=1,
            tls_cert=standby.spec.tls_cert,
            tls_key=standby.spec.tls_key,
        ),
        standby.binaries,
    )
    with pytest.raises(PgError, match="CA"):
        no_ca.install_standby(no_marker, wal, **kwargs)


# --- roles, slots and who may replicate ---------------------------------------------------


def test_replication_roles_and_slots(primary: PgManager, password: str, tls: Tls) -> None:
    su = _target(primary, primary.spec.superuser, password, tls)
    admin.create_replication_role(su, "repl_adm", "first-password")
    admin.create_replication_role(su, "repl_adm", "second-password")  # idempotent, new password
    with _connect(primary, password) as conn:
        row = conn.execute(
            "SELECT rolcanlogin, rolreplication, rolsuper, rolpassword FROM pg_authid "
            "WHERE rolname = 'repl_adm'"
        ).fetchone()
    assert row is not None and row[:3] == (True, True, False)
    assert row[3].startswith("SCRAM-SHA-256$")  # only a verifier ever reached the server
    with _connect(primary, "second-password", user="repl_adm"):
        pass  # the new password is the one that works (an ordinary login over loopback)

    with pytest.raises(DatabaseError, match="not a replication role"):
        admin.create_replication_role(su, primary.spec.superuser, "x")  # never the superuser
    for bad in ("Repl", "repl-1", "pg_repl", "", "r" * 64):
        with pytest.raises(InvalidInput):
            admin.create_replication_role(su, bad, "x")
        with pytest.raises(InvalidInput):
            admin.create_slot(su, bad)

    assert admin.create_slot(su, "adm_slot") is True
    assert admin.create_slot(su, "adm_slot") is False
    slot = next(s for s in admin.list_slots(su) if s.name == "adm_slot")
    assert (slot.slot_type, slot.active, slot.active_pid) == ("physical", False, None)
    assert slot.restart_lsn is not None  # WAL is reserved from creation on
    assert slot.retained_bytes is not None and slot.retained_bytes >= 0
    assert admin.drop_slot(su, "adm_slot") is True
    assert admin.drop_slot(su, "adm_slot") is False
    assert all(s.name != "adm_slot" for s in admin.list_slots(su))
    assert admin.drop_replication_role(su, "repl_adm") is True
    assert admin.drop_replication_role(su, "repl_adm") is False
    with pytest.raises(DatabaseError, match="not a replication role"):
        admin.drop_replication_role(su, primary.spec.superuser)


def test_replication_needs_tls_and_the_right_password(
    primary: PgManager, password: str, tls: Tls, standby: PgManager, pg_root: Path
) -> None:
    su = _target(primary, primary.spec.superuser, password, tls)
    repl_password = secrets.token_urlsafe(18)
    admin.create_replication_role(su, "repl_gate", repl_password)
    primary.write_hba([conf.replication_hba_line("repl_gate", LOCALHOST)])
    try:
        with psycopg.connect(
            _replication_conninfo(primary, "repl_gate"), password=repl_password, connect_timeout=10
        ):
            pass  # TLS, verify-full, scram: accepted
        with pytest.raises(psycopg.OperationalError, match="no pg_hba.conf entry for replication"):
            psycopg.connect(
                _replication_conninfo(primary, "repl_gate", sslmode="disable"),
                password=repl_password,
                connect_timeout=10,
            )
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(
                _replication_conninfo(primary, "repl_gate"), password="wrong", connect_timeout=10
            )
        admin.create_slot(su, "gate")
        with pytest.raises(PgError, match="password authentication failed") as info:
            standby.base_backup(
                pg_root / "refused-backup",
                host=LOCALHOST,
                port=primary.spec.port,
                user="repl_gate",
                password="not-" + repl_password,
                slot="gate",
                sslrootcert=tls.ca,
                timeout=60,
            )
        assert repl_password not in str(info.value)
        assert os.listdir(pg_root / "refused-backup") == []
    finally:
        admin.drop_slot(su, "gate")
        admin.drop_replication_role(su, "repl_gate")
        primary.write_hba([])


def test_base_backup_timeout_kills_pg_basebackup(
    standby: PgManager, pg_root: Path, tls: Tls
) -> None:
    """A primary that never answers: the whole pg_basebackup process group is killed."""
    with socket.socket() as silent:
        silent.bind((LOCALHOST, 0))
        silent.listen()
        out_dir = pg_root / "hung-backup"
        started = time.monotonic()
        with pytest.raises(PgError, match="did not finish within 1s"):
            standby.base_backup(
                out_dir,
                host=LOCALHOST,
                port=silent.getsockname()[1],
                user="repl_x",
                password="pw",
                slot="x",
                sslrootcert=tls.ca,
                timeout=1,
            )
        assert time.monotonic() - started < 8  # not libpq's own 10 s connect timeout
    assert not [pid for pid in os.listdir("/proc") if pid.isdigit() and _runs_in(pid, out_dir)]


def _runs_in(pid: str, path: Path) -> bool:
    try:
        return str(path).encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


# --- the story ------------------------------------------------------------------------


def test_standby_streams_everything_the_primary_commits(
    primary: PgManager, standby: PgManager, password: str, tls: Tls, pg_root: Path
) -> None:
    su = _target(primary, primary.spec.superuser, password, tls)
    repl_password = secrets.token_urlsafe(18)

    # The primary: a table with rows, a replication role, a slot, a pg_hba line.
    with _connect(primary, password) as conn:
        conn.execute("CREATE TABLE items (id bigserial PRIMARY KEY, note text NOT NULL)")
        conn.execute("INSERT INTO items (note) SELECT 'before' FROM generate_series(1, 100)")
        conn.execute("CREATE ROLE monitor_app LOGIN PASSWORD 'monitor-pw'")
        conn.execute("GRANT SELECT ON items TO monitor_app")
    admin.grant_monitoring(su, "monitor_app")
    admin.create_replication_role(su, "repl_ro1", repl_password)
    assert admin.create_slot(su, "ro1") is True
    primary.write_hba([conf.replication_hba_line("repl_ro1", LOCALHOST)])

    # A base backup while a writer keeps committing rows on the primary.
    writer = Writer(make_conninfo(**primary.conninfo(user=primary.spec.superuser)), password)
    writer.start()
    wait_until(
        lambda: len(writer.committed) >= 50 or writer.error,
        timeout=30,
        what="the writer to get going",
    )
    before_backup = len(writer.committed)
    progress: list[tuple[int, int]] = []
    backup = standby.base_backup(
        pg_root / "backup-ro1",
        host=LOCALHOST,
        port=primary.spec.port,
        user="repl_ro1",
        password=repl_password,
        slot="ro1",
        sslrootcert=tls.ca,
        progress=lambda done, total: progress.append((done, total)),
        timeout=120,
    )
    during_backup = len(writer.committed) - before_backup
    committed = set(writer.finish()) | set(range(1, 101))
    assert during_backup > 0, "the primary took no writes while the backup ran"
    assert progress and progress[-1][0] > 0
    assert backup.base_tar.is_file() and backup.wal_tar.is_file()
    assert backup.start_lsn and backup.end_lsn

    # The standby: installed from the tars on its own port, with its own certificate.
    standby.install_standby(
        backup.base_tar,
        backup.wal_tar,
        primary_host=LOCALHOST,
        primary_port=primary.spec.port,
        user="repl_ro1",
        password=repl_password,
        slot="ro1",
        application_name="ro1",
    )
    shutil.rmtree(backup.out_dir)  # it holds the primary's private key: gone once installed
    data = standby.data_dir
    assert standby.is_standby() and standby.is_initialized()
    marker = json.loads((data / conf.MARKER_FILE).read_text())
    assert marker["created_by"] == "safehold" and marker["standby"] is True
    assert marker["primary"] == {
        "host": LOCALHOST,
        "port": primary.spec.port,
        "user": "repl_ro1",
        "slot": "ro1",
        "application_name": "ro1",
    }
    assert (data / conf.SERVER_CERT).read_bytes() == tls.standby_cert.read_bytes()
    assert (data / conf.SERVER_KEY).read_bytes() == tls.standby_key.read_bytes()
    assert not (data / conf.LOG_DIR).exists()  # the primary's logs were not taken over
    passfile = (data / conf.REPLICATION_PASSFILE).stat()
    assert stat.S_IMODE(passfile.st_mode) == 0o600
    service_uid = standby.service_user.uid if standby.service_user else os.geteuid()
    assert passfile.st_uid == service_uid and data.stat().st_uid == service_uid
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    for name in (conf.CONF_FILE, "postgresql.conf", "postgresql.auto.conf", conf.MARKER_FILE):
        assert repl_password not in (data / name).read_text()

    assert standby.start() is True
    wait_until(
        lambda: _ids(standby, password) >= committed,
        timeout=30,
        what="the standby to have every row the primary committed",
    )
    assert _ids(standby, password) == committed  # nothing missing, nothing invented
    with _connect(standby, password) as conn:

        def show(name: str) -> str:
            row = conn.execute(f"SHOW {name}").fetchone()
            assert row is not None
            return str(row[0])

        assert show("port") == str(standby.spec.port)  # its own spec won over the primary's
        assert show("ssl") == "on" and show("hot_standby_feedback") == "on"
        assert show("primary_slot_name") == "ro1"
        assert "sslmode='verify-full'" in show("primary_conninfo")
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("INSERT INTO items (note) VALUES ('on the replica')")

    # What each side reports, read as a pg_monitor login (not a superuser).
    monitor_primary = _target(primary, "monitor_app", "monitor-pw", tls)
    monitor_replica = _target(standby, "monitor_app", "monitor-pw", tls)

    def streaming_link() -> replication.StandbyLink | None:
        link = _read(monitor_primary, replication.primary_view).by_slot("ro1")
        return link if link is not None and link.state == "streaming" else None

    link = wait_until(streaming_link, timeout=30, what="the primary to see ro1 streaming")
    assert link.application_name == "ro1" and link.slot_active is True
    assert link.client_addr == LOCALHOST and link.replay_lsn is not None
    assert link.lag_bytes is not None and 0 <= link.lag_bytes < 16 * 1024 * 1024
    view = _read(monitor_replica, replication.replica_view)
    assert view.in_recovery and view.streaming
    assert (view.sender_host, view.sender_port, view.slot_name) == (
        LOCALHOST,
        primary.spec.port,
        "ro1",
    )
    assert view.receive_lsn is not None and view.replay_lsn is not None
    assert view.replay_backlog_bytes is not None and view.replay_backlog_bytes < 16 * 1024 * 1024
    assert view.last_msg_receipt_time is not None

    # kill -9 the primary: the replica keeps serving reads and sees its receiver down.
    primary.kill()
    assert _ids(standby, password) == committed
    down = wait_until(
        lambda: (v := _read(monitor_replica, replication.replica_view)) and not v.streaming and v,
        timeout=30,
        what="the replica to notice the primary is gone",
    )
    assert down.in_recovery and down.receive_lsn is not None

    # The primary comes back: the replica reconnects by itself and catches up.
    assert primary.start() is True
    with _connect(primary, password) as conn:
        new = {
            r[0]
            for r in conn.execute(
                "INSERT INTO items (note) SELECT 'after restart' FROM generate_series(1, 20) "
                "RETURNING id"
            )
        }
    wait_until(
        lambda: _ids(standby, password) >= new,
        timeout=60,
        what="the replica to catch up after the primary's restart",
    )
    wait_until(
        lambda: _read(monitor_replica, replication.replica_view).streaming,
        timeout=30,
        what="the replica to stream again",
    )

    # Dropping the slot ends its WAL sender; dropping the role keeps the standby out.
    assert next(s for s in admin.list_slots(su) if s.name == "ro1").active
    assert admin.drop_slot(su, "ro1") is True
    assert admin.drop_replication_role(su, "repl_ro1") is True
    assert all(s.name != "ro1" for s in admin.list_slots(su))
    wait_until(
        lambda: _read(su, replication.primary_view).by_application_name("ro1") is None,
        timeout=30,
        what="the primary to have no WAL sender for ro1",
    )

    # Promotion makes the standby a writable primary of its own.
    standby.promote()
    assert not standby.is_standby()
    marker = json.loads((data / conf.MARKER_FILE).read_text())
    assert marker["standby"] is False and "primary" not in marker and marker["promoted_at"]
    assert not (data / conf.REPLICATION_PASSFILE).exists()
    with _connect(standby, password) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)
        row = conn.execute("INSERT INTO items (note) VALUES ('promoted') RETURNING id").fetchone()
        assert row is not None
    promoted = _read(monitor_replica, replication.replica_view)
    assert not promoted.in_recovery and promoted.receiver_status is None
    with pytest.raises(PgError, match="not a standby"):
        standby.promote()
