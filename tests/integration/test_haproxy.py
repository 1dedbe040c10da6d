"""HAProxy in front of a cluster, set up as ``docs/examples/haproxy.cfg`` says: Debian's haproxy runs that very
file, its example values replaced by this test's servers (ports, certificate names, the cluster CA), in front
of a primary, a secondary and a read-only server, while a client keeps retrieving a password through it.

The story, each part checked against HAProxy's own view (which servers it has in which pool, and how many
answers each gave):

1. all up: the primary and the secondary share the retrievals;
2. the primary's app hangs with a retrieval in it and is then killed (a machine that freezes and is reset):
   every retrieval still succeeds at its first attempt, HAProxy sending the one that met the dead server to
   the secondary (retry-on, redispatch); the primary comes back into the pool;
3. a switchover makes the read-only server the primary: nothing can be read from the primary database's
   shutdown until the promotion, so the client tries a failed retrieval again, as automation behind a
   balancer does (every ``PAUSE`` seconds, at most ``ATTEMPTS`` times); HAProxy then sends everything to the
   new primary, with no change to its configuration;
4. the new primary's app dies too: the old primary, now a read-only server, serves users itself, and HAProxy
   falls back to it.

Every retrieval the client made succeeded, with the right password.

Without ``/usr/sbin/haproxy`` (Debian's haproxy; ``scripts/test`` installs it when run as root) the test is
skipped, unless the environment variable CI is set: CI must run it, so it fails there."""

from __future__ import annotations

import contextlib
import csv
import os
import re
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from safehold.crypto.certs import make_ca, make_server_cert
from tests.integration.test_ha_faults import process_tree
from tests.support import (
    Server,
    accounts_in,
    free_port,
    run_cli,
    running_topology,
    seed_account,
    serves_users_itself,
    wait_until,
)

pytestmark = pytest.mark.timeout(600)

HAPROXY = Path("/usr/sbin/haproxy")
EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "haproxy.cfg"
PASSWORD = "Through-The-Balancer-1"
#: the client's patience with one retrieval: tried again every PAUSE seconds, at most ATTEMPTS times
ATTEMPTS, PAUSE = 240, 0.25
WRITABLE, READONLY = "safehold_writable", "safehold_readonly"


def require_haproxy() -> None:
    """Skip the calling test when Debian's haproxy is missing here; fail it instead when CI is set."""
    if os.access(HAPROXY, os.X_OK):
        return
    reason = f"{HAPROXY} missing: install Debian's haproxy (scripts/test does it when run as root)"
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the HAProxy story, but {reason}", pytrace=False)
    pytest.skip(reason)


def render(example: str, values: dict[str, str]) -> str:
    """The example with each of its example values replaced; every one must still be in it (else the example
    changed under this test), and none may be left."""
    for placeholder, value in values.items():
        assert placeholder in example, f"{EXAMPLE.name} has no {placeholder!r} any more: update this test"
        example = example.replace(placeholder, value)
    leftover = re.findall(r"10\.0\.0\.\d+|[\w.-]+\.example\.internal|/etc/haproxy/\S+|bind :\d+", example)
    assert not leftover, f"example values this test does not replace: {sorted(set(leftover))}"
    return example


def example_config(servers: list[Server], *, bind: str, cert: Path) -> str:
    """``docs/examples/haproxy.cfg`` for these servers: safehold1, safehold2, safehold3 in that order, each
    checked against the name "localhost" (in every test server's certificate)."""
    values = {"bind :443": f"bind {bind}", "/etc/haproxy/certs/safehold.pem": str(cert),
              "/etc/haproxy/safehold-ca.crt": servers[0].ca}
    for n, server in enumerate(servers, start=1):
        values[f"10.0.0.{n}:8443"] = f"127.0.0.1:{server.port}"
        values[f"safehold{n}.example.internal"] = "localhost"
    return render(EXAMPLE.read_text(), values)


