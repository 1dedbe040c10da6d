#!/usr/bin/env python3
"""Benchmark: audited password retrievals per second against a fresh Safehold server.

What it does, end to end (nothing to set up beforehand):

1. ``safehold init`` a new standalone server in a temporary directory, on free
   loopback ports (127.0.0.1 only), and start ``safehold serve`` as its own
   process (its own session, so a Ctrl-C here does not reach it directly);
2. log in as the administrator, create a personal API token, and seed
   ``--accounts`` accounts (10 per resource);
3. run ``--clients`` concurrent clients, each on one keep-alive HTTPS
   connection, doing ``GET /api/v1/accounts/{id}/password`` with the token:
   ``--warmup`` seconds that are not measured, then ``--duration`` measured
   seconds (every client also stops after ``--max-requests / clients``);
4. print throughput, latency percentiles, errors, the number of
   ``password_retrieved`` audit records written during the run as read back
   from ``GET /api/v1/audit`` (it must equal the number of retrievals that
   returned a password), the records per audit group commit (from
   ``/metrics``), and the CPU time per retrieval spent by the client, the app
   server and PostgreSQL (from /proc) -- plus a calibration figure, because on
   a shared VM the same work can take noticeably longer from hour to hour;
5. stop everything it started, also on Ctrl-C, SIGTERM or an error: SIGTERM to
   the server (which stops its PostgreSQL), then make sure the PostgreSQL of the
   data directory is gone (``safehold db stop``; the postmaster's own fast
   shutdown; SIGKILL as a last resort), and remove the temporary directory
   unless ``--keep-dir``.

Two client engines (``--engine``):

* ``asyncio`` (default): one thread, one event loop (uvloop when installed),
  a minimal hand-written HTTP/1.1 exchange per request over asyncio TLS
  streams.  About 0.15-0.19 ms of client CPU per retrieval at 16 clients, so
  the client takes ~3 % of one core while the server and its database share
  the same 2 cores.
* ``threads``: one thread per client, each with its own keep-alive
  ``http.client.HTTPSConnection``.  Same throughput here (the server is the
  bottleneck) but about twice the client CPU (0.33-0.36 ms per retrieval).

For comparison, ``--endpoint account`` (the account's metadata: authenticated,
not audited) and ``--endpoint health`` (no authentication) load other routes
with the same clients.

Run it with the project's interpreter::

    .venv/bin/python bench/retrieval.py --clients 16 --duration 20

The exit status is 0 when there were no errors and every retrieval was audited.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import resource
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench._common import HOST, bench_run, log, percentile  # noqa: E402 - standard library only

ADMIN_USER = "admin"
ACCOUNTS_PER_RESOURCE = 10
REQUEST_TIMEOUT = 10.0  # seconds; a request slower than this counts as an error
CLK_TCK = os.sysconf("SC_CLK_TCK")
# what a client requests (account id substituted) and what a good answer contains
ENDPOINTS = {
    "password": ("/api/v1/accounts/{id}/password", b'"password"'),
    "account": ("/api/v1/accounts/{id}", b'"resource_id"'),
    "health": ("/api/v1/health", b'"status"'),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


# --- the server under test -----------------------------------------------------------


@dataclass
class Server:
    python: str
    root: Path
    extra_env: dict[str, str]
    port: int = field(default_factory=free_port)
    db_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        while self.db_port == self.port:
            self.db_port = free_port()

    @property
    def data_dir(self) -> Path:
        return self.root / "server"

    @property
    def log_path(self) -> Path:
        return self.root / "serve.log"

    @property
    def ca(self) -> Path:
        return self.data_dir / "tls" / "ca.crt"

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))

    def _cli(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.python, "-m", "safehold", *args], capture_output=True, text=True,
                              timeout=timeout, env={**os.environ, "COLUMNS": "200"})

    def init(self, admin_password: str) -> None:
        pw = self.root / "admin-password"
        pw.write_text(admin_password)
        pw.chmod(0o600)
        proc = self._cli("init", "--data-dir", str(self.data_dir), "--port", str(self.port),
                         "--db-port", str(self.db_port), "--admin-password-file", str(pw),
                         "--name", "bench")
        if proc.returncode != 0:
            raise RuntimeError(f"safehold init failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")

    def start(self) -> None:
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [self.python, "-m", "safehold", "serve", "--data-dir", str(self.data_dir)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, "COLUMNS": "200", **self.extra_env},
                start_new_session=True,  # Ctrl-C in the terminal reaches only the bench; it stops the server
            )

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no server log)"

    def wait_healthy(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                conn = http.client.HTTPSConnection(HOST, self.port, context=self.ssl_context(), timeout=2)
                try:
                    conn.request("GET", "/api/v1/health")
                    resp = conn.getresponse()
                    resp.read()
                    if resp.status == 200:
                        return
                    last = resp.status
                finally:
                    conn.close()
            except (OSError, http.client.HTTPException) as exc:
                last = exc
            time.sleep(0.2)
        raise RuntimeError(f"the server did not become healthy in {timeout:g}s (last: {last!r}):\n"
                           f"{self.log_tail()}")

    # -- stopping: everything this bench started, nothing else --------------------

    def cleanup(self) -> None:
        """What bench._common.bench_run calls at the end."""
        self.stop()

    def _postmaster_pid(self) -> int | None:
        """The live postmaster of this data directory's PostgreSQL, if any."""
        pid_file = self.data_dir / "pg" / "postmaster.pid"
        try:
            lines = pid_file.read_text().splitlines()
            pid, pgdata = int(lines[0]), lines[1]
        except (OSError, ValueError, IndexError):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return None
        if "postgres" not in cmdline or Path(pgdata).resolve() != (self.data_dir / "pg").resolve():
            return None  # a stale pid file, or the pid was reused by something else
        return pid

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                log(f"stopping the server (pid {self.proc.pid}) with SIGTERM")
                with contextlib.suppress(ProcessLookupError):
                    self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(45)
                except subprocess.TimeoutExpired:
                    log("the server did not stop within 45 s: SIGKILL")
                    with contextlib.suppress(ProcessLookupError):
                        self.proc.kill()
                    self.proc.wait()
            self.proc = None
        pid = self._postmaster_pid()
        if pid is None:
            return
        log(f"PostgreSQL (postmaster {pid}) is still running: 'safehold db stop'")
        with contextlib.suppress(Exception):
            self._cli("db", "stop", "--data-dir", str(self.data_dir), timeout=90)
        pid = self._postmaster_pid()
        if pid is None:
            return
        # e.g. an interrupted 'init' left no usable configuration: ask the postmaster itself
        # for a fast shutdown (SIGINT), and SIGKILL only if that does not work either
        log(f"'safehold db stop' did not stop it: SIGINT (fast shutdown) to postmaster {pid}")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + 20
        while self._postmaster_pid() is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        pid = self._postmaster_pid()
        if pid is None:
            return
        victims = [pid, *children_of(pid)]
        log(f"PostgreSQL did not stop: SIGKILL {victims}")
        for victim in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while any(Path(f"/proc/{v}").exists() and not _is_zombie(v) for v in victims):
            if time.monotonic() > deadline:
                log(f"WARNING: PostgreSQL processes {victims} survived SIGKILL")
                break
            time.sleep(0.05)


