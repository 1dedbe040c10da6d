"""The operator's tooling, against real 'safehold serve' processes: systemd's notifications received on a
NOTIFY_SOCKET datagram socket this test binds (READY=1 once it serves, WATCHDOG=1 from the HA loop and only
while every worker's loop runs, STOPPING=1, all from the main process), the unit file as systemd-analyze reads
it, X-Request-Id on every response and on the log lines of its request, and a whole log at DEBUG in JSON
that holds none of the passwords, tokens and keys the story used."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support import ADMIN_PASSWORD, SAFEHOLD, Server, run_cli, seed_account, wait_until
from tests.ui_client import Browser

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "contrib" / "systemd" / "safehold.service"
#: the HA loop every half second, so that the watchdog's pings come often
FAST = {"SAFEHOLD_HA__CHECK_INTERVAL": "0.5"}
WATCHDOG_SECONDS = 3.0


# --- a service manager's end of NOTIFY_SOCKET ---------------------------------------------------------------

@dataclass(frozen=True)
class Notification:
    pid: int  # the sender, as the kernel says (SCM_CREDENTIALS): systemd's NotifyAccess=main checks it
    fields: dict[str, str]
    at: float  # time.monotonic() when received


class NotifySocket:
    """A datagram socket bound where NOTIFY_SOCKET points (a path, or ``@name`` in the abstract namespace),
    collecting every notification with its sender's pid in a thread."""

    def __init__(self, address: str) -> None:
        self.env_value = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.settimeout(0.2)
        self.received: list[Notification] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._collect, name="notify-socket", daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        creds = struct.calcsize("3i")
        while not self._stop.is_set():
            try:
                data, ancillary, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(creds))
            except TimeoutError:
                continue
            except OSError:
                return
            pid = -1
            for level, kind, value in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("3i", value[:creds])[0]
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.received.append(Notification(pid, fields, time.monotonic()))

    def with_field(self, key: str, value: str | None = None) -> list[Notification]:
        return [n for n in list(self.received) if key in n.fields and (value is None or n.fields[key] == value)]

    def wait_for(self, key: str, value: str = "1", *, count: int = 1, after: float = 0.0,
                 timeout: float = 60) -> list[Notification]:
        return wait_until(lambda: (got := [n for n in self.with_field(key, value) if n.at > after])[count - 1:]
                          and got, timeout=timeout, what=f"{count} x {key}={value}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


@pytest.fixture()
def short_dir() -> Iterator[Path]:
    """A directory with a short path for a socket (a socket's path holds at most 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="sh-notify-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def initialised(server_root: Path) -> Iterator[Server]:
    """One server, initialised and not started: each test starts it with the environment it needs."""
    server = Server(Path(tempfile.mkdtemp(dir=server_root)) / "data")
    try:
        server.init()
        yield server
    finally:
        server.cleanup()


def workers_of(pid: int) -> list[int]:
    """The worker processes a supervisor forked (its children that are not PostgreSQL)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(c) for c in children
            if "safehold" in Path(f"/proc/{c}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")]


# --- systemd ------------------------------------------------------------------------------------------------

def test_one_process_tells_an_abstract_socket_ready_alive_and_stopping(initialised: Server) -> None:
    notify = NotifySocket(f"@safehold-test-{uuid.uuid4().hex}")
    try:
        initialised.start(env={**FAST, "NOTIFY_SOCKET": notify.env_value, "SAFEHOLD_HTTP__WORKERS": "1",
                               "WATCHDOG_USEC": str(int(WATCHDOG_SECONDS * 1e6))})
        assert initialised.proc is not None
        main = initialised.proc.pid
        (ready,) = notify.wait_for("READY")
        assert ready.fields["STATUS"] == f"serving on {initialised.url}"
        pings = notify.wait_for("WATCHDOG", count=3, after=ready.at)
        assert {p.pid for p in pings} == {main}
        assert initialised.stop() == 0
        (stopping,) = notify.wait_for("STOPPING", timeout=5)
        assert stopping.at > pings[-1].at
        # nothing else spoke for the service: not the bundled PostgreSQL, which never saw NOTIFY_SOCKET
        assert {n.pid for n in notify.received} == {main}, notify.received
    finally:
        initialised.stop()
        notify.close()


