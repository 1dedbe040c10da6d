"""``safehold demo``: the recommended topology on one machine — primary, secondary and read-only servers
(each its own process with its own data directory) on 127.0.0.1 — built to be broken and mended.

1. Make the demo's folder (a new temporary one, or an empty ``--dir``) and its secrets.
2. Set the servers up with the ordinary commands ('init', 'db start', 'ha add-secondary', 'ha pack',
   'ha join'); with ``--auto-failover`` also the cluster's failover policy ('ha failover').
3. Start the three servers, load sample resources, publish DIR/demo.json, the pointer and the control
   socket (:mod:`safehold.cli.demo_ops`), and print the URLs, the administrator and what to try.
4. Watch: a server's app or database that stops stays stopped, the others keep running, and one line
   says which stopped and how; 'safehold demo kill' and 'safehold demo start' are carried out here, by
   the parent of every server process.
5. On Ctrl-C, SIGTERM or SIGHUP: stop every app, then every bundled database, remove the pointer, and
   remove the folder unless ``--keep`` or ``--dir`` was given (the last line says which).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import selectors
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.markup import escape

from safehold.cli import demo_ops
from safehold.cli.demo_ops import DemoProblem, DemoState, command
from safehold.cli.demo_servers import (
    Node,
    free_port,
    how_it_ended,
    processes_in,
    stop_line,
)
from safehold.errors import SafeholdError
from safehold.files import write_private

out = Console(soft_wrap=True, highlight=False)
SAMPLES = [
    ("db-prod-01", "database", "10.20.0.11", ["prod", "postgres"], ["postgres", "replicator"]),
    ("core-switch-a", "network", "10.0.0.2", ["network"], ["admin"]),
    ("web-frontend-3", "server", "10.20.1.33", ["prod", "linux"], ["root", "deploy"]),
]
#: --auto-failover: the read-only server pings the primary database every 2 s and promotes itself after 8
#: failed pings (16 s, longer than the writers' 10 s lease, as the policy requires).
FAILOVER_PING_INTERVAL, FAILOVER_PING_ITERATIONS = 2, 8
#: The witness of --auto-failover: a port the demo listens on, off the servers' own address (127.0.0.1).
WITNESS_HOST = "127.0.0.2"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Demo:
    """One run of the demo: its folder, its three servers, and what it has published for the commands."""

    def __init__(self, base: Path, *, temporary: bool, keep: bool, auto_failover: bool) -> None:
        self.base, self.temporary, self.keep, self.auto_failover = base, temporary, keep, auto_failover
        self.nodes = [Node(name, base / name, free_port(), base / f"{name}.log", database_of=db)
                      for name, db in (("primary", "primary"), ("secondary", "primary"), ("readonly", "readonly"))]
        self.control: socket.socket | None = None
        self.witness: socket.socket | None = None
        self.published = False
        self.failed = False  # it could not start: the folder is kept for its logs

    @property
    def ca(self) -> Path:
        return self.nodes[0].data_dir / "tls" / "ca.crt"

    def node(self, name: object) -> Node | None:
        return next((n for n in self.nodes if n.name == name), None)

    # --- 2. setting up ------------------------------------------------------------------------------------

    def _cli(self, *args: str) -> str:
        proc = subprocess.run([sys.executable, "-m", "safehold", *args], capture_output=True, text=True,
                              stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise DemoProblem(f"'safehold {' '.join(args[:2])}' failed while setting the demo up:\n"
                              f"{proc.stdout}{proc.stderr}")
        return proc.stdout

    def set_up(self) -> None:
        primary, secondary, readonly = self.nodes
        base, key = self.base, str(primary.data_dir / "safehold.key")
        secret = ("--passphrase-file", str(base / "passphrase"))
        out.print("• initialising the primary")
        self._cli("init", "--data-dir", str(primary.data_dir), "--port", str(primary.port), "--name", "Primary",
                  "--admin-password-file", str(base / "admin-password"))
        self._cli("db", "start", "--data-dir", str(primary.data_dir))  # the joins below connect to it
        out.print("• setting up the secondary")
        self._cli("ha", "add-secondary", "--data-dir", str(primary.data_dir), "--host", "127.0.0.1",
                  "--out", str(base / "secondary.setup"), *secret, "--name", "Secondary")
        self._cli("ha", "join", str(base / "secondary.setup"), "--data-dir", str(secondary.data_dir), "--key-file",
                  key, *secret, "--port", str(secondary.port), "--name", "Secondary")
        out.print("• taking the setup pack of the read-only server (online base backup)")
        self._cli("ha", "pack", "--data-dir", str(primary.data_dir), "--readonly-host", "127.0.0.1",
                  "--out", str(base / "readonly.pack"), *secret, "--name", "Read-only")
        self._cli("ha", "join", str(base / "readonly.pack"), "--data-dir", str(readonly.data_dir), "--key-file",
                  key, *secret, "--port", str(readonly.port), "--db-port", str(free_port()), "--name", "Read-only")
        if self.auto_failover:
            out.print(f"• enabling automatic failover (promote after {FAILOVER_PING_ITERATIONS} failed pings "
                      f"{FAILOVER_PING_INTERVAL} s apart)")
            witness = self._open_witness()
            self._cli("ha", "failover", "--data-dir", str(primary.data_dir), "--enable",
                      "--ping-interval", str(FAILOVER_PING_INTERVAL), "--ping-iterations", str(FAILOVER_PING_ITERATIONS),
                      *(("--witness", witness) if witness else ()))

    def _open_witness(self) -> str | None:
        """A port this process listens on, as the read-only server's witness that its own side of the network
        is up (on one machine it always is); None where 127.0.0.2 cannot be bound (then, with no witness, the
        default gateway decides, or nothing does)."""
        s = socket.socket()
        try:
            s.bind((WITNESS_HOST, 0))
            s.listen(16)
        except OSError:
            s.close()
            return None
        self.witness = s
        return f"{WITNESS_HOST}:{s.getsockname()[1]}"

    def start_servers(self) -> None:
        from safehold.ha.peers import SyncPeerClient

        out.print("• starting the three servers")
        for n in self.nodes:
            n.spawn()
        with SyncPeerClient(ssl.create_default_context(cafile=str(self.ca)), timeout=2) as client:
            for n in self.nodes:
                deadline = time.monotonic() + 60
                while not client.health(n.url).ok:
                    if not n.app_running():
                        raise DemoProblem(f"the {n.name} server exited while starting", f"see its log {n.log}")
                    if time.monotonic() > deadline:
                        raise DemoProblem(f"the {n.name} server did not become healthy within 60 s",
                                          f"see its log {n.log}")
                    time.sleep(0.3)
        if self.auto_failover:
            self._wait_watching(self.nodes[2])

    def _wait_watching(self, readonly: Node, timeout: float = 60) -> None:
        """Until the read-only server watches the primary and has heard from it once (its lag guard then lets
        it promote): only then does killing the primary show the failover. Its log says so (a WARNING line)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if "the lag guard is armed" in readonly.log.read_text(errors="replace"):
                    return
            time.sleep(0.5)
        out.print(f"[yellow]the read-only server does not watch the primary yet; automatic failover may not "
                  f"happen (see {escape(str(readonly.log))})[/]")

    def load_samples(self, admin_password: str) -> None:
        out.print("• loading sample resources")
        ctx = ssl.create_default_context(cafile=str(self.ca))
        with httpx.Client(base_url=f"{self.nodes[0].url}/api/v1", verify=ctx, timeout=30) as c:
            token = c.post("/auth/login", json={"username": "admin", "password": admin_password}).json()["token"]
            c.headers["Authorization"] = f"Bearer {token}"
            for name, kind, address, tags, accounts in SAMPLES:
                r = c.post("/resources", json={"name": name, "type": kind, "address": address, "tags": tags})
                if r.status_code != 201:
                    continue
                for username in accounts:
                    c.post(f"/resources/{r.json()['id']}/accounts",
                           json={"username": username, "password": secrets.token_urlsafe(16)})

    # --- 3. publishing ------------------------------------------------------------------------------------

    def state(self, *, running: bool = True) -> DemoState:
        return DemoState(pid=os.getpid(), dir=str(self.base), control_socket=str(demo_ops.socket_path(os.getpid())),
                         ca_certificate=str(self.ca), admin_username="admin",
                         admin_password_file=str(self.base / "admin-password"), auto_failover=self.auto_failover,
                         removed_on_exit=self.temporary and not self.keep, running=running,
                         servers=tuple(n.entry() for n in self.nodes))

    def publish(self) -> None:
        """Open the control socket, write demo.json, then the pointer (last: whoever finds it finds it all)."""
        demo_ops.private_pointer_dir()
        path = demo_ops.socket_path(os.getpid())
        path.unlink(missing_ok=True)
        self.control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.control.bind(str(path))
        self.control.listen(8)
        self.published = True
        for n in self.nodes:
            n.db_pid = n.database_pid()
        demo_ops.write_state(self.state())
        write_private(demo_ops.pointer_path(os.getpid()),
                      json.dumps({"pid": os.getpid(), "dir": str(self.base)}).encode(), replace=True)

    def unpublish(self) -> None:
        demo_ops.pointer_path(os.getpid()).unlink(missing_ok=True)
        if self.control is not None:
            self.control.close()
            demo_ops.socket_path(os.getpid()).unlink(missing_ok=True)
        if self.witness is not None:
            self.witness.close()

    def show(self, admin_password: str) -> None:
        cmd = command()
        out.print("\n[bold green]Safehold demo is running[/] (Ctrl-C stops everything)\n")
        for n in self.nodes:
            out.print(f"  {n.name:<10} {n.url}")
        out.print(f"\n  administrator: admin / {escape(admin_password)}")
        out.print(f"  CA certificate (trust it in your browser or curl --cacert): {escape(str(self.ca))}")
        where = "removed when the demo stops" if self.temporary and not self.keep else "kept when the demo stops"
        out.print(f"  data and logs: {escape(str(self.base))} ({where}); state: {escape(str(self.base))}/demo.json")
        failover = (f"the read-only server promotes itself after about "
                    f"{FAILOVER_PING_INTERVAL * FAILOVER_PING_ITERATIONS} s (--auto-failover)" if self.auto_failover
                    else "the read-only server serves passwords itself, read-only")
        out.print(f"\n  Break it (from another terminal):\n"
                  f"    {cmd} demo kill primary --database   # the primary's app and database die: {failover}\n"
                  f"    {cmd} demo status                    # what each server does now\n"
                  f"    {cmd} demo start primary             # bring it back\n")

    # --- 4. watching --------------------------------------------------------------------------------------

    def watch(self) -> None:
        """Say which server stopped and how; keep demo.json true."""
        changed = False
        for n in self.nodes:
            app = db = None
            if n.proc is not None and n.proc.poll() is not None:
                app, n.proc, changed = how_it_ended(n.proc.returncode), None, True
            pid = n.database_pid()
            if pid != n.db_pid:
                if n.db_pid is not None and pid is None:
                    db = f"(pid {n.db_pid}) is gone (see {n.data_dir / 'pg' / 'log'})"
                n.db_pid, changed = pid, True
            if app or db:
                out.print(f"[yellow]{escape(stop_line(n.name, app, db, n.log))}[/]")
        if changed:
            demo_ops.write_state(self.state())

    def run_loop(self) -> None:
        assert self.control is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self.control, selectors.EVENT_READ, "control")
            if self.witness is not None:
                sel.register(self.witness, selectors.EVENT_READ, "witness")
            while True:
                for key, _ in sel.select(timeout=0.5):
                    conn, _ = key.fileobj.accept()  # type: ignore[union-attr]
                    with conn:
                        if key.data == "control":
                            self.answer(conn)
                self.watch()

    def answer(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        try:
            request = json.loads(conn.makefile("rb").readline() or b"null")
            reply = self.handle(request) if isinstance(request, dict) else {"ok": False, "message": "bad request"}
        except (OSError, ValueError):
            return
        with contextlib.suppress(OSError):
            conn.sendall(json.dumps(reply).encode() + b"\n")

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        node = self.node(request.get("name"))
        if node is None:
            names = ", ".join(n.name for n in self.nodes)
            return {"ok": False, "message": f"this demo has no server named {request.get('name')!r}; its servers "
                                            f"are: {names}"}
        try:
            if request.get("op") == "kill":
                return self.kill(node, bool(request.get("database")))
            if request.get("op") == "start":
                return self.start(node)
        except SafeholdError as exc:
            return {"ok": False, "message": exc.message, "hint": exc.hint}
        except (OSError, subprocess.SubprocessError) as exc:
            return {"ok": False, "message": f"the demo could not do it: {exc}"}
        finally:
            self.watch()
        return {"ok": False, "message": f"unknown request {request.get('op')!r}"}

    def kill(self, node: Node, database: bool) -> dict[str, Any]:
        killed = []
        if node.app_running():
            assert node.proc is not None
            killed.append(f"app (pid {node.proc.pid})")
            node.kill_app()
            node.proc.wait(30)
            node.proc = None
        if database and node.pg is not None and (pid := node.database_pid()) is not None:
            node.pg.kill()
            killed.append(f"database (pid {pid})")
            node.db_pid = None
        if not killed:
            return {"ok": True, "message": f"{node.name} was not running"}
        line = (f"{node.name} stopped: killed its {' and '.join(killed)} with SIGKILL ('demo kill'); "
                "the other servers keep running")
        out.print(f"[yellow]{escape(line)}[/]")
        demo_ops.write_state(self.state())
        return {"ok": True, "message": line}

    def start(self, node: Node) -> dict[str, Any]:
        """Its database if that is down, then its app if that is not running."""
        started = []
        if node.pg is not None and node.database_pid() is None:
            node.pg.start()
            node.pg.wait_ready()
            node.db_pid = node.database_pid()
            started.append(f"database (pid {node.db_pid})")
        app_pid = None
        if not node.app_running():
            app_pid = node.spawn()
            started.append(f"app (pid {app_pid})")
        if not started:
            return {"ok": True, "message": f"{node.name} is running already (app pid {node.entry().app_pid})"}
        line = f"{node.name}: started its {' and '.join(started)} again"
        owner = self.node(node.database_of)
        if owner is not None and owner is not node and owner.database_pid() is None:
            line += (f"; it works on the {owner.name}'s database, which is down: it waits for it "
                     f"({command()} demo start {owner.name})")
        out.print(f"[green]{escape(line)}[/]")
        demo_ops.write_state(self.state())
        return {"ok": True, "started": app_pid is not None, "app_pid": app_pid, "message": line}

    # --- 5. stopping --------------------------------------------------------------------------------------

    def stop_everything(self) -> list[str]:
        """Stop every app, then every bundled database of the demo; the processes still left, if any."""
        for n in reversed(self.nodes):
            n.stop_app()
        for n in reversed(self.nodes):
            if n.proc is None:
                continue
            try:
                n.proc.wait(30)
            except subprocess.TimeoutExpired:
                n.kill_app()
                n.proc.wait(10)
        for n in self.nodes:
            pg = None
            with contextlib.suppress(Exception):
                pg = n.pg
            if pg is None:
                continue
            try:
                pg.stop()
            except Exception:  # noqa: BLE001 - a database that will not stop is killed, whatever went wrong
                with contextlib.suppress(Exception):
                    pg.kill()
        return processes_in(self.base)

    def finish(self, leftovers: list[str]) -> None:
        base = escape(str(self.base))
        if leftovers:
            out.print(f"[red]still running in {base}: {escape(', '.join(leftovers))}[/] — stop them yourself")
        removable = self.temporary and not self.keep and not self.failed and not leftovers
        if removable:
            shutil.rmtree(self.base, ignore_errors=True)
            if not self.base.exists():
                out.print(f"removed the demo's folder {base}")
                return
        if self.published:  # the kept state says what is left: nothing runs
            for n in self.nodes:
                n.db_pid = n.database_pid()
            with contextlib.suppress(OSError):
                demo_ops.write_state(self.state(running=False))
        why = ("--keep" if self.keep else "--dir" if not self.temporary
               else "the demo could not start: its logs are there" if self.failed
               else "a process still uses it" if leftovers else "it could not be removed entirely")
        out.print(f"kept the demo's folder at {base} ({why}; remove it when you are done)")

    def run(self) -> None:
        admin_password, passphrase = secrets.token_urlsafe(12), secrets.token_urlsafe(18)
        write_private(self.base / "admin-password", admin_password.encode())
        write_private(self.base / "passphrase", passphrase.encode())
        stopping = False

        def _stop(signum: int, frame: object) -> None:
            if stopping:
                out.print("[dim]still stopping the demo…[/]")
                return
            raise KeyboardInterrupt  # SIGTERM and SIGHUP stop the demo like Ctrl-C does

        for s in STOP_SIGNALS:  # also SIGINT when started with it ignored (a background job)
            signal.signal(s, _stop)
        failure: DemoProblem | None = None
        try:
            self.set_up()
            self.start_servers()
            self.load_samples(admin_password)
            self.publish()
            self.show(admin_password)
            self.run_loop()
        except KeyboardInterrupt:
            pass
        except DemoProblem as problem:
            failure = problem
        except SafeholdError as exc:
            failure = DemoProblem(exc.message, exc.hint)
        except (httpx.HTTPError, OSError) as exc:
            failure = DemoProblem(f"the demo could not go on: {exc}")
        finally:
            stopping = True
            self.failed = failure is not None
            self.unpublish()
            out.print("stopping the demo: every server and database it started…")
            leftovers = self.stop_everything()
            out.print("stopped" if not leftovers else "[red]not everything stopped[/]")
            self.finish(leftovers)
        if failure is not None:
            Console(stderr=True).print(f"[bold red]error:[/] {escape(failure.message)}", highlight=False)
            if failure.hint:
                Console(stderr=True).print(f"[dim]hint:[/] {escape(failure.hint)}", highlight=False)
            raise typer.Exit(1)


demo_app = typer.Typer(no_args_is_help=False, add_completion=False)


@demo_app.callback(invoke_without_command=True)
def demo(
    ctx: typer.Context,
    directory: Annotated[Path | None, typer.Option(
        "--dir", help="Where the servers keep their data and logs: an empty or new folder, kept when the demo "
                      "stops (default: a new temporary folder, removed when it stops). With a command (kill, "
                      "start, status): the running demo's folder.", show_default=False)] = None,
    keep: Annotated[bool, typer.Option("--keep", help="Keep the temporary folder (data, logs, demo.json) when the "
                                       "demo stops; it is said where.")] = False,
    auto_failover: Annotated[bool, typer.Option(
        "--auto-failover", help=f"Enable automatic failover: the read-only server pings the primary database every "
                                f"{FAILOVER_PING_INTERVAL} s and promotes itself after {FAILOVER_PING_ITERATIONS} "
                                "failed pings. Without it, it serves passwords read-only (emergency mode) until "
                                "promoted by hand ('safehold ha promote --data-dir DIR/readonly').")] = False,
) -> None:
    """Run the recommended topology on this machine, and break it: a primary, a secondary and a read-only
    server (with its own replica) on 127.0.0.1, with sample resources; it prints the URLs and the admin
    password and runs until Ctrl-C (or SIGTERM).

    A server that dies stays dead and the others keep running; the demo says which stopped and how. From
    another terminal, 'safehold demo kill NAME [--database]', 'safehold demo start NAME' and 'safehold demo
    status' act on it (they find it by the pointer it keeps while it runs, or by --dir). Its state, with every
    pid, is in DIR/demo.json. When it stops it stops every process it started and removes its temporary
    folder, unless --keep or --dir was given (a demo that failed to start keeps it, for the logs)."""
    if ctx.invoked_subcommand is not None:
        if keep or auto_failover:
            raise typer.BadParameter("--keep and --auto-failover are for starting a demo, not for "
                                     f"'demo {ctx.invoked_subcommand}'")
        ctx.obj = directory
        return
    with demo_ops.reporting():
        demo_ops.private_pointer_dir()  # refused now rather than after the servers started
        if directory is not None and directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
            raise DemoProblem(f"{directory} is not an empty folder", "give --dir an empty or new folder")
    base = (directory or Path(tempfile.mkdtemp(prefix="safehold-demo-"))).resolve()
    base.mkdir(parents=True, exist_ok=True)
    os.chmod(base, 0o700)
    Demo(base, temporary=directory is None, keep=keep, auto_failover=auto_failover).run()


demo_app.command("kill")(demo_ops.kill)
demo_app.command("start")(demo_ops.start)
demo_app.command("status")(demo_ops.status)