def _proc_stat(pid: int) -> list[str] | None:
    """/proc/PID/stat from field 3 (state) on: [state, ppid, ..., utime at 11, stime at 12, ...]."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2:].split()  # the command name may contain spaces and parentheses


def _is_zombie(pid: int) -> bool:
    st = _proc_stat(pid)
    return st is None or st[0] in ("Z", "X")


def children_of(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _proc_stat(int(entry))
            if st is not None and st[1] == str(pid):
                out.append(int(entry))
    return out


def cpu_seconds(pids: list[int]) -> float:
    """CPU seconds of these processes (all their threads) and of their children that have exited.

    The children term matters for PostgreSQL: a backend of a connection the app's pool
    closed again is gone by the time of the next sample, and its time is added to the
    postmaster's cutime/cstime when it is reaped.
    """
    total = 0
    for pid in pids:
        st = _proc_stat(pid)
        if st is not None:
            total += int(st[11]) + int(st[12]) + int(st[13]) + int(st[14])  # utime stime cutime cstime
    return total / CLK_TCK


def system_cpu_seconds() -> tuple[float, float, float]:
    """(busy, steal, total) CPU seconds of the whole machine so far, summed over all cores."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle, steal = fields[3] + fields[4], fields[7]  # idle + iowait; time the hypervisor gave others
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal
    return (total - idle - steal) / CLK_TCK, steal / CLK_TCK, total / CLK_TCK