def test_workers_are_ready_together_and_a_stuck_worker_starves_the_watchdog(initialised: Server,
                                                                            short_dir: Path) -> None:
    notify = NotifySocket(str(short_dir / "notify"))
    try:
        initialised.start(env={**FAST, "NOTIFY_SOCKET": notify.env_value, "SAFEHOLD_HTTP__WORKERS": "2",
                               "WATCHDOG_USEC": str(int(WATCHDOG_SECONDS * 1e6))})
        assert initialised.proc is not None
        main = initialised.proc.pid
        (ready,) = notify.wait_for("READY")
        assert ready.fields["STATUS"] == f"serving on {initialised.url} with 2 workers"
        first = notify.with_field("STATUS", "starting: 1 of 2 workers serving")
        assert first and first[0].at < ready.at  # one worker serving was not enough
        notify.wait_for("WATCHDOG", count=3, after=ready.at)

        worker = workers_of(main)[0]
        os.kill(worker, signal.SIGSTOP)  # its event loop, HA loop included, stops: as if it hung
        try:
            stopped_at = time.monotonic()

            def quiet_for_a_whole_interval() -> bool:
                now = time.monotonic()
                last = max([stopped_at, *(n.at for n in notify.with_field("WATCHDOG", "1"))])
                return now - last >= WATCHDOG_SECONDS

            wait_until(quiet_for_a_whole_interval, timeout=8 * WATCHDOG_SECONDS, interval=0.1,
                       what="the pings to stop while a worker is stuck")
        finally:
            os.kill(worker, signal.SIGCONT)
        resumed_after = time.monotonic()
        notify.wait_for("WATCHDOG", after=resumed_after, timeout=30)  # well again: the pings come back

        assert initialised.stop() == 0
        notify.wait_for("STOPPING", timeout=5)
        assert {n.pid for n in notify.received} == {main}, "only the main process speaks (NotifyAccess=main)"
    finally:
        initialised.stop()
        notify.close()


def test_the_unit_file_asks_for_what_serve_does() -> None:
    text = UNIT.read_text()
    settings = dict(re.findall(r"^([A-Za-z]+)=(.*)$", text, re.M))
    assert settings["Type"] == "notify" and settings["NotifyAccess"] == "main"
    assert settings["WatchdogSec"] and settings["User"] == "safehold"
    assert settings["ProtectSystem"] == "strict" and settings["ReadWritePaths"] == "/var/lib/safehold"
    assert "--data-dir /var/lib/safehold" in settings["ExecStart"]
    for key in ("NoNewPrivileges", "PrivateTmp", "ProtectHome"):
        assert settings[key] == "yes", key
    assert set(settings["RestrictAddressFamilies"].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_the_unit_file_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    # the program it names must exist for verify: the one installed here stands in for /opt/safehold's
    here = Path(SAFEHOLD[0]).parent / "safehold"
    unit = tmp_path / "safehold.service"
    unit.write_text(UNIT.read_text().replace("/opt/safehold/bin/safehold", str(here)))
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    complaints = [line for line in (proc.stdout + proc.stderr).splitlines() if "safehold" in line]
    assert proc.returncode == 0 and not complaints, proc.stdout + proc.stderr


# --- logs ---------------------------------------------------------------------------------------------------

def forms(secret: str | bytes) -> set[str]:
    """A secret as it could leak: itself, JSON-escaped, hex, base64 and base64url (padded or not)."""
    raw = secret.encode() if isinstance(secret, str) else secret
    found = {raw.hex(), raw.hex().upper()}
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        text = encode(raw).decode()
        found |= {text, text.rstrip("=")}
    if isinstance(secret, str):
        found |= {secret, json.dumps(secret)[1:-1]}
    return found


def key_bytes(path: Path) -> bytes:
    """A master key file's 32 bytes (``safehold-key-v1:`` and base64url)."""
    encoded = path.read_text().strip().partition(":")[2]
    return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))


