"""``safehold demo kill|start|status``: commands on a running demo, and what they share with it.

A running demo keeps three things (``safehold demo`` in :mod:`safehold.cli.demo` writes them):

1. ``DIR/demo.json`` (private): each server's name, role, URL, app pid, database pid, data directory and
   log, the CA certificate, where the administrator's password is, and the control socket.  The demo
   rewrites it whenever one of its processes starts or stops, so it is the truth for ``status`` and for
   anyone who wants the pids.
2. A pointer to DIR, named after the demo's pid, in a private folder of the user's runtime directory
   (:func:`pointer_dir`): how a command finds the running demo without ``--dir``.  The demo removes it
   when it stops; one left by a demo that was killed outright names a dead pid and is ignored (and
   removed by the next look-up).
3. A control socket beside the pointer.  ``kill`` and ``start`` ask the demo to do it rather than
   signalling the servers themselves: the demo is the parent of its servers, so it reaps them, says how
   each one stopped, and stops every one it started when it exits.

``status`` only reads: demo.json, /proc, and each server's ``/api/v1/ha/local`` and ``/api/v1/health``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import ssl
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.markup import escape

from safehold.cli.layout import print_json, print_rows
from safehold.pg.process import pid_alive

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

STATE_FILE = "demo.json"
#: How long ``demo start`` waits for the server it started to answer.
START_TIMEOUT = 90.0
POINTER_HELP = ("the running demo's, found through the pointer it keeps while it runs in "
                "$XDG_RUNTIME_DIR/safehold-demos (else <temp dir>/safehold-demos-<uid>); give --dir when "
                "several demos run")

DirOption = Annotated[Path | None, typer.Option("--dir", help=f"The demo's directory (default: {POINTER_HELP}).",
                                                show_default=False)]
NameArg = Annotated[str, typer.Argument(metavar="NAME", help="A server of the demo: primary, secondary or readonly.",
                                        show_default=False)]


class DemoProblem(Exception):
    """What a user must hear when a demo command cannot go on: a sentence, and a hint."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


def command() -> str:
    """How the user called Safehold (``.venv/bin/safehold`` from scripts/run), to print commands they can paste."""
    called = sys.argv[0] if sys.argv else ""
    if Path(called).name == "safehold" and shutil.which("safehold") != os.path.abspath(called):
        return called
    return "safehold"


# --- the state file -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerEntry:
    """One server of the demo as demo.json holds it; a pid is None while that process is not running."""

    name: str
    role: str
    url: str
    data_dir: str
    log: str
    app_pid: int | None = None
    database_pid: int | None = None
    # whose bundled database the server works on: its own name, "primary" for the secondary, None for none
    database_of: str | None = None


@dataclass(frozen=True)
class DemoState:
    """The whole of demo.json."""

    pid: int
    dir: str
    control_socket: str
    ca_certificate: str
    admin_username: str
    admin_password_file: str
    auto_failover: bool
    removed_on_exit: bool
    servers: tuple[ServerEntry, ...]
    running: bool = True

    def to_json(self) -> dict[str, Any]:
        return {"pid": self.pid, "dir": self.dir, "running": self.running, "removed_on_exit": self.removed_on_exit,
                "control_socket": self.control_socket, "ca_certificate": self.ca_certificate,
                "admin": {"username": self.admin_username, "password_file": self.admin_password_file},
                "auto_failover": self.auto_failover, "servers": [asdict(s) for s in self.servers]}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> DemoState:
        """Raises KeyError, TypeError or ValueError on a file of another shape."""
        servers = tuple(ServerEntry(**{k: s.get(k) for k in ServerEntry.__dataclass_fields__}) for s in d["servers"])
        if any(not isinstance(s.name, str) or not isinstance(s.url, str) for s in servers):
            raise ValueError("a server without a name or URL")
        return cls(pid=int(d["pid"]), dir=str(d["dir"]), control_socket=str(d["control_socket"]),
                   ca_certificate=str(d["ca_certificate"]), admin_username=str(d["admin"]["username"]),
                   admin_password_file=str(d["admin"]["password_file"]), auto_failover=bool(d["auto_failover"]),
                   removed_on_exit=bool(d["removed_on_exit"]), servers=servers, running=bool(d["running"]))

    def server(self, name: str) -> ServerEntry:
        """The server called ``name``, or a problem that lists the demo's servers."""
        for s in self.servers:
            if s.name == name:
                return s
        names = ", ".join(s.name for s in self.servers)
        raise DemoProblem(f"this demo has no server named {name!r}; its servers are: {names}")