def frontend_tls(directory: Path) -> tuple[Path, str]:
    """The certificate users see (for 127.0.0.1) with its key, as HAProxy wants them (one file), and the CA
    that signed it, for the client."""
    ca, ca_key = make_ca("HAProxy story users' CA")
    cert, key = make_server_cert(ca, ca_key, ["127.0.0.1"])
    pem = directory / "frontend.pem"
    pem.touch(mode=0o600)
    pem.write_bytes(cert + key)
    return pem, ca.decode()


class HAProxy:
    """Debian's haproxy running a configuration in the foreground (``-db``).  Its admin socket, which tells
    the state of every server and how many answers each gave, comes from a second configuration file, so the
    example is run as it is written."""

    def __init__(self, directory: Path, config: str) -> None:
        self.dir = directory
        self.config = directory / "haproxy.cfg"
        self.config.write_text(config)
        self.socket = directory / "admin.sock"
        self.extra = directory / "test-admin.cfg"
        self.extra.write_text(f"global\n    stats socket {self.socket} mode 600 level admin\n"
                              "    log stdout format raw local0\n")
        self.log_path = directory / "haproxy.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def argv(self) -> list[str]:
        # the test's file first: "log global" in the example's defaults takes the loggers defined before it
        return [str(HAPROXY), "-f", str(self.extra), "-f", str(self.config)]

    def check(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.argv, "-c"], capture_output=True, text=True, timeout=60)

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([*self.argv, "-db"], stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        wait_until(self._answers, timeout=30, what="HAProxy's admin socket")

    def _answers(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"haproxy exited with {self.proc.returncode}:\n{self.log()}")
        return bool(self.stat())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stat(self) -> dict[tuple[str, str], dict[str, str]]:
        """``show stat``: one row per (proxy, server)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(str(self.socket))
            s.sendall(b"show stat\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        rows = csv.DictReader(data.decode().removeprefix("# ").splitlines())
        return {(r["pxname"], r["svname"]): r for r in rows if r.get("svname")}

    def states(self, backend: str) -> dict[str, str]:
        """Each server of ``backend`` with its state: UP, DOWN, or on its way ("UP 1/2", "DOWN 1/2")."""
        return {sv: row["status"] for (px, sv), row in self.stat().items()
                if px == backend and sv not in ("FRONTEND", "BACKEND")}

    def served(self, backend: str, server: str) -> int:
        """How many 2xx answers ``server`` of ``backend`` gave (health checks are not counted)."""
        return int(self.stat()[(backend, server)]["hrsp_2xx"] or 0)

    def busy(self, backend: str, server: str) -> bool:
        """Whether a request is with ``server`` of ``backend`` now."""
        return int(self.stat()[(backend, server)]["scur"] or 0) > 0

    def wait_states(self, what: str, **expected: dict[str, str]) -> None:
        with self.telling():
            wait_until(lambda: all(self.states(backend) == states for backend, states in expected.items()),
                       timeout=90, interval=0.25, what=f"HAProxy to see {what}")

    def wait_served(self, backend: str, server: str, more: int, what: str) -> None:
        start = self.served(backend, server)
        with self.telling():
            wait_until(lambda: self.served(backend, server) >= start + more, timeout=90, interval=0.25,
                       what=f"{server} of {backend} to serve {more} retrievals ({what})")

    @contextlib.contextmanager
    def telling(self) -> Iterator[None]:
        """A wait that times out says what HAProxy sees, and the end of its log."""
        try:
            yield
        except AssertionError as exc:
            seen = {backend: self.states(backend) for backend in (WRITABLE, READONLY)}
            raise AssertionError(f"{exc}\nHAProxy sees {seen}\n{self.log()[-3000:]}") from None

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@contextlib.contextmanager
def running_haproxy(directory: Path, config: str) -> Iterator[HAProxy]:
    directory.mkdir()
    haproxy = HAProxy(directory, config)
    checked = haproxy.check()
    assert checked.returncode == 0 and "[WARNING]" not in checked.stdout + checked.stderr, (
        f"haproxy -c refused the example or warned:\n{checked.stdout}{checked.stderr}")
    try:
        haproxy.start()
        yield haproxy
    finally:
        haproxy.stop()


@dataclass
class Retrieval:
    attempts: int
    ok: bool
    failures: list[str] = field(default_factory=list)


class Client(threading.Thread):
    """Retrieves one password through HAProxy again and again with an API token, as automation does.  A
    retrieval that fails is tried again every PAUSE seconds, at most ATTEMPTS times; each retrieval is kept
    with what its failed attempts got.  Once asked to stop, it finishes the retrieval under way."""

    def __init__(self, url: str, ca: str, token: str, account: str) -> None:
        super().__init__(name="haproxy-client", daemon=True)
        self.url, self.ca, self.token, self.account = url, ca, token, account
        self.done: list[Retrieval] = []
        self.stop_flag = threading.Event()

    def run(self) -> None:
        tls = ssl.create_default_context(cadata=self.ca)
        with httpx.Client(base_url=f"{self.url}/api/v1", verify=tls, timeout=30,
                          headers={"Authorization": f"Bearer {self.token}"}) as c:
            while not self.stop_flag.is_set():
                self.done.append(self._retrieve(c))

    def _retrieve(self, c: httpx.Client) -> Retrieval:
        failures: list[str] = []
        for attempt in range(1, ATTEMPTS + 1):
            try:
                r = c.get(f"/accounts/{self.account}/password")
            except httpx.HTTPError as exc:
                failures.append(f"{type(exc).__name__}: {exc}")
            else:
                if r.status_code == 200 and r.json()["password"] == PASSWORD:
                    return Retrieval(attempt, True, failures)
                failures.append(f"{r.status_code} {r.headers.get('location', '')} {r.text[:160]}"
                                if r.status_code != 200 else "200 with another password")
            time.sleep(PAUSE)  # a client's pause before it tries again, not a wait for a condition
        return Retrieval(ATTEMPTS, False, failures)

    def finish(self) -> list[Retrieval]:
        """Every retrieval made, once the one under way is done."""
        self.stop_flag.set()
        self.join(timeout=ATTEMPTS * (PAUSE + 30) + 30)
        assert not self.is_alive(), "the client did not finish its last retrieval"
        return list(self.done)


def kill_app(server: Server) -> None:
    assert server.proc is not None
    server.proc.kill()
    server.proc.wait()
    server.proc = None


def app_processes(server: Server) -> list[int]:
    """The server's app: its ``safehold serve`` process and the workers forked from it (not its database)."""
    assert server.proc is not None
    cmdline = Path(f"/proc/{server.proc.pid}/cmdline").read_bytes()
    own = []
    for pid in process_tree(server.proc.pid):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/cmdline").read_bytes() == cmdline:
                own.append(pid)
    return own


def freeze_then_kill(server: Server, *, until: Callable[[], bool]) -> None:
    """Stop the server's app processes (SIGSTOP) until ``until()`` holds, then kill them (SIGKILL), whatever
    happens: a stopped process would outlive the test."""
    assert server.proc is not None
    app = app_processes(server)
    try:
        for pid in app:
            os.kill(pid, signal.SIGSTOP)
        wait_until(until, timeout=30, interval=0.05, what=f"a request to reach the frozen {server.data_dir.name}")
    finally:
        for pid in app:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        server.proc.wait()
        server.proc = None


def api_token(server: Server) -> str:
    with server.client(server.login()) as c:
        r = c.post("/me/tokens", json={"name": "behind-haproxy"})
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


def summary(done: list[Retrieval]) -> str:
    retried = [r for r in done if r.attempts > 1]
    return (f"{len(done)} retrievals, {len(retried)} tried again (at most {max((r.attempts for r in done), default=0)}"
            f" attempts); failed attempts: {[f for r in retried for f in r.failures][:12]}")


def test_haproxy_keeps_users_served_through_a_kill_and_a_switchover(server_root: Path) -> None:
    require_haproxy()
    base = Path(tempfile.mkdtemp(dir=server_root))
    with running_topology(base) as (primary, secondary, readonly):
        wait_until(lambda: not serves_users_itself(readonly), timeout=60, what="the read-only server to redirect")
        token = api_token(primary)
        _, account = seed_account(primary, primary.login(), PASSWORD)
        wait_until(lambda: account in accounts_in(readonly.data_dir), what="the replica to have the account")
        port = free_port()
        cert, users_ca = frontend_tls(base)
        config = example_config([primary, secondary, readonly], bind=f"127.0.0.1:{port}", cert=cert)
        with running_haproxy(base / "haproxy", config) as haproxy:
            client = Client(f"https://127.0.0.1:{port}", users_ca, token, account)
            try:
                # 1. all up: the primary and the secondary take the users; the read-only server, which sends
                # users to the primary, is in neither pool
                haproxy.wait_states("the writers up", **{
                    WRITABLE: {"safehold1": "UP", "safehold2": "UP", "safehold3": "DOWN"},
                    READONLY: {"safehold1": "DOWN", "safehold2": "DOWN", "safehold3": "DOWN"}})
                client.start()
                haproxy.wait_served(WRITABLE, "safehold1", 5, "all up")
                haproxy.wait_served(WRITABLE, "safehold2", 5, "all up")

                # 2. the primary's app hangs with a retrieval in it, then dies (a machine that freezes and is
                # reset): HAProxy sends that retrieval again, to the secondary, and takes the primary out
                freeze_then_kill(primary, until=lambda: haproxy.busy(WRITABLE, "safehold1"))
                haproxy.wait_states("the primary down", **{
                    WRITABLE: {"safehold1": "DOWN", "safehold2": "UP", "safehold3": "DOWN"}})
                haproxy.wait_served(WRITABLE, "safehold2", 10, "the primary down")
                primary.start()
                haproxy.wait_states("the primary back", **{
                    WRITABLE: {"safehold1": "UP", "safehold2": "UP", "safehold3": "DOWN"}})
                haproxy.wait_served(WRITABLE, "safehold1", 5, "the primary back")
                before_switchover = list(client.done)
                assert all(r.ok and r.attempts == 1 for r in before_switchover), (
                    f"a retrieval failed before the switchover: {summary(before_switchover)}")

                # 3. a switchover: the read-only server becomes the primary, the old primary a read-only
                # server that sends users to it, and the secondary, still on the old primary's database (a
                # replica now), writes no more until it is rejoined.  HAProxy follows, its configuration as it was
                out = run_cli("ha", "switchover", "--data-dir", str(primary.data_dir), "--to", "readonly")
                assert "is the primary (generation 2)" in out.stdout, out.stdout + out.stderr
                haproxy.wait_states("the new primary up", **{
                    WRITABLE: {"safehold1": "DOWN", "safehold2": "DOWN", "safehold3": "UP"},
                    READONLY: {"safehold1": "DOWN", "safehold2": "DOWN", "safehold3": "DOWN"}})
                haproxy.wait_served(WRITABLE, "safehold3", 10, "after the switchover")

                # 4. the new primary's app dies too: the old primary, read-only now, serves users itself and
                # HAProxy falls back to it
                kill_app(readonly)
                wait_until(lambda: serves_users_itself(primary), timeout=90,
                           what="the old primary, now read-only, to serve users itself")
                haproxy.wait_states("the read-only fallback", **{
                    WRITABLE: {"safehold1": "DOWN", "safehold2": "DOWN", "safehold3": "DOWN"},
                    READONLY: {"safehold1": "UP", "safehold2": "DOWN", "safehold3": "DOWN"}})
                haproxy.wait_served(READONLY, "safehold1", 10, "read-only emergency mode")
            finally:
                client.stop_flag.set()  # a story cut short leaves the client to end by itself
            done = client.finish()
            print(f"HAProxy story: {summary(done)}")
            assert done and all(r.ok for r in done), f"a retrieval failed: {summary(done)}\n{haproxy.log()[-4000:]}"