def calibrate() -> float:
    """Milliseconds for a fixed pure-Python loop (best of 5): how fast this machine is right now.

    On a shared VM the same work can take noticeably longer from one hour to the next;
    compare runs only when their calibration figures are close.
    """
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        s = 0
        for i in range(1_000_000):
            s += i * i
        best = min(best, time.perf_counter() - t)
    return best * 1000


# --- a small keep-alive JSON client for setup and read-back ---------------------------


class Api:
    def __init__(self, server: Server, token: str | None = None) -> None:
        self.server, self.token = server, token
        self.conn = http.client.HTTPSConnection(HOST, server.port, context=server.ssl_context(), timeout=30)

    def call(self, method: str, path: str, body: dict[str, Any] | None = None, expect: int = 200) -> Any:
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        self.conn.request(method, f"/api/v1{path}", body=data, headers=headers)
        resp = self.conn.getresponse()
        raw = resp.read()
        if resp.status != expect:
            raise RuntimeError(f"{method} {path}: HTTP {resp.status} (expected {expect}): {raw[:500]!r}")
        return json.loads(raw) if raw else None

    def close(self) -> None:
        self.conn.close()


def seed(server: Server, admin_password: str, n_accounts: int) -> tuple[str, list[str]]:
    """Log in, create an API token and the accounts; returns (token, account ids)."""
    api = Api(server)
    try:
        session = api.call("POST", "/auth/login", {"username": ADMIN_USER, "password": admin_password})["token"]
        api.token = session
        token = api.call("POST", "/me/tokens", {"name": "bench"}, expect=201)["token"]
        api.token = token
        ids: list[str] = []
        resource_id = ""
        for i in range(n_accounts):
            if i % ACCOUNTS_PER_RESOURCE == 0:
                resource_id = api.call("POST", "/resources", {"name": f"bench-host-{i // ACCOUNTS_PER_RESOURCE:04d}",
                                                              "address": f"10.0.{i // 2560}.{i // 10 % 256}"},
                                       expect=201)["id"]
            ids.append(api.call("POST", f"/resources/{resource_id}/accounts",
                                {"username": f"svc{i:05d}", "password": secrets.token_urlsafe(18)},
                                expect=201)["id"])
        return token, ids
    finally:
        api.close()


def audit_counters(server: Server) -> tuple[float, float]:
    """(audit records, audit commits) so far, from the server's Prometheus metrics (0, 0 if unavailable)."""
    api = Api(server)
    try:
        api.conn.request("GET", "/metrics")
        resp = api.conn.getresponse()
        text = resp.read().decode(errors="replace")
    except (OSError, http.client.HTTPException):
        return 0.0, 0.0
    finally:
        api.close()
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("safehold_audit_records_total", "safehold_audit_commits_total"):
            values[name] = float(value)
    return values.get("safehold_audit_records_total", 0.0), values.get("safehold_audit_commits_total", 0.0)


def audited_retrievals(server: Server, token: str) -> int:
    api = Api(server, token)
    try:
        return int(api.call("GET", "/audit?action=password_retrieved&limit=1")["total"])
    finally:
        api.close()


# --- load ------------------------------------------------------------------------------


@dataclass
class Plan:
    clients: int
    warmup: float
    duration: float
    max_per_client: int
    account_paths: list[str]
    expect: bytes  # a good answer contains this
    token: str
    port: int
    ssl_context: ssl.SSLContext
    t_start: float = 0.0  # perf_counter() when the clients start
    stop: threading.Event = field(default_factory=threading.Event)

    @property
    def t_measure(self) -> float:
        return self.t_start + self.warmup

    @property
    def t_end(self) -> float:
        return self.t_measure + self.duration

    def request_bytes(self, path: str) -> bytes:
        return (f"GET {path} HTTP/1.1\r\nHost: {HOST}:{self.port}\r\nAuthorization: Bearer {self.token}\r\n"
                f"Accept: application/json\r\n\r\n").encode()