def write_state(state: DemoState) -> None:
    from safehold.files import write_private

    write_private(Path(state.dir) / STATE_FILE, json.dumps(state.to_json(), indent=2).encode() + b"\n", replace=True)


def read_state(directory: Path) -> DemoState:
    path = directory / STATE_FILE
    try:
        return DemoState.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        raise DemoProblem(f"{directory} holds no demo (there is no {path})",
                          "give --dir the folder 'safehold demo' printed as 'data and logs'") from None
    except OSError as exc:
        raise DemoProblem(f"cannot read {path}: {exc.strerror}") from None
    except (KeyError, TypeError, ValueError, AttributeError):
        raise DemoProblem(f"{path} is not the state file of a Safehold demo") from None


# --- finding a running demo -----------------------------------------------------------------------------


def pointer_dir() -> Path:
    """Where running demos leave their pointer and control socket: private to this user, short enough for
    a socket's path, and gone after a reboot when it is the runtime directory."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return Path(runtime) / "safehold-demos"
    return Path(tempfile.gettempdir()) / f"safehold-demos-{os.getuid()}"


def private_pointer_dir() -> Path:
    """:func:`pointer_dir`, made if missing, and refused unless it is this user's own private folder (a
    folder in a shared temp dir could have been made by someone else)."""
    where = pointer_dir()
    with contextlib.suppress(FileExistsError):
        where.mkdir(mode=0o700)
    st = where.lstat()
    if not where.is_dir() or where.is_symlink() or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise DemoProblem(f"{where} is not a private folder of yours, so the demo cannot keep its pointer there",
                          f"remove {where}, or set XDG_RUNTIME_DIR to a private folder of yours")
    return where


def pointer_path(pid: int) -> Path:
    return pointer_dir() / f"demo-{pid}.json"


def socket_path(pid: int) -> Path:
    return pointer_dir() / f"demo-{pid}.sock"


def choose(running: Sequence[Path]) -> Path:
    """The one running demo's directory, or the problem to tell the user."""
    if not running:
        raise DemoProblem("no Safehold demo is running",
                          "start one with 'safehold demo' (or scripts/run), or give --dir DIR of a demo")
    if len(running) > 1:
        raise DemoProblem(f"{len(running)} demos are running ({', '.join(str(p) for p in running)})",
                          "choose one with --dir DIR")
    return running[0]


def running_demos() -> list[Path]:
    """The directories of the demos whose pointer names a live demo; stale pointers are removed."""
    found = []
    where = pointer_dir()
    for pointer in sorted(where.glob("demo-*.json")) if where.is_dir() else []:
        try:
            d = json.loads(pointer.read_text())
            pid, directory = int(d["pid"]), Path(d["dir"])
        except (OSError, KeyError, TypeError, ValueError):
            continue
        state = None
        with contextlib.suppress(DemoProblem):
            state = read_state(directory)
        if pid_alive(pid) and state is not None and state.pid == pid:
            found.append(directory)
        elif not pid_alive(pid):
            pointer.unlink(missing_ok=True)
    return found


def find_demo(directory: Path | None) -> DemoState:
    """The state of the demo in ``directory``, else of the one running demo."""
    return read_state((directory or choose(running_demos())).resolve())


def require_running(state: DemoState) -> DemoState:
    if not state.running or not pid_alive(state.pid):
        raise DemoProblem(f"the demo in {state.dir} is not running any more",
                          "start a new one with 'safehold demo'")
    return state


# --- asking the demo ------------------------------------------------------------------------------------


