#!/usr/bin/env python3
"""Benchmark: audited password changes per second against a fresh Safehold server.

What it does, end to end (nothing to set up beforehand):

1. ``safehold init`` a new standalone server in a temporary directory, on free
   loopback ports (127.0.0.1 only), and start ``safehold serve`` as its own
   process in its own session -- the same server as ``bench/retrieval.py``
   (its ``Server`` class is used as it is);
2. log in as the administrator, create a personal API token, and seed
   ``--accounts`` accounts (10 per resource);
3. run ``--clients`` concurrent clients on one event loop (uvloop when
   installed), each on one keep-alive HTTPS connection, doing
   ``PATCH /api/v1/accounts/{id}`` with the body ``{"password": NEW}``, NEW a
   new random password every time, and no ``If-Match`` header (so a 409 or a
   412 can only be an error).  Each change seals the new password, keeps the
   old one (sealed again) in the account's history, and appends a
   ``password_changed`` record to the audit chain, in one transaction.  With
   ``--pick own`` (the default) client i changes accounts i, i+C, i+2C, ... in
   turn, so no two clients touch the same account (unless there are fewer
   accounts than clients); with ``--pick random`` every request picks any
   account, and clients may wait for each other's row locks.  ``--warmup``
   seconds that are not measured, then ``--duration`` measured seconds (every
   client also stops after ``--max-requests / clients``);
4. print writes/s, latency percentiles, errors by kind, and what it reads back
   from the API:

   * audited: the ``password_changed`` records written during the run
     (``GET /api/v1/audit?action=password_changed``, its ``total``, before and
     after the load), which must equal the writes acknowledged with a 200
     during the run (warm-up included); beside them, the records stamped within
     the measured window (the same query with ``since`` and ``until``) and the
     writes acknowledged within it -- these two may differ by the requests in
     flight at the window's two edges, at most ``--clients``;
   * history: the rows added to the accounts' password histories
     (``GET /api/v1/accounts/{id}/history`` of every account, summed, before
     and after), which must equal the acknowledged writes too;
   * whether the audit chain verifies (``GET /api/v1/audit/verify``);

   then the CPU time per write spent by the client, the app server and
   PostgreSQL in the measured window (from /proc), the resident memory at the
   end of the window and its peak (sampled every second): the RSS of the app
   server's process(es), and of PostgreSQL's processes summed, with their PSS
   (in which the shared buffers count once); the calibration figure of
   ``bench/retrieval.py`` (on a shared VM the same work can take noticeably
   longer from hour to hour); and issue 12's targets beside the figures
   (>= 1,000 writes/s and p99 <= 80 ms at 16 clients);
5. stop everything it started, also on Ctrl-C, SIGTERM or an error
   (``bench._common.bench_run`` and ``Server.stop`` of ``bench/retrieval.py``:
   SIGTERM to the server, then make sure its PostgreSQL is gone), and remove
   the temporary directory unless ``--keep-dir``.

Run it with the project's interpreter::

    .venv/bin/python bench/writes.py --clients 16 --duration 20

The exit status is 0 when there were no errors, every acknowledged write was
audited and added one history row, and the audit chain verifies.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import random
import secrets
import sys
import threading
import time
from collections import Counter
from dataclasses import astuple, dataclass
from pathlib import Path
from urllib.parse import quote

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench._common import HOST, bench_run, log, percentile  # noqa: E402 - standard library only
from bench.retrieval import (  # noqa: E402
    REQUEST_TIMEOUT,
    Api,
    ClientResult,
    Plan,
    Server,
    Usage,
    UsageMonitor,
    calibrate,
    children_of,
    cpu_model,
    load_parser,
    parse_load_args,
    seed,
    server_env,
)

GOOD = b'"password_changed_at"'  # in the body of a 200 answer to the PATCH
TARGET_RATE, TARGET_P99_MS, TARGET_CLIENTS = 1000.0, 80.0, 16  # issue 12


# --- load ------------------------------------------------------------------------------


class Link:
    """One keep-alive HTTPS connection speaking just enough HTTP/1.1 for the PATCH."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.head = (f"Host: {HOST}:{plan.port}\r\nAuthorization: Bearer {plan.token}\r\n"
                     f"Accept: application/json\r\nContent-Type: application/json\r\n")

    def patch(self, path: str, password: str) -> bytes:
        body = json.dumps({"password": password}).encode()
        return f"PATCH {path} HTTP/1.1\r\n{self.head}Content-Length: {len(body)}\r\n\r\n".encode() + body

    async def exchange(self, request: bytes) -> tuple[int, bytes]:
        """Send one request, return (status, body); the connection is opened when needed."""
        if self.writer is None or self.reader is None:
            self.reader, self.writer = await asyncio.open_connection(
                HOST, self.plan.port, ssl=self.plan.ssl_context, server_hostname=HOST)
        self.writer.write(request)
        head = (await self.reader.readuntil(b"\r\n\r\n")).lower()
        at = head.find(b"\r\ncontent-length:")
        if at < 0:
            raise ValueError("response without Content-Length")
        body = await self.reader.readexactly(int(head[at + 17:head.index(b"\r\n", at + 2)]))
        if b"\r\nconnection: close" in head:
            self.drop()
        return int(head[9:12]), body

    def drop(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def close(self) -> None:
        writer = self.writer
        self.drop()
        if writer is not None:
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def write_client(plan: Plan, paths: list[str], pick_random: bool, res: ClientResult) -> None:
    """Change passwords until the end of the window: own accounts in turn, or any at random."""
    link, pick = Link(plan), random.Random()  # which account: no secret
    clock, t_measure, t_end = time.perf_counter, plan.t_measure, plan.t_end
    for k in range(plan.max_per_client):
        path = pick.choice(paths) if pick_random else paths[k % len(paths)]
        request = link.patch(path, secrets.token_urlsafe(18))
        t0 = clock()
        if t0 >= t_end or plan.stop.is_set():
            break
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                status, body = await link.exchange(request)
        except (OSError, ValueError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            res.error(type(exc).__name__, t_measure <= clock() <= t_end)
            link.drop()
            continue
        t1 = clock()
        if status == 200 and GOOD in body:
            res.ok_total += 1
            if t_measure <= t1 <= t_end:
                res.latencies.append(t1 - t0)
        else:
            res.error(f"HTTP {status}", t_measure <= t1 <= t_end)
    await link.close()


def client_paths(ids: list[str], clients: int, pick: str) -> list[list[str]]:
    """Each client's account paths: its own slice of the accounts, or all of them (random picks)."""
    paths = [f"/api/v1/accounts/{i}" for i in ids]
    if pick == "random":
        return [paths] * clients
    return [paths[c::clients] or [paths[c % len(paths)]] for c in range(clients)]


# --- memory ----------------------------------------------------------------------------


@dataclass(frozen=True)
class MemorySample:
    """Resident memory in kB: the app server's processes, PostgreSQL's processes (RSS summed, and PSS)."""

    app_rss: int = 0
    app_procs: int = 0
    pg_rss: int = 0
    pg_pss: int = 0
    pg_procs: int = 0

    def peak(self, other: MemorySample) -> MemorySample:
        return MemorySample(*(max(a, b) for a, b in zip(astuple(self), astuple(other), strict=True)))


def resident_kb(pid: int) -> tuple[int, int] | None:
    """(RSS, PSS) of one process in kB; PSS is RSS when smaps_rollup is not readable."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        text = ""
    values = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name in ("Rss", "Pss"):
            values[name] = int(rest.split()[0])
    if "Rss" in values:
        return values["Rss"], values.get("Pss", values["Rss"])
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
                return rss, rss
    except OSError:
        pass
    return None


def memory_sample(server: Server) -> MemorySample:
    pm = server._postmaster_pid()
    app: list[int] = []
    if server.proc is not None:  # the server process and any worker processes it runs (never PostgreSQL)
        app = [p for p in (server.proc.pid, *children_of(server.proc.pid)) if p != pm]
    app_mem = [m for m in map(resident_kb, app) if m is not None]
    pg_mem = [m for m in map(resident_kb, [pm, *children_of(pm)]) if m is not None] if pm else []
    return MemorySample(sum(m[0] for m in app_mem), len(app_mem), sum(m[0] for m in pg_mem),
                        sum(m[1] for m in pg_mem), len(pg_mem))


class MemoryMonitor(threading.Thread):
    """Samples resident memory every second of the measured window, and at its end."""

    def __init__(self, plan: Plan, server: Server) -> None:
        super().__init__(name="memory-monitor", daemon=True)
        self.plan, self.server = plan, server
        self.last: MemorySample | None = None
        self.peak = MemorySample()

    def run(self) -> None:
        if self.plan.stop.wait(max(0.0, self.plan.t_measure - time.perf_counter())):
            return
        while True:
            left = self.plan.t_end - time.perf_counter()
            sample = memory_sample(self.server)
            self.peak = self.peak.peak(sample)
            self.last = sample
            if left <= 0 or self.plan.stop.wait(min(1.0, left)):
                return


def run_load(plan: Plan, server: Server, paths: list[list[str]], pick_random: bool
             ) -> tuple[list[ClientResult], Usage | None, MemoryMonitor, float]:
    results = [ClientResult() for _ in range(plan.clients)]
    plan.t_start = time.perf_counter()
    usage, memory = UsageMonitor(plan, server), MemoryMonitor(plan, server)
    usage.start()
    memory.start()

    async def main() -> None:
        await asyncio.gather(*(write_client(plan, paths[c], pick_random, results[c]) for c in range(plan.clients)))

    loop_factory = None
    with contextlib.suppress(ImportError):
        import uvloop

        loop_factory = uvloop.new_event_loop
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(main())
    finally:
        plan.stop.set()
    usage.join(5)
    memory.join(5)
    return results, usage.usage, memory, time.perf_counter()


# --- read-back -------------------------------------------------------------------------


def iso(wall: float) -> str:
    return quote(dt.datetime.fromtimestamp(wall, dt.UTC).isoformat(timespec="microseconds"))


@dataclass
class ReadBack:
    audited: int = 0  # password_changed records, whole run
    audited_window: int = 0  # of them, stamped within the measured window
    history: int = 0  # history rows added, whole run
    chain_ok: bool = False


def count_changes(api: Api, since: float | None = None, until: float | None = None) -> int:
    window = "" if since is None or until is None else f"&since={iso(since)}&until={iso(until)}"
    return int(api.call("GET", f"/audit?action=password_changed&limit=1{window}")["total"])


def count_history(api: Api, ids: list[str]) -> int:
    return sum(len(api.call("GET", f"/accounts/{i}/history")) for i in ids)


# --- report ----------------------------------------------------------------------------


def mb(kb: int) -> str:
    return f"{kb / 1024:.0f} MB"


def report(args: argparse.Namespace, results: list[ClientResult], usage: Usage | None,
           memory: MemoryMonitor, back: ReadBack, cut_short: bool, calibration_ms: float) -> bool:
    lat = sorted(x for r in results for x in r.latencies)
    measured = len(lat)
    rate = measured / args.duration
    acked = sum(r.ok_total for r in results)
    errors_total = sum(r.errors_total for r in results)
    errors_measured = sum(r.errors_measured for r in results)
    kinds = sum((Counter(r.error_kinds) for r in results), Counter[str]())
    ms = {p: percentile(lat, p) * 1000 for p in (50, 90, 99)}
    mx = (lat[-1] * 1000) if lat else 0.0
    mean = (sum(lat) / measured * 1000) if measured else 0.0
    ncpu = os.cpu_count() or 1
    audited_ok = back.audited == acked == back.history

    print()
    print(f"Audited password changes: {args.clients} client(s), {args.accounts} accounts picked {args.pick}, "
          f"{args.warmup:g} s warm-up + {args.duration:g} s measured" + ("  (CUT SHORT)" if cut_short else ""))
    print(f"  machine           {ncpu} cores, {cpu_model()}; calibration loop {calibration_ms:.0f} ms "
          f"(lower is faster)")
    print(f"  writes/s          {rate:10.1f}   ({measured} acknowledged in the measured window)   "
          f"target >= {TARGET_RATE:.0f}")
    print(f"  latency ms        p50 {ms[50]:.2f}   p90 {ms[90]:.2f}   p99 {ms[99]:.2f}   max {mx:.2f}   "
          f"mean {mean:.2f}   target p99 <= {TARGET_P99_MS:.0f}")
    print(f"  errors            {errors_measured} in the window, {errors_total} in the whole run"
          + (f"  {dict(sorted(kinds.items()))}" if kinds else ""))
    print(f"  audited           {back.audited} password_changed records written during the run, {acked} writes "
          f"acknowledged (warm-up included), {back.history} history rows added: "
          + ("every acknowledged write audited, with its history row" if audited_ok else "MISMATCH"))
    print(f"  in the window     {back.audited_window} records stamped within it, {measured} writes acknowledged "
          f"within it (they may differ by the requests in flight at its edges, at most {args.clients})")
    print("  audit chain       " + ("verifies" if back.chain_ok else "DOES NOT VERIFY"))
    if usage is not None and measured:
        per = 1e6 / measured
        machine = usage.machine_busy / usage.machine_total * 100 if usage.machine_total else 0.0
        other = max(0.0, usage.machine_busy - usage.client - usage.app - usage.postgres)
        print(f"  CPU per write     client {usage.client * per:.0f} us, app server {usage.app * per:.0f} us, "
              f"PostgreSQL {usage.postgres * per:.0f} us  (measured window)")
        print(f"  CPU use           client {usage.client / args.duration * 100:.0f}%, app server "
              f"{usage.app / args.duration * 100:.0f}%, PostgreSQL {usage.postgres / args.duration * 100:.0f}%, "
              f"other processes {other / args.duration * 100:.0f}%  (% of one core; {ncpu} cores, machine "
              f"{machine:.0f}% busy, {usage.machine_steal / usage.machine_total * 100:.0f}% stolen by the "
              f"hypervisor)")
    m, p = memory.last, memory.peak
    if m is not None:
        print(f"  memory (resident) app server {mb(m.app_rss)} in {m.app_procs} process(es) (peak {mb(p.app_rss)}); "
              f"PostgreSQL {mb(m.pg_rss)} RSS summed over {m.pg_procs} processes, {mb(m.pg_pss)} PSS "
              f"(peak {mb(p.pg_rss)} / {mb(p.pg_pss)})  (end of the measured window)")
    met = rate >= TARGET_RATE and ms[99] <= TARGET_P99_MS and errors_measured == 0
    print(f"  target (>= {TARGET_RATE:.0f} writes/s and p99 <= {TARGET_P99_MS:.0f} ms at {TARGET_CLIENTS} clients, "
          f"issue 12): " + ("met" if met else "NOT met")
          + ("" if args.clients == TARGET_CLIENTS else f" (this run is not at {TARGET_CLIENTS} clients)"))
    rss = f" app_rss_mb={m.app_rss / 1024:.0f} pg_rss_mb={m.pg_rss / 1024:.0f}" if m is not None else ""
    print(f"writes/s={rate:.1f} p50_ms={ms[50]:.2f} p90_ms={ms[90]:.2f} p99_ms={ms[99]:.2f} max_ms={mx:.2f} "
          f"clients={args.clients} audited={back.audited} acknowledged={acked} history={back.history} "
          f"errors={errors_total}{rss}", flush=True)
    return errors_total == 0 and audited_ok and back.chain_ok and not cut_short


# --- main --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = load_parser((__doc__ or "").split("\n\n")[0])
    ap.add_argument("--pick", choices=("own", "random"), default="own",
                    help="'own' (default): each client changes its own accounts in turn; 'random': any account")
    return parse_load_args(ap, argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ok = False
    with bench_run("safehold-bench-writes-", args.keep_dir) as run:
        server = Server(args.python, run.root, server_env(args, args.workers))
        run.servers.append(server)
        admin_password = "Bench-Admin-" + secrets.token_urlsafe(12)
        log(f"initialising a server in {server.data_dir} (https {HOST}:{server.port}, db port {server.db_port})")
        server.init(admin_password)
        server.start()
        server.wait_healthy()
        assert server.proc is not None
        log(f"serving (pid {server.proc.pid}, log {server.log_path}); seeding {args.accounts} accounts")
        token, ids = seed(server, admin_password, args.accounts)
        api = Api(server, token)
        try:
            audited_before, history_before = count_changes(api), count_history(api, ids)
        finally:
            api.close()
        calibration_ms = calibrate()
        plan = Plan(clients=args.clients, warmup=args.warmup, duration=args.duration,
                    max_per_client=max(1, args.max_requests // args.clients), account_paths=[], expect=GOOD,
                    token=token, port=server.port, ssl_context=server.ssl_context())
        log(f"running {args.clients} client(s), accounts picked {args.pick}: {args.warmup:g} s warm-up, "
            f"{args.duration:g} s measured")
        wall_offset = time.time() - time.perf_counter()
        results, usage, memory, finished = run_load(plan, server, client_paths(ids, args.clients, args.pick),
                                                    args.pick == "random")
        api = Api(server, token)
        try:
            back = ReadBack(
                audited=count_changes(api) - audited_before,
                audited_window=count_changes(api, plan.t_measure + wall_offset, plan.t_end + wall_offset),
                history=count_history(api, ids) - history_before,
                chain_ok=bool(api.call("GET", "/audit/verify")["ok"]),
            )
        finally:
            api.close()
        ok = report(args, results, usage, memory, back, finished < plan.t_end, calibration_ms)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
