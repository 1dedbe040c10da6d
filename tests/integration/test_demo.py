"""'safehold demo' as a user runs it, and breaks it: the whole topology comes up; 'demo kill' takes the
primary's app and database down while the other servers keep running; the read-only server serves a
password in read-only emergency mode; 'demo start' brings the primary back; Ctrl-C (or SIGTERM) stops
every process the demo started and removes its temporary folder, or keeps it with --keep."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import ssl
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from safehold.cli.demo_ops import DemoProblem, ServerEntry, ServerView, choose, state_text
from safehold.cli.demo_servers import how_it_ended
from safehold.pg.process import pid_alive as alive
from tests.support import SAFEHOLD, Server, wait_until


def _processes_of(base: Path) -> list[int]:
    """Servers and databases whose command line names the demo's directory."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if f"{base}/" in cmd and ("postgres" in cmd or " serve " in cmd) and alive(int(pid)):
            found.append(int(pid))
    return found


@dataclass
class RunningDemo:
    """A 'safehold demo' process, and the commands a user runs on it from another terminal."""

    proc: subprocess.Popen[bytes]
    log: Path
    env: dict[str, str]
    base: Path = field(default_factory=Path)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def state(self) -> dict[str, Any]:
        return dict(json.loads((self.base / "demo.json").read_text()))

    def servers(self) -> dict[str, dict[str, Any]]:
        return {s["name"]: s for s in self.state()["servers"]}

    def pids(self) -> set[int]:
        return {p for s in self.state()["servers"] for p in (s["app_pid"], s["database_pid"]) if p}

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([*SAFEHOLD, "demo", *args], capture_output=True, text=True, env=self.env, timeout=180)
        if check and proc.returncode != 0:
            raise AssertionError(f"safehold demo {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n"
                                 f"{proc.stderr}\n--- the demo ---\n{self.text()}")
        return proc

    def status(self) -> dict[str, dict[str, Any]]:
        return {s["name"]: s for s in json.loads(self.cli("status", "--json").stdout)["servers"]}


@contextlib.contextmanager
def running_demo(home: Path, *args: str) -> Iterator[RunningDemo]:
    """'safehold demo ARGS' as its own process, with a runtime directory and a temp directory of the test's own
    (so the commands find this demo without --dir, and its temporary folder is under ``home``). Whatever
    happens, no process of it is left: the demo is stopped (killed if it must be), then what it left."""
    run, tmp = home / "run", home / "tmp"
    run.mkdir(mode=0o700)
    tmp.mkdir()
    env = {**os.environ, "XDG_RUNTIME_DIR": str(run), "TMPDIR": str(tmp), "COLUMNS": "200"}
    log = home / "demo.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([*SAFEHOLD, "demo", *args], stdout=out, stderr=subprocess.STDOUT, env=env,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    demo = RunningDemo(proc, log, env)
    try:
        wait_until(lambda: "demo is running" in demo.text() or proc.poll() is not None, timeout=240, interval=1,
                   what="the demo to start")
        assert proc.poll() is None, demo.text()
        found = re.search(r"data and logs: (\S+)", demo.text())
        assert found, demo.text()
        demo.base = Path(found.group(1))
        yield demo
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(90)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for base in tmp.glob("safehold-demo-*"):  # what the demo could not stop, if anything
            for name in ("primary", "readonly"):
                Server(base / name).cleanup()
            for pid in _processes_of(base):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def _client(url: str, ctx: ssl.SSLContext, password: str) -> Iterator[httpx.Client]:
    """An API client signed in as the administrator the demo printed."""
    with httpx.Client(base_url=f"{url}/api/v1", verify=ctx, timeout=30) as c:
        r = c.post("/auth/login", json={"username": "admin", "password": password})
        assert r.status_code == 200, r.text
        c.headers["Authorization"] = f"Bearer {r.json()['token']}"
        yield c


def _redirect_of(url: str, ctx: ssl.SSLContext) -> str | None:
    r = httpx.get(f"{url}/api/v1/me", verify=ctx, timeout=5)
    return r.headers.get("location") if r.status_code == 307 else None