@dataclass
class ClientResult:
    latencies: list[float] = field(default_factory=list)  # seconds, requests completed in the window
    ok_total: int = 0  # passwords returned during the whole run (warm-up included)
    errors_total: int = 0
    errors_measured: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)

    def error(self, kind: str, in_window: bool) -> None:
        self.errors_total += 1
        self.errors_measured += in_window
        self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1


def thread_client(plan: Plan, index: int, res: ClientResult) -> None:
    headers = {"Authorization": f"Bearer {plan.token}", "Accept": "application/json"}
    paths, n = plan.account_paths, len(plan.account_paths)
    conn: http.client.HTTPSConnection | None = None
    clock = time.perf_counter
    t_measure, t_end = plan.t_measure, plan.t_end
    k = 0
    while k < plan.max_per_client and not plan.stop.is_set():
        t0 = clock()
        if t0 >= t_end:
            break
        path = paths[(index + k * plan.clients) % n]
        k += 1
        try:
            if conn is None:
                conn = http.client.HTTPSConnection(HOST, plan.port, context=plan.ssl_context,
                                                   timeout=REQUEST_TIMEOUT)
            conn.request("GET", path, headers=headers)
            resp = conn.getresponse()
            body = resp.read()
            status = resp.status
        except (OSError, http.client.HTTPException) as exc:
            t1 = clock()
            res.error(type(exc).__name__, t_measure <= t1 <= t_end)
            if conn is not None:
                conn.close()
            conn = None
            continue
        t1 = clock()
        in_window = t_measure <= t1 <= t_end
        if status == 200 and plan.expect in body:
            res.ok_total += 1
            if in_window:
                res.latencies.append(t1 - t0)
        else:
            res.error(f"HTTP {status}", in_window)
    if conn is not None:
        conn.close()


