"""What the benchmarks share: the run's frame (temporary directory, signals, clean-up of every server
started, also on Ctrl-C, SIGTERM or an error), log lines, a keep-alive HTTPS JSON client, percentiles
and machine load.

Only the standard library at run time: bench/retrieval.py imports this module and stays
self-contained (nothing from the repository's tests, so any interpreter runs it)."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from tests.support import Server

HOST = "127.0.0.1"


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# --- the frame of a run --------------------------------------------------------------------------------


class Stoppable(Protocol):
    """A server a benchmark started (tests.support.Server, or retrieval.py's own)."""

    @property
    def data_dir(self) -> Path: ...

    @property
    def log_path(self) -> Path | None: ...

    def cleanup(self) -> None: ...


@dataclass
class Run:
    """What :func:`bench_run` hands the benchmark: its temporary directory and the list of the servers
    it started (append each one *before* starting or joining it, so a half-done set-up is cleaned up
    too)."""

    root: Path
    servers: list[Stoppable] = field(default_factory=list)
    _on_abort: list[Callable[[], object]] = field(default_factory=list)
    _on_cleanup: list[Callable[[], object]] = field(default_factory=list)

    def on_abort(self, fn: Callable[[], object]) -> None:
        """Call ``fn`` after an interruption or an error, before the clean-up (e.g. to print the
        figures gathered so far)."""
        self._on_abort.append(fn)

    def on_cleanup(self, fn: Callable[[], object]) -> None:
        """Call ``fn`` first thing in the clean-up, before the servers are stopped (the last one
        registered first): stop client threads, close connections."""
        self._on_cleanup.append(fn)

    def _aborted(self) -> None:
        for fn in self._on_abort:
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - the clean-up must still run
                log(f"error while reporting: {type(exc).__name__}: {exc}")


def log_tail(server: Stoppable, lines: int = 15) -> str:
    path = server.log_path
    try:
        text = path.read_text(errors="replace") if path is not None else ""
    except OSError:
        text = ""
    return "\n".join(text.splitlines()[-lines:])


@contextlib.contextmanager
def bench_run(prefix: str, keep_dir: bool) -> Iterator[Run]:
    """The frame every benchmark runs in::

        ok = False
        with bench_run("safehold-bench-x-", args.keep_dir) as run:
            server = Server(run.root / "primary", detached=True)
            run.servers.append(server)
            ...
            ok = report(...)
        return 0 if ok else 1

    SIGTERM is turned into KeyboardInterrupt and SIGINT raises it even when the bench was started
    with SIGINT ignored (``cmd &``); the temporary directory ``root`` is readable by the bundled
    PostgreSQL's service user.  An interruption or an error ends the body: it is logged (an error
    with the tail of every server's log) and swallowed, and ``on_abort`` callbacks run.  Then,
    with SIGINT and SIGTERM ignored (a second Ctrl-C must not skip it), the ``on_cleanup``
    callbacks run and every server in ``servers`` is cleaned up, the last started first; the
    directory is removed unless ``keep_dir``; the signal handlers are restored."""

    def on_sigterm(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored (`cmd &`)
    root = Path(tempfile.mkdtemp(prefix=prefix))
    root.chmod(0o755)  # the bundled PostgreSQL runs as an unprivileged service user
    run = Run(root)
    try:
        yield run
    except KeyboardInterrupt:
        log("interrupted: cleaning up")
        run._aborted()
    except Exception as exc:
        log(f"error: {type(exc).__name__}: {exc}")
        for s in run.servers:
            if s.log_path is not None:
                log(f"--- tail of {s.log_path.name} ---\n" + log_tail(s))
        run._aborted()
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip the clean-up
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            for fn in reversed(run._on_cleanup):
                with contextlib.suppress(Exception):
                    fn()
            for s in reversed(run.servers):  # e.g. the read-only server (and its replica), then the primary
                log(f"stopping {s.data_dir.name}")
                with contextlib.suppress(Exception):
                    s.cleanup()
        finally:
            if keep_dir:
                log(f"kept {root}")
            else:
                shutil.rmtree(root, ignore_errors=True)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


# --- HTTP ------------------------------------------------------------------------------------------------


class Api:
    """A keep-alive HTTPS JSON client (no redirects followed)."""

    def __init__(self, server: Server, token: str | None = None, timeout: float = 30) -> None:
        self.server, self.token, self.timeout = server, token, timeout
        self.conn = self._connect()

    def _connect(self) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(HOST, self.server.port, context=self.server.ssl_context(),
                                           timeout=self.timeout)

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, bytes, str]:
        """(status, body, Location header)."""
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            self.conn.request(method, f"/api/v1{path}", body=data, headers=headers)
            resp = self.conn.getresponse()
            raw = resp.read()
        except (OSError, http.client.HTTPException):
            self.conn.close()
            self.conn = self._connect()
            raise
        if resp.getheader("connection", "").lower() == "close":
            self.conn.close()
            self.conn = self._connect()
        return resp.status, raw, resp.getheader("location", "")

    def call(self, method: str, path: str, body: dict[str, Any] | None = None, expect: int = 200) -> Any:
        status, raw, _ = self.request(method, path, body)
        if status != expect:
            raise RuntimeError(f"{method} {path}: HTTP {status} (expected {expect}): {raw[:300]!r}")
        return json.loads(raw) if raw else None

    def close(self) -> None:
        self.conn.close()


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list (0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(1, -(-len(sorted_values) * p // 100))
    return sorted_values[int(rank) - 1]


def system_cpu() -> tuple[float, float, float]:
    """(busy, steal, total) jiffies of the whole machine so far."""
    f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle, steal = f[3] + f[4], f[7]
    return sum(f[:8]) - idle - steal, steal, sum(f[:8])


def busy_since(before: tuple[float, float, float]) -> str:
    busy, steal, total = (a - b for a, b in zip(system_cpu(), before, strict=True))
    if total <= 0:
        return "n/a"
    return f"{busy / total * 100:.0f}% busy, {steal / total * 100:.0f}% stolen ({os.cpu_count()} cores)"


@dataclass
class Timed:
    """A command run by :func:`run_timed`."""

    start: float  # time.perf_counter() when it was started
    wall: float  # seconds it took
    phases: dict[str, float]  # mark -> seconds from the start to the first output line holding its needle
    output: str


def run_timed(args: list[str], marks: dict[str, str], timeout: float) -> Timed:
    """Run ``safehold ARGS``, noting when each needle of ``marks`` (needle -> name) first shows in its output;
    killed after ``timeout`` seconds.  Raises RuntimeError with the output's tail if it fails."""
    import subprocess
    import threading
    import time

    from tests.support import SAFEHOLD

    phases: dict[str, float] = {}
    lines: list[str] = []
    t0 = time.perf_counter()
    proc = subprocess.Popen([*SAFEHOLD, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, text=True,
                            env={**os.environ, "COLUMNS": "200", "PYTHONUNBUFFERED": "1"})
    killer = threading.Timer(timeout, proc.kill)
    killer.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            now = time.perf_counter() - t0
            lines.append(line.rstrip())
            for needle, name in marks.items():
                if needle in line and name not in phases:
                    phases[name] = now
        code = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        killer.cancel()
    wall = time.perf_counter() - t0
    if code != 0:
        raise RuntimeError(f"safehold {' '.join(args[:2])} failed ({code}):\n" + "\n".join(lines[-20:]))
    return Timed(t0, wall, phases, "\n".join(lines))


def start_pair(root: Path, prefix: str, servers: list[Stoppable], *, name: str = "readonly",
               configure: Callable[[Server], None] | None = None) -> tuple[Server, Server]:
    """A primary and a read-only server joined from its pack, both serving (detached); both go into
    ``servers`` as soon as they exist, so the run's clean-up stops them.  ``configure`` runs on the read-only
    server's data directory before it starts."""
    from tests.support import Server, make_readonly

    primary = Server(root / f"{prefix}-primary", detached=True)
    servers.append(primary)
    log(f"[{prefix}] initialising the primary")
    primary.init()
    primary.start(timeout=90)
    readonly = Server(root / f"{prefix}-readonly", detached=True)
    servers.append(readonly)
    log(f"[{prefix}] taking a setup pack and joining a read-only server")
    joined = make_readonly(primary, readonly.data_dir, name=name)
    readonly.port, readonly.db_port = joined.port, joined.db_port
    if configure is not None:
        configure(readonly)
    readonly.start(timeout=90)
    return primary, readonly
