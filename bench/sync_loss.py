#!/usr/bin/env python3
"""Benchmark: acknowledged writes lost in a failover, synchronous mode against asynchronous.

What it does, end to end (nothing to set up beforehand), ``--rounds`` times per mode:

1. in a temporary directory, ``safehold init`` a primary on free 127.0.0.1 ports and start
   ``safehold serve``; take a setup pack and join a read-only server with it (``ha pack`` +
   ``ha join``: its own streaming replica) and start it.  Every server is its own process, in
   its own session.  Mode ``sync``: ``safehold ha sync --on`` on the primary, then wait until
   the replica is a synchronous standby (``pg_stat_replication.sync_state`` sync/quorum);
   mode ``async``: the default, wait until the replica streams;
2. ``--writers`` threads create resources through the primary's API
   (``POST /api/v1/resources``, one keep-alive HTTPS connection each) and record every id
   whose ``201`` they received: the acknowledged writes;
3. after ``--write-seconds`` (default: a random 2 to 5 s, so the kill falls anywhere in the
   stream) ``kill -9`` the primary *database* (its postmaster, from ``pg/postmaster.pid``, and
   the postmaster's children, as ``safehold.runtime.database.manager(settings).kill()`` does),
   then the primary app server;
4. promote the read-only server (``safehold ha promote --force``: its replica becomes the
   primary database) and count the acknowledged ids missing from the promoted database;
5. stop everything of the round and remove its directories.

It prints, per round and per mode, the acknowledged writes, the lost ones (target: 0 in sync
mode), the write rate and latency before the kill, then a one-line summary.  Everything it
started is stopped, also on Ctrl-C, SIGTERM or an error, and the temporary directory removed
(unless ``--keep-dir``).

Run it from the repository root with the project's interpreter::

    .venv/bin/python bench/sync_loss.py                        # 3 rounds sync + 3 async (~3 min)
    .venv/bin/python bench/sync_loss.py --rounds 5 --writers 8
    .venv/bin/python bench/sync_loss.py --mode sync --write-seconds 3

The exit status is 0 when no acknowledged write was lost in synchronous mode.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import random
import shutil
import statistics
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench._common import (  # noqa: E402
    Api,
    Stoppable,
    bench_run,
    busy_since,
    log,
    percentile,
    start_pair,
    system_cpu,
)
from tests.support import (  # noqa: E402
    ADMIN_PASSWORD,
    Server,
    app_connect,
    superuser_connect,
    wait_until,
)

from safehold.config import load_settings  # noqa: E402 - after the sys.path line
from safehold.runtime import database  # noqa: E402

# --- the writers ----------------------------------------------------------------------------------------


@dataclass
class Writes:
    acknowledged: list[str] = field(default_factory=list)  # ids whose 201 arrived
    acked_at: list[float] = field(default_factory=list)  # time.perf_counter() of each 201
    latencies: list[float] = field(default_factory=list)  # seconds, send to 201
    failures: dict[str, int] = field(default_factory=dict)  # how the writers stopped
    lock: threading.Lock = field(default_factory=threading.Lock)


def writer(primary: Server, token: str, writes: Writes, stop: threading.Event) -> None:
    api = Api(primary, token, timeout=60)
    try:
        while not stop.is_set():
            t = time.perf_counter()
            try:
                status, raw, _ = api.request("POST", "/resources", {"name": f"sync-{uuid.uuid4().hex[:16]}"})
            except (OSError, http.client.HTTPException) as exc:
                key = type(exc).__name__
            else:
                if status == 201:
                    done = time.perf_counter()
                    with writes.lock:
                        writes.acknowledged.append(json.loads(raw)["id"])
                        writes.acked_at.append(done)
                        writes.latencies.append(done - t)
                    continue
                key = f"HTTP {status}"
            with writes.lock:
                writes.failures[key] = writes.failures.get(key, 0) + 1
            return  # the primary died under it
    finally:
        api.close()


# --- one round --------------------------------------------------------------------------------------------


@dataclass
class Round:
    mode: str
    acknowledged: int
    lost: int
    rate: float  # acknowledged writes per second before the kill
    p50_ms: float
    p99_ms: float
    promote_s: float
    failures: dict[str, int]


def server_id(server: Server) -> str:
    return load_settings(server.data_dir).server.id


def sync_state(primary: Server, readonly: Server) -> tuple[str, str] | None:
    with superuser_connect(primary, "postgres") as conn:
        row = conn.execute("SELECT state, sync_state FROM pg_stat_replication WHERE application_name = %s",
                           (server_id(readonly),)).fetchone()
    return (row[0], row[1]) if row else None


def run_round(root: Path, n: int, mode: str, args: argparse.Namespace, servers: list[Stoppable],
              rng: random.Random) -> Round:
    primary, readonly = start_pair(root, f"{mode}{n}", servers)
    if mode == "sync":
        primary.cli("ha", "sync", "--on")
        wait_until(lambda: (sync_state(primary, readonly) or ("", ""))[1] in ("sync", "quorum"), timeout=60,
                   what="a synchronous standby")
    else:
        wait_until(lambda: (sync_state(primary, readonly) or ("", ""))[0] == "streaming", timeout=60,
                   what="the replica to stream")
    log(f"[{mode} #{n}] replica: {sync_state(primary, readonly)}")

    setup = Api(primary, primary.login("admin", ADMIN_PASSWORD))
    token = setup.call("POST", "/me/tokens", {"name": "bench-sync-loss"}, expect=201)["token"]
    setup.close()
    writes, stop = Writes(), threading.Event()
    threads = [threading.Thread(target=writer, args=(primary, token, writes, stop), name=f"writer-{i}",
                                daemon=True) for i in range(args.writers)]
    seconds = args.write_seconds if args.write_seconds is not None else rng.uniform(2, 5)
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)  # the writers run meanwhile; the kill falls at a random point of their stream
    pg = database.manager(load_settings(primary.data_dir))
    t_kill = time.perf_counter()
    pg.kill()
    assert primary.proc is not None
    primary.proc.kill()
    primary.proc.wait()
    primary.proc = None
    stop.set()
    for t in threads:
        t.join(60)
    with writes.lock:
        acknowledged = list(writes.acknowledged)
        before = sum(1 for a in writes.acked_at if a <= t_kill)
        latencies = sorted(writes.latencies)
    log(f"[{mode} #{n}] killed the primary database after {t_kill - t0:.1f} s; {len(acknowledged)} writes "
        f"acknowledged; promoting the replica")
    t_promote = time.perf_counter()
    readonly.cli("ha", "promote", "--force")
    promote_s = time.perf_counter() - t_promote
    with app_connect(readonly.data_dir) as conn:
        found = {r[0] for r in conn.execute("SELECT id::text FROM resources WHERE id = ANY(%s::uuid[])",
                                            (acknowledged,))}
    lost = sum(1 for i in acknowledged if i not in found)
    for s in (readonly, primary):
        with contextlib.suppress(Exception):
            s.cleanup()
        servers.remove(s)
    if not args.keep_dir:
        for s in (readonly, primary):
            shutil.rmtree(s.data_dir, ignore_errors=True)
    return Round(mode, len(acknowledged), lost, before / (t_kill - t0), percentile(latencies, 50) * 1000,
                 percentile(latencies, 99) * 1000, promote_s, dict(writes.failures))


# --- main ---------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="failovers per mode (default 3)")
    ap.add_argument("--mode", choices=("sync", "async", "both"), default="both",
                    help="synchronous mode on, off, or both in turn (default both)")
    ap.add_argument("--writers", type=int, default=4, help="concurrent writer threads (default 4)")
    ap.add_argument("--write-seconds", type=float, default=None,
                    help="seconds of writing before the kill (default: random 2 to 5 s per round)")
    ap.add_argument("--keep-dir", action="store_true", help="keep the temporary directory (logs, data)")
    args = ap.parse_args(argv)
    if not 1 <= args.rounds <= 50 or not 1 <= args.writers <= 64:
        ap.error("--rounds must be 1..50 and --writers 1..64")
    if args.write_seconds is not None and not 0.5 <= args.write_seconds <= 600:
        ap.error("--write-seconds must be 0.5..600")
    return args


def report(rounds: list[Round], args: argparse.Namespace, cpu: tuple[float, float, float]) -> bool:
    print()
    print(f"Acknowledged writes lost in a failover: {args.writers} writers POST /api/v1/resources on the primary, "
          "kill -9 of its database mid-stream, promotion of the read-only server's replica")
    summary = []
    ok = True
    for mode in ("sync", "async"):
        group = [r for r in rounds if r.mode == mode]
        if not group:
            continue
        print(f"  {mode}:")
        for i, r in enumerate(group, 1):
            print(f"    #{i:<2} acknowledged {r.acknowledged:>5}   lost {r.lost:>3}   {r.rate:7.1f} writes/s   "
                  f"p50 {r.p50_ms:6.1f} ms  p99 {r.p99_ms:6.1f} ms   promoted in "
                  f"{r.promote_s:.1f} s   writers stopped by {r.failures}")
        acked = sum(r.acknowledged for r in group)
        lost = sum(r.lost for r in group)
        rate = statistics.median(r.rate for r in group)
        p99 = statistics.median(r.p99_ms for r in group)
        print(f"    total: {acked} acknowledged, {lost} lost; median {rate:.1f} writes/s, median p99 {p99:.1f} ms"
              + ("; target (0 lost): " + ("met" if lost == 0 else "NOT met") if mode == "sync" else ""))
        if mode == "sync":
            ok = lost == 0
        summary.append(f"{mode}_acked={acked} {mode}_lost={lost} {mode}_rate={rate:.1f} {mode}_p99_ms={p99:.1f}")
    print(f"  machine: {busy_since(cpu)}")
    print("sync_loss " + " ".join(summary) + f" rounds={args.rounds} writers={args.writers}", flush=True)
    return ok


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rounds: list[Round] = []
    ok = False
    rng = random.Random()
    cpu = system_cpu()
    with bench_run("safehold-bench-sync-loss-", args.keep_dir) as run:
        run.on_abort(lambda: rounds and report(rounds, args, cpu))
        modes = ["sync", "async"] if args.mode == "both" else [args.mode]
        for n in range(1, args.rounds + 1):
            for mode in modes:  # interleaved, so drift on a shared machine hits both modes alike
                r = run_round(run.root, n, mode, args, run.servers, rng)
                rounds.append(r)
                log(f"[{mode} #{n}] acknowledged {r.acknowledged}, lost {r.lost}, {r.rate:.1f} writes/s")
        ok = report(rounds, args, cpu)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
