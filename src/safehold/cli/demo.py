"""``safehold demo``: the recommended topology on one machine — primary, secondary and read-only
servers (each its own process with its own data directory) on 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import httpx
import typer
from rich.console import Console

from safehold.files import write_private

out = Console(soft_wrap=True)
SAMPLES = [
    ("db-prod-01", "database", "10.20.0.11", ["prod", "postgres"], [("postgres", None), ("replicator", None)]),
    ("core-switch-a", "network", "10.0.0.2", ["network"], [("admin", None)]),
    ("web-frontend-3", "server", "10.20.1.33", ["prod", "linux"], [("root", None), ("deploy", None)]),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Node:
    name: str
    data_dir: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"


def _cli(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "safehold", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise typer.Exit(_fail(f"safehold {args[0]} {args[1] if len(args) > 1 else ''} failed:\n"
                               f"{proc.stdout}{proc.stderr}"))
    return proc.stdout


def _fail(message: str) -> int:
    Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False)
    return 1


def _start(node: Node, log_dir: Path) -> None:
    log = open(log_dir / f"{node.name}.log", "ab")  # noqa: SIM115 - lives as long as the process
    node.proc = subprocess.Popen([sys.executable, "-m", "safehold", "serve", "--data-dir", str(node.data_dir)],
                                 stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_healthy(node: Node, ca: Path, timeout: float = 60) -> None:
    from safehold.ha.peers import SyncPeerClient

    ctx = ssl.create_default_context(cafile=str(ca))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if node.proc is not None and node.proc.poll() is not None:
            raise typer.Exit(_fail(f"the {node.name} server exited; see its log"))
        with SyncPeerClient(ctx, timeout=2) as client:
            if client.health(node.url).ok:
                return
        time.sleep(0.3)
    raise typer.Exit(_fail(f"the {node.name} server did not become healthy within {timeout:.0f} s"))


def _stop(nodes: list[Node]) -> None:
    for node in reversed(nodes):
        if node.proc is not None and node.proc.poll() is None:
            node.proc.send_signal(signal.SIGTERM)
    for node in reversed(nodes):
        if node.proc is not None:
            try:
                node.proc.wait(30)
            except subprocess.TimeoutExpired:
                node.proc.kill()


def demo(
    directory: Annotated[Path | None, typer.Option("--dir", help="Where the demo's servers keep their data "
                                                   "(default: a new temporary directory).")] = None,
) -> None:
    """Start a primary, a secondary and a read-only server (with its own replica) on 127.0.0.1, load a
    few sample resources, print the URLs and the admin credentials, and run until Ctrl-C."""
    base = (directory or Path(tempfile.mkdtemp(prefix="safehold-demo-"))).resolve()
    if base.exists() and any(base.iterdir()):
        raise typer.Exit(_fail(f"{base} is not empty; give --dir an empty or new directory"))
    base.mkdir(parents=True, exist_ok=True)
    os.chmod(base, 0o700)
    admin_password = secrets.token_urlsafe(12)
    passphrase = secrets.token_urlsafe(18)
    write_private(base / "admin-password", admin_password.encode())
    write_private(base / "passphrase", passphrase.encode())
    primary = Node("primary", base / "primary", _free_port())
    secondary = Node("secondary", base / "secondary", _free_port())
    readonly = Node("readonly", base / "readonly", _free_port())
    nodes: list[Node] = []

    def _terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # SIGTERM stops the demo like Ctrl-C does

    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)  # also when started with SIGINT ignored (a background job)
    key = primary.data_dir / "safehold.key"
    ca = primary.data_dir / "tls" / "ca.crt"
    db_started = False
    try:
        out.print("• initialising the primary")
        _cli("init", "--data-dir", str(primary.data_dir), "--port", str(primary.port), "--name", "Primary",
             "--admin-password-file", str(base / "admin-password"))
        _cli("db", "start", "--data-dir", str(primary.data_dir))  # the joins below connect to it
        db_started = True
        out.print("• setting up the secondary")
        _cli("ha", "add-secondary", "--data-dir", str(primary.data_dir), "--host", "127.0.0.1",
             "--out", str(base / "secondary.setup"), "--passphrase-file", str(base / "passphrase"),
             "--name", "Secondary")
        _cli("ha", "join", str(base / "secondary.setup"), "--data-dir", str(secondary.data_dir), "--key-file",
             str(key), "--passphrase-file", str(base / "passphrase"), "--port", str(secondary.port),
             "--name", "Secondary")
        out.print("• taking the setup pack of the read-only server (online base backup)")
        _cli("ha", "pack", "--data-dir", str(primary.data_dir), "--readonly-host", "127.0.0.1",
             "--out", str(base / "readonly.pack"), "--passphrase-file", str(base / "passphrase"),
             "--name", "Read-only")
        _cli("ha", "join", str(base / "readonly.pack"), "--data-dir", str(readonly.data_dir), "--key-file",
             str(key), "--passphrase-file", str(base / "passphrase"), "--port", str(readonly.port),
             "--db-port", str(_free_port()), "--name", "Read-only")
        out.print("• starting the three servers")
        for node in (primary, secondary, readonly):
            _start(node, base)
            nodes.append(node)
        _wait_healthy(primary, ca)
        _wait_healthy(secondary, ca)
        _wait_healthy(readonly, ca)
        out.print("• loading sample resources")
        _load_samples(primary, ca, admin_password)
        out.print("\n[bold green]Safehold demo is running[/] (Ctrl-C stops everything)\n")
        for node in nodes:
            out.print(f"  {node.name:<10} {node.url}")
        out.print(f"\n  administrator: admin / {admin_password}", highlight=False)
        out.print(f"  CA certificate (trust it in your browser or curl --cacert): {ca}")
        out.print(f"  data and logs: {base}\n")
        with contextlib.suppress(KeyboardInterrupt):
            while all(n.proc is not None and n.proc.poll() is None for n in nodes):
                time.sleep(0.5)
            dead = [n.name for n in nodes if n.proc is not None and n.proc.poll() is not None]
            out.print(f"[yellow]{', '.join(dead)} stopped; see {base}/<name>.log. Stopping the rest.[/]")
    finally:
        out.print("stopping the demo servers…")
        _stop(nodes)
        if db_started:  # started by 'db start' above, so 'serve' leaves it running: stop it here
            subprocess.run([sys.executable, "-m", "safehold", "db", "stop", "--data-dir", str(primary.data_dir)],
                           capture_output=True)
        out.print("stopped")


def _load_samples(primary: Node, ca: Path, admin_password: str) -> None:
    ctx = ssl.create_default_context(cafile=str(ca))
    with httpx.Client(base_url=f"{primary.url}/api/v1", verify=ctx, timeout=30) as c:
        token = c.post("/auth/login", json={"username": "admin", "password": admin_password}).json()["token"]
        c.headers["Authorization"] = f"Bearer {token}"
        for name, kind, address, tags, accounts in SAMPLES:
            r = c.post("/resources", json={"name": name, "type": kind, "address": address, "tags": tags})
            if r.status_code != 201:
                continue
            for username, _ in accounts:
                c.post(f"/resources/{r.json()['id']}/accounts",
                       json={"username": username, "password": secrets.token_urlsafe(16)})