async def async_client(plan: Plan, index: int, res: ClientResult) -> None:
    paths, n = plan.account_paths, len(plan.account_paths)
    requests = [plan.request_bytes(p) for p in paths]
    clock = time.perf_counter
    t_measure, t_end = plan.t_measure, plan.t_end
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    k = 0
    while k < plan.max_per_client and not plan.stop.is_set():
        t0 = clock()
        if t0 >= t_end:
            break
        req = requests[(index + k * plan.clients) % n]
        k += 1
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                if writer is None:
                    reader, writer = await asyncio.open_connection(HOST, plan.port, ssl=plan.ssl_context,
                                                                   server_hostname=HOST)
                assert reader is not None
                writer.write(req)
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head[9:12])
                at = head.lower().find(b"\r\ncontent-length:")
                if at < 0:
                    raise ValueError("response without Content-Length")
                length = int(head[at + 17:head.index(b"\r\n", at + 2)])
                body = await reader.readexactly(length)
                if b"\r\nconnection: close" in head.lower():
                    writer.close()
                    reader = writer = None
        except (OSError, ValueError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            t1 = clock()
            res.error(type(exc).__name__, t_measure <= t1 <= t_end)
            if writer is not None:
                writer.close()
            reader = writer = None
            continue
        t1 = clock()
        in_window = t_measure <= t1 <= t_end
        if status == 200 and plan.expect in body:
            res.ok_total += 1
            if in_window:
                res.latencies.append(t1 - t0)
        else:
            res.error(f"HTTP {status}", in_window)
    if writer is not None:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


@dataclass
class Usage:
    """CPU seconds used during the measured window, by whom."""

    client: float = 0.0
    app: float = 0.0
    postgres: float = 0.0
    machine_busy: float = 0.0
    machine_steal: float = 0.0
    machine_total: float = 0.0


class UsageMonitor(threading.Thread):
    """Samples CPU counters at the start and the end of the measured window."""

    def __init__(self, plan: Plan, server: Server) -> None:
        super().__init__(name="usage-monitor", daemon=True)
        self.plan, self.server = plan, server
        self.usage: Usage | None = None

    def _sample(self) -> tuple[float, float, float, float, float, float]:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        app = 0.0
        if self.server.proc is not None:  # the server process and any worker processes it runs
            app = cpu_seconds([self.server.proc.pid, *children_of(self.server.proc.pid)])
        pm = self.server._postmaster_pid()
        pg = cpu_seconds([pm, *children_of(pm)]) if pm else 0.0
        busy, steal, total = system_cpu_seconds()
        return ru.ru_utime + ru.ru_stime, app, pg, busy, steal, total

    def run(self) -> None:
        if self.plan.stop.wait(max(0.0, self.plan.t_measure - time.perf_counter())):
            return
        a = self._sample()
        if self.plan.stop.wait(max(0.0, self.plan.t_end - time.perf_counter())):
            return
        b = self._sample()
        self.usage = Usage(*(y - x for x, y in zip(a, b, strict=True)))


def run_load(plan: Plan, server: Server, engine: str) -> tuple[list[ClientResult], Usage | None, float]:
    results = [ClientResult() for _ in range(plan.clients)]
    plan.t_start = time.perf_counter()
    monitor = UsageMonitor(plan, server)
    monitor.start()
    try:
        if engine == "threads":
            threads = [threading.Thread(target=thread_client, args=(plan, i, results[i]), name=f"client-{i}",
                                        daemon=True) for i in range(plan.clients)]
            for t in threads:
                t.start()
            for t in threads:
                while t.is_alive():  # join in slices, so Ctrl-C is seen by the main thread
                    t.join(0.25)
        else:
            async def main() -> None:
                await asyncio.gather(*(async_client(plan, i, results[i]) for i in range(plan.clients)))

            loop_factory = None
            with contextlib.suppress(ImportError):
                import uvloop

                loop_factory = uvloop.new_event_loop
            with asyncio.Runner(loop_factory=loop_factory) as runner:
                runner.run(main())
    finally:
        plan.stop.set()
    monitor.join(5)
    finished = time.perf_counter()
    return results, monitor.usage, finished


# --- report ----------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def report(args: argparse.Namespace, results: list[ClientResult], usage: Usage | None,
           audited: int, commits: tuple[float, float], cut_short: bool, calibration_ms: float) -> bool:
    lat = sorted(x for r in results for x in r.latencies)
    measured = len(lat)
    rate = measured / args.duration
    ok_total = sum(r.ok_total for r in results)
    errors_total = sum(r.errors_total for r in results)
    errors_measured = sum(r.errors_measured for r in results)
    kinds: dict[str, int] = {}
    for r in results:
        for k, v in r.error_kinds.items():
            kinds[k] = kinds.get(k, 0) + v
    ms = {p: percentile(lat, p) * 1000 for p in (50, 90, 99)}
    mx = (lat[-1] * 1000) if lat else 0.0
    mean = (sum(lat) / measured * 1000) if measured else 0.0
    ncpu = os.cpu_count() or 1

    audited_ok = audited == ok_total if args.endpoint == "password" else audited == 0
    what = {"password": "Audited password retrieval", "account": "Account metadata read (not audited)",
            "health": "Health check (no authentication)"}[args.endpoint]
    print()
    print(f"{what}: {args.clients} client(s), engine={args.engine}, {args.accounts} accounts, "
          f"{args.warmup:g} s warm-up + {args.duration:g} s measured" + ("  (CUT SHORT)" if cut_short else ""))
    print(f"  machine           {ncpu} cores, {cpu_model()}; calibration loop {calibration_ms:.0f} ms "
          f"(lower is faster)")
    print(f"  requests/s        {rate:10.1f}   ({measured} in the measured window)")
    print(f"  latency ms        p50 {ms[50]:.2f}   p90 {ms[90]:.2f}   p99 {ms[99]:.2f}   max {mx:.2f}   "
          f"mean {mean:.2f}")
    print(f"  errors            {errors_measured} in the window, {errors_total} in the whole run"
          + (f"  {kinds}" if kinds else ""))
    if args.endpoint == "password":
        print(f"  audited           {audited} password_retrieved records written during the run, "
              f"{ok_total} passwords returned (warm-up included): "
              + ("every retrieval audited" if audited_ok else "MISMATCH"))
    else:
        print(f"  audited           {audited} password_retrieved records during the run (expected 0)")
    records, batches = commits
    if batches:
        print(f"  audit commits     {batches:.0f} group commits for {records:.0f} records during the run "
              f"({records / batches:.1f} records per commit)")
    if usage is not None and measured:
        per = 1e6 / measured
        machine = usage.machine_busy / usage.machine_total * 100 if usage.machine_total else 0.0
        other = max(0.0, usage.machine_busy - usage.client - usage.app - usage.postgres)
        print(f"  CPU per request   client {usage.client * per:.0f} us, app server {usage.app * per:.0f} us, "
              f"PostgreSQL {usage.postgres * per:.0f} us  (measured window)")
        print(f"  CPU use           client {usage.client / args.duration * 100:.0f}%, app server "
              f"{usage.app / args.duration * 100:.0f}%, PostgreSQL {usage.postgres / args.duration * 100:.0f}%, "
              f"other processes {other / args.duration * 100:.0f}%  (% of one core; {ncpu} cores, machine "
              f"{machine:.0f}% busy, {usage.machine_steal / usage.machine_total * 100:.0f}% stolen by the "
              f"hypervisor)")
    if args.endpoint == "password":
        met = rate >= 1000 and ms[99] < 50 and errors_measured == 0
        print("  target (>=1000/s at 16 clients, p99 < 50 ms): "
              + ("met" if met else "NOT met") + ("" if args.clients == 16 else " (this run is not at 16 clients)"))
    label = "retrievals/s" if args.endpoint == "password" else f"{args.endpoint}_requests/s"
    print(f"{label}={rate:.1f} p50_ms={ms[50]:.2f} p90_ms={ms[90]:.2f} p99_ms={ms[99]:.2f} "
          f"max_ms={mx:.2f} clients={args.clients} audited={audited} retrieved={ok_total} "
          f"errors={errors_total}", flush=True)
    return errors_total == 0 and audited_ok and not cut_short