def ask(state: DemoState, request: Mapping[str, Any], timeout: float = 120) -> dict[str, Any]:
    """Send one request to the running demo and return its answer (``ok``, ``message``, more)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(state.control_socket)
            s.sendall(json.dumps(request).encode() + b"\n")
            reply = s.makefile("rb").readline()
        except TimeoutError:
            raise DemoProblem(f"the demo (pid {state.pid}) did not answer within {timeout:g} s") from None
        except OSError as exc:
            raise DemoProblem(f"cannot reach the demo (pid {state.pid}) through {state.control_socket}: "
                              f"{exc.strerror or 'no answer'}", "is it still running? 'safehold demo status'") from None
    try:
        answer = json.loads(reply)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise DemoProblem(f"the demo (pid {state.pid}) stopped before it answered")
    return answer


@contextlib.contextmanager
def reporting() -> Iterator[None]:
    """Print a :class:`DemoProblem` as an error (and its hint) and exit 1."""
    try:
        yield
    except DemoProblem as problem:
        err.print(f"[bold red]error:[/] {escape(problem.message)}", highlight=False)
        if problem.hint:
            err.print(f"[dim]hint:[/] {escape(problem.hint)}", highlight=False)
        raise typer.Exit(1) from None


def _reply(answer: Mapping[str, Any]) -> str:
    if not answer.get("ok"):
        raise DemoProblem(str(answer.get("message", "the demo refused")), answer.get("hint"))
    return str(answer.get("message", ""))


# --- the commands ---------------------------------------------------------------------------------------


def kill(
    ctx: typer.Context,
    name: NameArg,
    database: Annotated[bool, typer.Option("--database", help="Also kill the server's bundled PostgreSQL (SIGKILL "
                                           "to the postmaster and its children, as a crash). The secondary has "
                                           "none of its own: it works on the primary's.")] = False,
    directory: DirOption = None,
) -> None:
    """Kill a server of the running demo (SIGKILL to its app, as a crash): the demo keeps the other servers
    running and says what happened. Bring it back with 'safehold demo start NAME'."""
    with reporting():
        state = require_running(find_demo(directory or ctx.obj))
        entry = state.server(name)
        if database and entry.database_of != entry.name:
            owner = entry.database_of or "an outside server"
            raise DemoProblem(f"the {name} server has no database of its own: it works on the {owner}'s",
                              f"kill that one with 'safehold demo kill {owner} --database'"
                              if entry.database_of else None)
        out.print(escape(_reply(ask(state, {"op": "kill", "name": name, "database": database}))), highlight=False)
        out.print(f"  bring it back with: {escape(command())} demo start {name}", highlight=False)


def start(ctx: typer.Context, name: NameArg, directory: DirOption = None) -> None:
    """Start a stopped server of the running demo again (its bundled PostgreSQL first, if that is down), and
    wait until it answers."""
    with reporting():
        state = require_running(find_demo(directory or ctx.obj))
        state.server(name)
        answer = ask(state, {"op": "start", "name": name})
        out.print(escape(_reply(answer)), highlight=False)
        if answer.get("started"):
            _wait_answering(state, name, int(answer["app_pid"]))


def _wait_answering(state: DemoState, name: str, pid: int) -> None:
    from safehold.ha.peers import SyncPeerClient

    entry = state.server(name)
    deadline = time.monotonic() + START_TIMEOUT
    with SyncPeerClient(ssl.create_default_context(cafile=state.ca_certificate), timeout=2) as client:
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                raise DemoProblem(f"the {name} server exited while starting", f"see its log {entry.log}")
            health = client.health(entry.url)
            if health.status is not None:
                out.print(f"[green]✓[/] {escape(name)} answers at {escape(entry.url)}"
                          + ("" if health.ok else " [yellow](but its database does not: see 'safehold demo "
                                                  "status')[/]"), highlight=False)
                return
            time.sleep(0.3)
    raise DemoProblem(f"the {name} server did not answer within {START_TIMEOUT:g} s", f"see its log {entry.log}")


@dataclass(frozen=True)
class ServerView:
    """One server as ``status`` saw it just now."""

    entry: ServerEntry
    app_running: bool
    database_running: bool | None  # None: no database of its own
    answers: bool = False
    healthy: bool = False
    role: str | None = None  # as the server says it now (it changes with a promotion)
    mode: str | None = None
    redirects_to: str | None = None  # the demo server a read-only server sends its users to
    fenced_by: str | None = None


def state_text(v: ServerView) -> str:
    """What a user gets from the server now, in a few words."""
    if not v.app_running:
        return "stopped"
    if not v.answers:
        return "not answering"
    if v.redirects_to:
        return f"redirects users to {v.redirects_to}"
    if v.mode == "fenced":
        return f"fenced (superseded by {v.fenced_by or 'a newer primary'})"
    if v.mode == "read-only-emergency":
        return "serves users itself: read-only emergency mode"
    text = v.mode or "answering"
    return text if v.healthy else f"{text}, database unavailable"


def _database_text(v: ServerView) -> str:
    e = v.entry
    if e.database_of is None:
        return "outside"
    if e.database_of != e.name:
        return f"the {e.database_of}'s"
    return f"running (pid {e.database_pid})" if v.database_running else "stopped"


def view_json(v: ServerView) -> dict[str, Any]:
    e = v.entry
    return {"name": e.name, "role": v.role or e.role, "url": e.url, "data_dir": e.data_dir, "log": e.log,
            "app_running": v.app_running, "app_pid": e.app_pid if v.app_running else None,
            "database_of": e.database_of, "database_running": v.database_running,
            "database_pid": e.database_pid if v.database_running else None,
            "answers": v.answers, "healthy": v.healthy, "mode": v.mode, "redirects_to": v.redirects_to,
            "state": state_text(v)}


def _look(state: DemoState, entry: ServerEntry) -> ServerView:
    from safehold.ha.peers import SyncPeerClient

    own_db = entry.database_of == entry.name
    view = ServerView(entry, app_running=pid_alive(entry.app_pid),
                      database_running=pid_alive(entry.database_pid) if own_db else None)
    if not view.app_running:
        return view
    ctx = ssl.create_default_context(cafile=state.ca_certificate)
    with SyncPeerClient(ctx, timeout=2) as client:
        health, report = client.health(entry.url), client.local(entry.url)
    view = replace(view, answers=health.status is not None, healthy=health.ok)
    if report is not None:
        view = replace(view, role=report.role or None, mode=report.mode or None,
                       fenced_by=_name_of(state, report.fence.acting_primary_url) if report.fence else None)
    if (report.role if report else entry.role) == "readonly":
        with contextlib.suppress(httpx.HTTPError, OSError), httpx.Client(verify=ctx, timeout=2) as c:
            r = c.get(f"{entry.url}/api/v1/me")
            if r.status_code == 307:
                view = replace(view, redirects_to=_name_of(state, r.headers.get("location", "")))
    return view


def _name_of(state: DemoState, url: str) -> str:
    """The demo server a URL belongs to (the URL itself when it is none of them)."""
    return next((s.name for s in state.servers if url.startswith(s.url)), url)


def status(
    ctx: typer.Context,
    directory: DirOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for machines: the demo, and each server's "
                                          "role, URL, pids, data directory, log and state.")] = False,
) -> None:
    """Show the demo's servers: their app and database processes, what each one does for users now (serves,
    redirects, read-only emergency mode, fenced) and their URLs. Works on a stopped demo's kept folder too."""
    with reporting():
        state = find_demo(directory or ctx.obj)
    running = state.running and pid_alive(state.pid)
    views = [_look(state, e) for e in state.servers]
    if as_json:
        print_json({"demo": {"pid": state.pid, "running": running, "dir": state.dir,
                             "ca_certificate": state.ca_certificate,
                             "admin": {"username": state.admin_username, "password_file": state.admin_password_file},
                             "auto_failover": state.auto_failover},
                    "servers": [view_json(v) for v in views]})
        return
    rows = [(v.entry.name, v.role or v.entry.role, f"running (pid {v.entry.app_pid})" if v.app_running else "stopped",
             _database_text(v), state_text(v), v.entry.url) for v in views]
    title = f"Safehold demo (pid {state.pid})" if running else "Safehold demo (stopped)"
    print_rows(out, title, ("server", "role", "app", "database", "state", "URL"), rows)
    where = escape(state.dir)
    if running:
        out.print(f"data and logs in {where} (each server in DIR/NAME, its log DIR/NAME.log)", highlight=False)
    else:
        out.print(f"[yellow]the demo that ran in {where} has stopped[/]; start a new one with 'safehold demo'",
                  highlight=False)