def test_a_user_kills_the_primary_reads_a_password_in_emergency_mode_and_brings_it_back(server_root: Path) -> None:
    home = Path(tempfile.mkdtemp(dir=server_root))
    with running_demo(home) as demo:
        base, state, servers = demo.base, demo.state(), demo.servers()
        assert state["pid"] == demo.proc.pid and Path(state["dir"]) == base and state["running"] is True
        assert set(servers) == {"primary", "secondary", "readonly"}
        assert all(alive(s["app_pid"]) for s in servers.values())
        assert alive(servers["primary"]["database_pid"]) and alive(servers["readonly"]["database_pid"])
        assert servers["secondary"]["database_of"] == "primary" and servers["secondary"]["database_pid"] is None
        pids = demo.pids()
        printed = re.search(r"administrator: admin / (\S+)", demo.text())
        assert printed and Path(state["admin"]["password_file"]).read_text() == printed.group(1)
        password, ctx = printed.group(1), ssl.create_default_context(cafile=state["ca_certificate"])
        primary, secondary, readonly = servers["primary"], servers["secondary"], servers["readonly"]

        # a sample password, as the primary gives it
        with _client(primary["url"], ctx, password) as c:
            rid = next(r["id"] for r in c.get("/resources").json()["items"] if r["name"] == "db-prod-01")
            aid = next(a["id"] for a in c.get(f"/resources/{rid}").json()["accounts"] if a["username"] == "postgres")
            secret = c.get(f"/accounts/{aid}/password").json()["password"]

        # a name the demo does not have: the error lists the ones it has
        wrong = demo.cli("kill", "nosuch", check=False)
        assert wrong.returncode == 1 and "primary, secondary, readonly" in wrong.stderr, wrong.stderr

        # the primary's app and database die (found without --dir); the others keep running, the demo says so
        assert "killed its app" in demo.cli("kill", "primary", "--database").stdout
        assert not alive(primary["app_pid"]) and not alive(primary["database_pid"])
        assert re.search(r"^primary stopped: killed its app \(pid \d+\) and database \(pid \d+\)", demo.text(), re.M)
        assert demo.proc.poll() is None
        now = demo.servers()
        assert now["primary"]["app_pid"] is None and now["primary"]["database_pid"] is None
        assert now["secondary"]["app_pid"] == secondary["app_pid"] and alive(secondary["app_pid"])
        assert now["readonly"]["app_pid"] == readonly["app_pid"] and alive(readonly["app_pid"])

        # the secondary has lost its database too: the read-only server serves the password itself
        wait_until(lambda: _redirect_of(readonly["url"], ctx) is None, timeout=30, what="read-only emergency mode")
        with _client(readonly["url"], ctx, password) as c:
            r = c.get(f"/accounts/{aid}/password")
            assert r.status_code == 200 and r.json()["password"] == secret
            assert r.headers["x-safehold-mode"] == "read-only-emergency"
        views = demo.status()
        assert not views["primary"]["app_running"] and not views["primary"]["database_running"]
        assert views["readonly"]["mode"] == "read-only-emergency" and views["readonly"]["redirects_to"] is None

        # back: its database first, then its app; the read-only server sends users to it again
        assert "primary answers at" in demo.cli("start", "primary").stdout
        views = demo.status()
        back = views["primary"]
        assert back["app_running"] and back["database_running"] and back["healthy"] and back["mode"] == "read-write"
        assert back["app_pid"] not in pids and back["app_pid"] == demo.servers()["primary"]["app_pid"]
        pids |= demo.pids()
        wait_until(lambda: demo.status()["readonly"]["redirects_to"] == "primary", timeout=30,
                   what="the read-only server to send users to the primary again")
        table = demo.cli("status").stdout
        assert all(s["url"] in table for s in servers.values()), table

        demo.proc.send_signal(signal.SIGINT)
        assert demo.proc.wait(90) == 0, demo.text()
    assert f"removed the demo's folder {base}" in demo.text()
    assert not base.exists()
    assert not [p for p in pids if alive(p)] and not _processes_of(base)
    assert not list((home / "run" / "safehold-demos").iterdir()), "the pointer and the control socket are left"
    gone = demo.cli("status", check=False)
    assert gone.returncode == 1 and "no Safehold demo is running" in gone.stderr


