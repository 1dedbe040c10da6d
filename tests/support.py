"""Test support: real Safehold servers as their own processes on 127.0.0.1.

Each :class:`Server` has its own data directory and free ports; every process
it starts is stopped by :meth:`Server.cleanup` (the fixtures call it even when
a test fails).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ADMIN_PASSWORD = "Admin-Password-For-Tests-1"
SAFEHOLD = [sys.executable, "-m", "safehold"]


_handed_out: set[int] = set()


def free_port() -> int:
    """A free TCP port on 127.0.0.1.  Under pytest-xdist each worker draws from a range of its own below
    the kernel's ephemeral range, so two workers never pick the same port (nor a port the kernel gives an
    outgoing connection) between choosing it and binding it."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker.startswith("gw"):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])
    low = 10000 + (int(worker[2:]) % 4) * 5000
    for _ in range(500):
        port = random.randrange(low, low + 5000)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port in {low}..{low + 4999}")


def run_cli(*args: str, check: bool = True, input: str | None = None, timeout: float = 120,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*SAFEHOLD, *args], capture_output=True, text=True, input=input, timeout=timeout,
                          env={**os.environ, "COLUMNS": "200", **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"safehold {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def wait_until(predicate: Any, *, timeout: float = 30, interval: float = 0.2, what: str = "condition") -> Any:
    """Poll with a deadline (never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except Exception as exc:  # noqa: BLE001 - keep polling
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


@dataclass
class Server:
    data_dir: Path
    port: int = field(default_factory=free_port)
    db_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    # serve in a session of its own: a Ctrl-C in the terminal reaches only the caller (a benchmark),
    # which then stops its servers itself
    detached: bool = False

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca(self) -> str:
        return str(self.data_dir / "tls" / "ca.crt")

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca)

    def init(self, *extra: str) -> subprocess.CompletedProcess[str]:
        pw = self.data_dir.parent / f"{self.data_dir.name}-admin-pw"
        pw.write_text(ADMIN_PASSWORD)
        return run_cli("init", "--data-dir", str(self.data_dir), "--port", str(self.port),
                       "--db-port", str(self.db_port), "--admin-password-file", str(pw), "--name",
                       self.data_dir.name, *extra)

    def start(self, *, wait: bool = True, env: dict[str, str] | None = None, timeout: float = 30) -> None:
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}-serve.log"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([*SAFEHOLD, "serve", "--data-dir", str(self.data_dir)], stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env={**os.environ, **(env or {})}, start_new_session=self.detached)
        if wait:
            self.wait_healthy(timeout=timeout)

    def wait_healthy(self, timeout: float = 30) -> None:
        def healthy() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            with httpx.Client(verify=self.ssl_context(), timeout=2) as c:
                return c.get(f"{self.url}/api/v1/health").status_code == 200

        wait_until(healthy, timeout=timeout, what=f"{self.url} to be healthy")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def stop(self, timeout: float = 30) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
        self.proc = None
        return code

    def cleanup(self) -> None:
        """Stop the app server and any bundled PostgreSQL of this data directory."""
        with contextlib.suppress(Exception):
            self.stop(timeout=15)
        pg_dir = self.data_dir / "pg"
        pid_file = pg_dir / "postmaster.pid"
        if pid_file.exists():
            from safehold.config import load_settings
            from safehold.runtime import database

            try:
                pg = database.manager(load_settings(self.data_dir))
                if not pg.stop(timeout=15):
                    pg.kill()
            except Exception:  # noqa: BLE001 - last resort below
                with contextlib.suppress(Exception):
                    os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=f"{self.url}/api/v1", verify=self.ssl_context(), headers=headers, timeout=30)

    def login(self, username: str = "admin", password: str = ADMIN_PASSWORD, totp: str | None = None) -> str:
        body: dict[str, str] = {"username": username, "password": password}
        if totp:
            body["totp"] = totp
        with self.client() as c:
            r = c.post("/auth/login", json=body)
        assert r.status_code == 200, r.text
        return str(r.json()["token"])

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run_cli(args[0], *args[1:], "--data-dir", str(self.data_dir), check=check)


@contextlib.contextmanager
def running_server(data_dir: Path, *init_args: str) -> Iterator[Server]:
    server = Server(data_dir)
    try:
        server.init(*init_args)
        server.start()
        yield server
    finally:
        server.cleanup()


def superuser_connect(server: Server, dbname: str = "safehold") -> Any:
    """A psycopg connection as the bundled database's superuser (to play the attacker with DB access)."""
    import psycopg

    from safehold.config import load_settings
    from safehold.storage.db import owner_target

    t = owner_target(load_settings(server.data_dir), dbname=dbname)
    return psycopg.connect(host=t.host, port=t.port, user=t.user, password=t.password, dbname=t.dbname,
                           sslmode="verify-full", sslrootcert=str(t.sslrootcert), autocommit=True)


def pg_dump(server: Server) -> bytes:
    """A plain-SQL dump of the vault database, made with the bundled pg_dump."""
    from safehold.config import load_settings
    from safehold.runtime import database
    from safehold.storage.db import owner_target

    settings = load_settings(server.data_dir)
    target = owner_target(settings)
    return database.manager(settings).run_tool("pg_dump", ["--format=plain", target.dbname],
                                               env=target.libpq_env()).stdout


def seed_account(server: Server, token: str, password: str, *, resource: str = "db01",
                 username: str = "root") -> tuple[str, str]:
    """Create a resource with one account; returns (resource id, account id)."""
    with server.client(token) as c:
        r = c.post("/resources", json={"name": resource, "address": "db01.example.internal", "tags": ["prod"]})
        assert r.status_code == 201, r.text
        rid = r.json()["id"]
        a = c.post(f"/resources/{rid}/accounts", json={"username": username, "password": password})
        assert a.status_code == 201, a.text
        return rid, a.json()["id"]


def app_connect(data_dir: Path, dbname: str | None = None) -> Any:
    """A psycopg connection (autocommit) to a server's bundled database as its app login, the role the
    server itself uses (on a read-only server: its replica)."""
    import psycopg

    from safehold.config import load_settings
    from safehold.storage.db import app_target

    t = app_target(load_settings(data_dir))
    return psycopg.connect(host=t.host, port=t.port, user=t.user, password=t.password,
                           dbname=dbname or t.dbname, sslmode="verify-full", sslrootcert=str(t.sslrootcert),
                           autocommit=True, connect_timeout=10)


def tree_snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every path under ``root`` (itself included) with its mode, and for files their size and mtime:
    equal snapshots mean nothing in the tree was created, removed or changed.  A directory's own size
    and mtime are left out: a scratch directory made and removed inside it changes them; so are the live
    metrics files of a server running with several workers (``run/metrics``) and its count of revocations
    (``run/principals``)."""
    snapshot: dict[str, tuple[int, int, int]] = {}
    for path in [root, *sorted(root.rglob("*"))]:
        if path.relative_to(root).parts[:2] in (("run", "metrics"), ("run", "principals")):
            continue
        st = path.lstat()
        is_dir = path.is_dir() and not path.is_symlink()
        snapshot[str(path.relative_to(root))] = (st.st_mode, 0 if is_dir else st.st_size,
                                                 0 if is_dir else st.st_mtime_ns)
    return snapshot


def copy_key_file(server: Server, dest: Path) -> Path:
    """A copy (mode 0600) of a server's master key file, as an operator brings it to another host."""
    from safehold.config import load_settings

    dest.write_bytes(load_settings(server.data_dir).key_file.read_bytes())
    dest.chmod(0o600)
    return dest


def join_cli(setup_file: Path, data_dir: Path, key_file: Path, passphrase_file: Path, *extra: str,
             check: bool = True) -> subprocess.CompletedProcess[str]:
    """``safehold ha join`` with the passphrase from a file."""
    return run_cli("ha", "join", str(setup_file), "--data-dir", str(data_dir), "--key-file", str(key_file),
                   "--passphrase-file", str(passphrase_file), *extra, check=check)


def make_secondary(primary: Server, data_dir: Path, *, name: str = "secondary") -> Server:
    """Add a secondary to ``primary`` (``ha add-secondary`` on 127.0.0.1) and join it: a configured,
    not yet started :class:`Server` whose data directory is ``data_dir``.  The setup file, its
    passphrase file and the copied key file are left beside ``data_dir``."""
    setup, passphrase, key = (data_dir.with_name(f"{data_dir.name}{suffix}")
                              for suffix in (".setup", ".passphrase", ".key"))
    passphrase.write_text("test-passphrase-" + data_dir.name)
    primary.cli("ha", "add-secondary", "--host", "127.0.0.1", "--out", str(setup),
                "--passphrase-file", str(passphrase), "--name", name)
    secondary = Server(data_dir)
    join_cli(setup, data_dir, copy_key_file(primary, key), passphrase, "--port", str(secondary.port))
    return secondary


def make_readonly(primary: Server, data_dir: Path, *, name: str = "readonly") -> Server:
    """Take a setup pack on ``primary`` (``ha pack`` for 127.0.0.1) and join it: a configured, not yet
    started read-only :class:`Server` with its own replica."""
    pack, passphrase, key = (data_dir.with_name(f"{data_dir.name}{suffix}")
                             for suffix in (".pack", ".passphrase", ".key"))
    passphrase.write_text("test-passphrase-" + data_dir.name)
    primary.cli("ha", "pack", "--readonly-host", "127.0.0.1", "--out", str(pack),
                "--passphrase-file", str(passphrase), "--name", name)
    readonly = Server(data_dir)
    join_cli(pack, data_dir, copy_key_file(primary, key), passphrase, "--port", str(readonly.port),
             "--db-port", str(readonly.db_port), "--name", name)
    return readonly


@contextlib.contextmanager
def running_pair(base: Path, *, before_start: Any = None) -> Iterator[tuple[Server, Server]]:
    """The primary + read-only deployment model, both serving: a primary and a read-only server joined from
    its setup pack (``before_start(readonly)`` may configure it first); both cleaned up afterwards."""
    with running_server(base / "primary") as primary:
        readonly = make_readonly(primary, base / "readonly")
        try:
            if before_start is not None:
                before_start(readonly)
            readonly.start()
            yield primary, readonly
        finally:
            readonly.cleanup()


@contextlib.contextmanager
def running_topology(base: Path) -> Iterator[tuple[Server, Server, Server]]:
    """The recommended deployment model, all serving: a primary, a secondary and a read-only server named
    "primary", "secondary" and "readonly"; all cleaned up afterwards."""
    started: list[Server] = []
    with running_server(base / "primary") as primary:
        try:
            secondary = make_secondary(primary, base / "secondary", name="secondary")
            started.append(secondary)
            readonly = make_readonly(primary, base / "readonly", name="readonly")
            started.append(readonly)
            secondary.start()
            readonly.start()
            yield primary, secondary, readonly
        finally:
            for s in reversed(started):
                s.cleanup()


class Listener:
    """A TCP port on a loopback address that accepts and closes connections: a witness (or gateway) of the
    automatic failover that is up until it is closed."""

    def __init__(self, host: str, port: int = 0) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(16)
        self.host, self.port = host, int(self.sock.getsockname()[1])
        self.address = f"{host}:{self.port}"
        self.thread = threading.Thread(target=self._serve, name=f"listener-{host}", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.close()

    def close(self) -> None:
        # shutdown wakes the thread blocked in accept(); a bare close() would leave the port listening
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(timeout=5)

    def reopen(self) -> Listener:
        """The same address listening again."""
        return Listener(self.host, self.port)


def serves_users_itself(readonly: Server) -> bool:
    """Whether a read-only server serves users itself (emergency mode) instead of redirecting them."""
    with readonly.client() as c:
        return c.get("/me").status_code != 307


def accounts_in(data_dir: Path) -> set[str]:
    """The ids of the accounts in a server's database (a read-only server's: its replica)."""
    with app_connect(data_dir) as conn:
        return {str(r[0]) for r in conn.execute("SELECT id FROM accounts")}