# --- main --------------------------------------------------------------------------------


def load_parser(description: str) -> argparse.ArgumentParser:
    """The options every load benchmark shares (clients, timing, accounts, the server's environment)."""
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=16, help="concurrent clients (default 16)")
    ap.add_argument("--duration", type=float, default=20.0, help="measured seconds (default 20)")
    ap.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds before (default 3)")
    ap.add_argument("--accounts", type=int, default=100, help="accounts to seed (default 100)")
    ap.add_argument("--max-requests", type=int, default=2_000_000,
                    help="stop after this many requests in all (default 2,000,000)")
    ap.add_argument("--keep-dir", action="store_true", help="keep the temporary directory (logs, data)")
    ap.add_argument("--python", default=sys.executable,
                    help="interpreter that has safehold installed (default: this one)")
    ap.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE",
                    help="extra environment for the server, e.g. SAFEHOLD_DATABASE__POOL_SIZE=20 (repeatable)")
    ap.add_argument("--workers", type=int, default=None,
                    help="the server's http.workers (default: its own setting)")
    return ap


def parse_load_args(ap: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    args = ap.parse_args(argv)
    if args.workers is not None and not 1 <= args.workers <= 64:
        ap.error("--workers must be 1..64")
    if not 1 <= args.clients <= 1024:
        ap.error("--clients must be 1..1024")
    if args.duration <= 0 or args.warmup < 0 or args.duration + args.warmup > 3600:
        ap.error("--duration must be > 0, --warmup >= 0, and together at most 3600 s")
    if not 1 <= args.accounts <= 100_000:
        ap.error("--accounts must be 1..100000")
    if args.max_requests < args.clients:
        ap.error("--max-requests must be at least --clients")
    for item in args.server_env:
        if "=" not in item:
            ap.error(f"--server-env needs NAME=VALUE, not {item!r}")
    return args


def server_env(args: argparse.Namespace, workers: int | None) -> dict[str, str]:
    """The server's extra environment: --server-env, and http.workers when given."""
    env = dict(item.split("=", 1) for item in args.server_env)
    if workers is not None:
        env["SAFEHOLD_HTTP__WORKERS"] = str(workers)
    return env


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = load_parser(__doc__.split("\n\n")[0])
    ap.add_argument("--engine", choices=("asyncio", "threads"), default="asyncio",
                    help="client engine (default asyncio: least client CPU per request)")
    ap.add_argument("--endpoint", choices=tuple(ENDPOINTS), default="password",
                    help="what the clients request: 'password' (the audited retrieval, default); for comparison "
                         "'account' (the same account's metadata: authenticated, not audited) or 'health' "
                         "(no authentication, one trivial database query)")
    ap.add_argument("--compare-workers", action="store_true",
                    help="two runs, one after the other: http.workers = 1, then --workers (default: the CPU count)")
    return parse_load_args(ap, argv)


def memory_of(server: Server) -> list[tuple[int, int]]:
    """(pid, resident kB) of the app server's processes: the server itself and its workers, if any."""
    if server.proc is None:
        return []
    out = []
    for pid in [server.proc.pid, *children_of(server.proc.pid)]:
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    out.append((pid, int(line.split()[1])))
    return out


def report_memory(server: Server) -> None:
    rss = memory_of(server)
    if rss:
        each = ", ".join(f"{kb / 1024:.0f}" for _, kb in rss)
        print(f"  memory            app server resident {sum(kb for _, kb in rss) / 1024:.0f} MiB in {len(rss)} "
              f"process(es): {each} MiB (the first is the server or its supervisor)")


def one_run(args: argparse.Namespace, workers: int | None) -> tuple[bool, float, float]:
    """One whole run (a fresh server, seeded, loaded); its success, requests/s and p99 ms."""
    env = server_env(args, workers)
    with bench_run("safehold-bench-", args.keep_dir) as run:
        server = Server(args.python, run.root, env)
        run.servers.append(server)
        admin_password = "Bench-Admin-" + secrets.token_urlsafe(12)
        log(f"initialising a server in {server.data_dir} (https {HOST}:{server.port}, db port {server.db_port})")
        t = time.monotonic()
        server.init(admin_password)
        log(f"initialised in {time.monotonic() - t:.1f} s; starting it"
            + (f" with http.workers = {workers}" if workers is not None else ""))
        server.start()
        server.wait_healthy()
        assert server.proc is not None
        log(f"serving (pid {server.proc.pid}, log {server.log_path}); seeding {args.accounts} accounts")
        token, ids = seed(server, admin_password, args.accounts)
        before = audited_retrievals(server, token)
        calibration_ms = calibrate()
        counters_before = audit_counters(server)
        plan = Plan(clients=args.clients, warmup=args.warmup, duration=args.duration,
                    max_per_client=max(1, args.max_requests // args.clients),
                    account_paths=[ENDPOINTS[args.endpoint][0].format(id=i) for i in ids],
                    expect=ENDPOINTS[args.endpoint][1], token=token,
                    port=server.port, ssl_context=server.ssl_context())
        log(f"running {args.clients} {args.engine} client(s): {args.warmup:g} s warm-up, "
            f"{args.duration:g} s measured")
        try:
            results, usage, finished = run_load(plan, server, args.engine)
        except KeyboardInterrupt:
            log("interrupted")
            raise
        cut_short = finished < plan.t_end  # --max-requests reached before the end of the window
        after = audited_retrievals(server, token)
        counters_after = audit_counters(server)
        commits = (counters_after[0] - counters_before[0], counters_after[1] - counters_before[1])
        if workers is not None:
            print(f"\n== http.workers = {workers} ==")
        ok = report(args, results, usage, after - before, commits, cut_short, calibration_ms)
        report_memory(server)
        lat = sorted(x for r in results for x in r.latencies)
        return ok, len(lat) / args.duration, percentile(lat, 99) * 1000


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.compare_workers:
        return 0 if one_run(args, args.workers)[0] else 1
    many = args.workers or os.cpu_count() or 1
    ok1, rate1, p99_1 = one_run(args, 1)
    ok2, rate2, p99_2 = one_run(args, many)
    print(f"\nworkers: 1 -> {rate1:.1f}/s (p99 {p99_1:.1f} ms); {many} -> {rate2:.1f}/s (p99 {p99_2:.1f} ms); "
          f"ratio {rate2 / rate1 if rate1 else 0:.2f}")
    print(f"workers_1={rate1:.1f} workers_{many}={rate2:.1f} ratio={rate2 / rate1 if rate1 else 0:.2f}", flush=True)
    return 0 if ok1 and ok2 else 1


if __name__ == "__main__":
    sys.exit(main())