def test_keep_keeps_the_folder_and_says_so_and_auto_failover_promotes_the_readonly_server(server_root: Path) -> None:
    home = Path(tempfile.mkdtemp(dir=server_root))
    with running_demo(home, "--keep", "--auto-failover") as demo:
        base = demo.base
        assert "kept when the demo stops" in demo.text() and demo.state()["auto_failover"] is True
        pids = demo.pids()
        demo.cli("kill", "primary", "--database")

        def promoted() -> bool:
            ro = demo.status()["readonly"]
            return bool(ro["role"] == "primary" and ro["mode"] == "read-write")

        wait_until(promoted, timeout=120, interval=1, what="the read-only server to promote itself")
        pids |= demo.pids()
        demo.proc.send_signal(signal.SIGTERM)
        assert demo.proc.wait(90) == 0, demo.text()
    assert f"kept the demo's folder at {base} (--keep" in demo.text()
    kept = json.loads((base / "demo.json").read_text())
    assert kept["running"] is False
    assert all(s["app_pid"] is None and s["database_pid"] is None for s in kept["servers"]), kept
    assert (base / "readonly.log").exists() and (base / "primary" / "safehold.toml").exists()
    assert not [p for p in pids if alive(p)] and not _processes_of(base)
    # the kept folder still answers 'status'; 'kill' says the demo is no longer running
    assert "has stopped" in demo.cli("status", "--dir", str(base)).stdout
    refused = demo.cli("kill", "primary", "--dir", str(base), check=False)
    assert refused.returncode == 1 and "not running any more" in refused.stderr, refused.stderr


def test_without_a_running_demo_the_commands_say_how_to_start_one(tmp_path: Path) -> None:
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path)}
    for args in (["status"], ["kill", "primary"], ["start", "primary"]):
        r = subprocess.run([*SAFEHOLD, "demo", *args], capture_output=True, text=True, env=env, timeout=60)
        assert r.returncode == 1 and "no Safehold demo is running" in r.stderr, r.stderr
        assert "start one with 'safehold demo'" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([*SAFEHOLD, "demo", "status", "--dir", str(tmp_path)], capture_output=True, text=True,
                       env=env, timeout=60)
    assert r.returncode == 1 and "holds no demo" in r.stderr, r.stderr


def _view(**kw: Any) -> ServerView:
    entry = ServerEntry(name="readonly", role="readonly", url="https://127.0.0.1:1", data_dir="d", log="l")
    return ServerView(entry, **{"app_running": True, "database_running": True, "answers": True, **kw})


@pytest.mark.parametrize(("view", "says"), [
    (_view(app_running=False), "stopped"),
    (_view(answers=False), "not answering"),
    (_view(mode="read-only-emergency", healthy=True, redirects_to="primary"), "redirects users to primary"),
    (_view(mode="read-only-emergency", healthy=True), "serves users itself: read-only emergency mode"),
    (_view(mode="fenced", fenced_by="readonly"), "fenced (superseded by readonly)"),
    (_view(mode="read-write", healthy=False), "read-write, database unavailable"),
    (_view(mode="read-write", healthy=True), "read-write"),
])
def test_status_says_what_a_server_does_for_users(view: ServerView, says: str) -> None:
    assert state_text(view) == says


def test_how_a_process_ended_and_which_demo_a_command_means() -> None:
    assert how_it_ended(-signal.SIGKILL) == "killed by SIGKILL"
    assert how_it_ended(0) == "exited normally" and how_it_ended(3) == "exited with status 3"
    assert choose([Path("/a")]) == Path("/a")
    with pytest.raises(DemoProblem, match="no Safehold demo is running"):
        choose([])
    with pytest.raises(DemoProblem, match="2 demos are running") as several:
        choose([Path("/a"), Path("/b")])
    assert several.value.hint == "choose one with --dir DIR"