def start_separately(server: Server, env: dict[str, str], stderr: Path) -> None:
    """'serve' with its log (standard error) in a file of its own, apart from what it prints to stdout."""
    server.log_path = stderr.with_suffix(".stdout")
    with open(server.log_path, "ab") as out, open(stderr, "ab") as err:
        server.proc = subprocess.Popen([*SAFEHOLD, "serve", "--data-dir", str(server.data_dir)], stdout=out,
                                       stderr=err, stdin=subprocess.DEVNULL, env={**os.environ, **env})
    server.wait_healthy(timeout=60)


def test_a_debug_log_in_json_holds_no_secret_and_names_each_request(server_root: Path) -> None:
    base = Path(tempfile.mkdtemp(dir=server_root))
    server = Server(base / "data")
    # the [log] section from the environment for 'serve', the variable of old for the commands
    serve_env = {"SAFEHOLD_LOG__FORMAT": "json", "SAFEHOLD_LOG__LEVEL": "debug", "SAFEHOLD_HTTP__WORKERS": "2",
                 **FAST}
    cli_env = {"SAFEHOLD_LOG__FORMAT": "json", "SAFEHOLD_LOG_LEVEL": "DEBUG"}
    secrets: dict[str, str | bytes] = {"the administrator's password": ADMIN_PASSWORD}
    cli_logs: list[str] = []
    stderr = base / "serve.log"
    try:
        pw_file = base / "admin-pw"
        pw_file.write_text(ADMIN_PASSWORD)
        cli_logs.append(run_cli("init", "--data-dir", str(server.data_dir), "--port", str(server.port),
                                "--db-port", str(server.db_port), "--admin-password-file", str(pw_file),
                                "--name", "logged", env=cli_env).stderr)
        for name in ("db_password", "db_superuser_password"):
            secrets[f"secrets/{name}"] = (server.data_dir / "secrets" / name).read_text().strip()
        secrets["the master key"] = key_bytes(server.data_dir / "safehold.key")
        start_separately(server, serve_env, stderr)

        # sign-in, a failed one, tokens, passwords set, changed and read, TOTP, a user and their password
        admin = server.login()
        secrets["a session token"] = admin
        wrong = f"Wrong-{uuid.uuid4().hex}"
        secrets["a mistyped password"] = wrong
        with server.client() as c:
            assert c.post("/auth/login", json={"username": "admin", "password": wrong}).status_code == 401
        with server.client(admin) as c:
            api_token = c.post("/me/tokens", json={"name": "automation"}).json()["token"]
            secrets["an API token"] = api_token
            user_pw, user_pw2 = f"User-{uuid.uuid4().hex}", f"User2-{uuid.uuid4().hex}"
            secrets |= {"a user's first password": user_pw, "a user's new password": user_pw2}
            assert c.post("/users", json={"username": "alice", "password": user_pw}).status_code == 201
            generated = c.post("/passwords/generate", json={}).json()["password"]
            secrets["a generated password"] = generated
        first, second = f"Acct-{uuid.uuid4().hex}", f"Rotated-{uuid.uuid4().hex}!\"\\"
        secrets |= {"an account's password": first, "its new password": second}
        _, account = seed_account(server, api_token, first)
        with server.client(api_token) as c:
            assert c.get(f"/accounts/{account}/password").json()["password"] == first
            assert c.patch(f"/accounts/{account}", json={"password": second}).status_code == 200
            assert c.get(f"/accounts/{account}/password").json()["password"] == second
        alice = server.login("alice", user_pw)
        secrets["alice's session token"] = alice
        with server.client(alice) as c:
            assert c.post("/me/password", json={"current_password": user_pw, "new_password": user_pw2}
                          ).status_code == 204
        alice = server.login("alice", user_pw2)
        with server.client(alice) as c:
            secrets["a TOTP secret"] = c.post("/me/totp").json()["secret"]
        with Browser(server) as browser:  # the pages' sign-in form and its cookies
            browser.sign_in()
            for cookie, value in browser.c.cookies.items():
                secrets[f"the pages' {cookie} cookie"] = value
            browser.get("/ui/vault")
        token_out = run_cli("token", "create", "--data-dir", str(server.data_dir), "--user", "admin", env=cli_env)
        secrets["a token made by the command"] = token_out.stdout.strip()
        cli_logs.append(token_out.stderr)

        # key operations: a new master key while the server serves
        old_key = key_bytes(server.data_dir / "safehold.key")
        cli_logs.append(run_cli("key", "rotate", "--data-dir", str(server.data_dir), env=cli_env).stderr)
        secrets["the new master key"] = key_bytes(server.data_dir / "safehold.key")
        assert secrets["the new master key"] != old_key

        # the request id: one the client sent (sane) comes back, any other is replaced by a new one
        with server.client() as c:
            kept = c.get("/health", headers={"X-Request-Id": "trace-42.a"})
            replaced = c.get("/health", headers={"X-Request-Id": "x" * 200})
            refused = c.post("/auth/login", json={"username": "admin", "password": wrong},
                             headers={b"X-Request-Id": "bad id\u00e9".encode("latin-1")})
        assert kept.headers["X-Request-Id"] == "trace-42.a"
        new_id = replaced.headers["X-Request-Id"]
        assert new_id and new_id != "x" * 200 and len(new_id) <= 128
        assert refused.status_code == 401 and re.fullmatch(r"[0-9a-f]{32}", refused.headers["X-Request-Id"])
        with httpx.Client(verify=server.ssl_context(), timeout=30) as c:
            page = c.get(f"{server.url}/ui/login")  # a page, and a redirect, carry it too
            gone = c.get(f"{server.url}/nowhere")
        assert page.headers["X-Request-Id"] and gone.status_code == 404 and gone.headers["X-Request-Id"]

        assert server.stop() == 0
        log = stderr.read_text()
        records = [json.loads(line) for line in log.splitlines()]  # every line of the log is one JSON object
        cli_records = [json.loads(line) for text in cli_logs for line in text.splitlines() if line.startswith("{")]
    finally:
        server.cleanup()

    # the log is the real thing: DEBUG lines, from both workers and the supervisor, for this server
    assert any(r["level"] == "DEBUG" for r in records)
    assert len({r["pid"] for r in records}) >= 3
    assert {r["server"] for r in records} == {"logged"} and {r["role"] for r in records} == {"standalone"}
    assert {"time", "level", "logger", "message", "server", "role", "request_id"} <= set(records[0])
    # each request's line names it: the ids the client saw are in the log, on its access lines
    by_request = {r["request_id"]: r for r in records if r["logger"] == "safehold.web.access"}
    assert by_request["trace-42.a"]["message"] == "GET /api/v1/health -> 200"
    assert by_request[new_id]["message"] == "GET /api/v1/health -> 200"
    assert by_request[refused.headers["X-Request-Id"]]["message"] == "POST /api/v1/auth/login -> 401"
    assert not any("x" * 129 in (r["request_id"] or "") for r in records)
    assert cli_records, "the commands logged at DEBUG in JSON too"

    everything = log + "\n".join(cli_logs) + json.dumps(records + cli_records, ensure_ascii=False)
    leaked = sorted(what for what, secret in secrets.items() for form in forms(secret) if form in everything)
    assert not leaked, f"in the log: {leaked}"


def test_text_lines_name_their_request(initialised: Server) -> None:
    with contextlib.ExitStack() as stack:
        stack.callback(initialised.stop)
        initialised.start(env={"SAFEHOLD_LOG_LEVEL": "DEBUG", "SAFEHOLD_HTTP__WORKERS": "1"})
        with initialised.client() as c:
            rid = c.get("/health", headers={"X-Request-Id": "text-trace-1"}).headers["X-Request-Id"]
        assert rid == "text-trace-1"
        wait_until(lambda: "GET /api/v1/health -> 200 [request text-trace-1]" in initialised.log(), timeout=10,
                   what="the access line")
