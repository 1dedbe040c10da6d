#!/usr/bin/env python3
"""Benchmark: switchover -- how long writes are unavailable in a planned role swap, and what is lost.

What it does, end to end (nothing to set up beforehand), ``--rounds`` times, each on fresh servers:

1. in a temporary directory, ``safehold init`` a primary on free 127.0.0.1 ports and start
   ``safehold serve``; take a setup pack and join a read-only server with it (``ha pack`` +
   ``ha join``: its own streaming replica) and start it.  Every server is its own process, in
   its own session.  Wait until the read-only server reports its replica streaming and caught
   up (``GET /api/v1/ha/local``: ``data_age_seconds`` under 5 s);
2. ``--writers`` threads create resources (``POST /api/v1/resources``, one keep-alive HTTPS
   connection each, an API token made on the primary) on the primary, one after another, each
   under a new name.  A writer that gets a ``307`` follows it to the server it names and carries
   on there; one that gets an error or another status waits ``--retry-delay`` and tries again
   with a new name.  Every name whose ``201`` arrived is an acknowledged write;
3. after ``--lead-seconds`` of writing, ``safehold ha switchover --data-dir PRIMARY --to
   readonly``, timed, with its phases (from its own output lines) and the figure it prints
   ("writes were unavailable for X s");
4. the writers go on until each has been acknowledged ``--after-writes`` times by the new
   primary; then they stop, and the bench counts the acknowledged names missing from the new
   primary's database (target: 0 lost), and takes the longest gap between two acknowledged writes
   (of any writer: the time nobody could write) around the switchover (target: under 5 s);
5. stop everything of the round and remove its directories.

It prints each round, the median and the max, how busy the machine was, then a one-line summary.
Everything it started is stopped, also on Ctrl-C, SIGTERM or an error, and the temporary directory
removed (unless ``--keep-dir``).

Run it from the repository root with the project's interpreter::

    .venv/bin/python bench/switchover.py                        # 3 rounds, 2 writers (~2 min)
    .venv/bin/python bench/switchover.py --rounds 5 --writers 4

The exit status is 0 when every switchover succeeded and no acknowledged write was lost.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import re
import shutil
import statistics
import sys
import threading
import time
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
    run_timed,
    start_pair,
    system_cpu,
)
from tests.support import ADMIN_PASSWORD, Server, app_connect, wait_until  # noqa: E402

TARGET_SECONDS = 5.0
READONLY_NAME = "readonly"
# the command's own progress lines (safehold.ha.switchover) that mark its phases
PHASES = {
    "stopping writes": "writes stopped",
    "the last WAL position is": "primary database down",
    "is the acting primary": "target promoted",
    "is now a read-only server of": "rejoined",
}
UNAVAILABLE = re.compile(r"writes were unavailable for ([0-9.]+) s")


# --- the writers ------------------------------------------------------------------------------------------


@dataclass
class Writer:
    """Creates resources one after another, following redirects, and remembers what was acknowledged."""

    index: int
    tag: str
    servers: dict[int, Server]  # port -> server, to follow a redirect
    start: Server
    token: str
    retry_delay: float
    acked: list[str] = field(default_factory=list)
    acked_at: list[float] = field(default_factory=list)  # time.perf_counter() of each 201
    acked_by: list[int] = field(default_factory=list)  # the port of the server that answered it
    failures: dict[str, int] = field(default_factory=dict)
    redirects: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        server = self.start
        api = Api(server, self.token, timeout=10)
        i = 0
        try:
            while not self.stop.is_set():
                i += 1
                name = f"{self.tag}-w{self.index}-{i}"
                try:
                    status, _, location = api.request("POST", "/resources", {"name": name})
                except (OSError, http.client.HTTPException) as exc:
                    self._failed(type(exc).__name__)
                    continue
                if status == 201:
                    self.acked.append(name)
                    self.acked_at.append(time.perf_counter())
                    self.acked_by.append(server.port)
                elif status == 307:
                    port = int(location.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
                    if port not in self.servers:
                        raise RuntimeError(f"redirected to an unknown server: {location}")
                    self.redirects += 1
                    server = self.servers[port]
                    api.close()
                    api = Api(server, self.token, timeout=10)
                else:
                    self._failed(f"HTTP {status}")
        finally:
            api.close()

    def _failed(self, kind: str) -> None:
        self.failures[kind] = self.failures.get(kind, 0) + 1
        self.stop.wait(self.retry_delay)

    def acked_by_port(self, port: int) -> int:
        return sum(1 for p in self.acked_by if p == port)


# --- the switchover command -----------------------------------------------------------------------------


def run_switchover(primary: Server, to: str, timeout: float) -> tuple[float, float, dict[str, float], float | None,
                                                                      str]:
    """Run 'safehold ha switchover'; returns (start as time.perf_counter(), wall seconds, phase -> seconds from
    the start, the unavailability it printed, its output)."""
    t = run_timed(["ha", "switchover", "--data-dir", str(primary.data_dir), "--to", to], PHASES, timeout)
    m = UNAVAILABLE.search(t.output)
    return t.start, t.wall, t.phases, float(m.group(1)) if m else None, t.output


# --- one round ------------------------------------------------------------------------------------------------


@dataclass
class Round:
    acknowledged: int
    lost: int
    gap: float  # the longest time between two acknowledged writes (of any writer) around the switchover
    gap_from: float  # where it began, seconds from the command's start (its phases are counted from there too)
    writer_gap: float  # the longest such gap of a single writer
    printed: float | None  # what the command printed
    wall: float  # the command's run time
    phases: dict[str, float]
    failures: dict[str, int]
    redirects: int
    on_new_primary: int  # writes the new primary acknowledged


def longest_gap(times: list[float], since: float) -> tuple[float, float]:
    """(the longest gap between consecutive times that ends after ``since``, where it begins)."""
    best, at = 0.0, since
    for a, b in zip(times, times[1:], strict=False):
        if b > since and b - a > best:
            best, at = b - a, a
    return best, at


def resource_names(server: Server, prefix: str) -> set[str]:
    with app_connect(server.data_dir) as conn:
        return {r[0] for r in conn.execute("SELECT name FROM resources WHERE name LIKE %s", (prefix + "%",))}


def local(server: Server) -> dict[str, object]:
    api = Api(server, timeout=5)
    try:
        status, raw, _ = api.request("GET", "/ha/local")
    finally:
        api.close()
    return json.loads(raw) if status == 200 else {}


def run_round(run_root: Path, n: int, args: argparse.Namespace, servers: list[Stoppable]) -> Round:
    primary, readonly = start_pair(run_root, f"r{n}", servers, name=READONLY_NAME)
    wait_until(lambda: (local(readonly).get("data_age_seconds") or 99) < 5, timeout=60,
               what="the read-only server's replica to stream")

    setup = Api(primary, primary.login("admin", ADMIN_PASSWORD))
    token = setup.call("POST", "/me/tokens", {"name": "bench-switchover"}, expect=201)["token"]
    setup.close()
    tag = f"sw{n}"
    by_port = {primary.port: primary, readonly.port: readonly}
    writers = [Writer(i, tag, by_port, primary, token, args.retry_delay) for i in range(args.writers)]
    threads = [threading.Thread(target=w.run, name=f"writer-{w.index}", daemon=True) for w in writers]

    def stop_writers() -> None:
        for w in writers:
            w.stop.set()
        for t in threads:
            if t.is_alive():
                t.join(30)

    try:
        for t in threads:
            t.start()
        time.sleep(args.lead_seconds)
        if not all(w.acked for w in writers):
            raise RuntimeError(f"the writers are not being acknowledged: {[w.failures for w in writers]}")
        log(f"[#{n}] {sum(len(w.acked) for w in writers)} writes so far; 'safehold ha switchover --to "
            f"{READONLY_NAME}'")
        t_cmd, wall, phases, printed, output = run_switchover(primary, READONLY_NAME, args.timeout)
        if "is the primary (generation 2)" not in output:
            raise RuntimeError(f"unexpected output of 'safehold ha switchover':\n{output}")
        log(f"[#{n}] switched over in {wall:.1f} s (it says writes were unavailable for {printed} s); waiting for "
            f"{args.after_writes} writes per writer on the new primary")
        wait_until(lambda: all(w.acked_by_port(readonly.port) >= args.after_writes for w in writers),
                   timeout=args.timeout, interval=0.1, what="every writer to be acknowledged by the new primary")
    finally:
        stop_writers()
    acked = [name for w in writers for name in w.acked]
    found = resource_names(readonly, tag + "-")
    lost = sum(1 for name in acked if name not in found)
    gap, gap_at = longest_gap(sorted(t for w in writers for t in w.acked_at), t_cmd)
    writer_gap = max(longest_gap(w.acked_at, t_cmd)[0] for w in writers)
    failures: dict[str, int] = {}
    for w in writers:
        for k, v in w.failures.items():
            failures[k] = failures.get(k, 0) + v
    r = Round(len(acked), lost, gap, gap_at - t_cmd, writer_gap, printed, wall, phases, failures,
              sum(w.redirects for w in writers), sum(w.acked_by_port(readonly.port) for w in writers))

    for s in (readonly, primary):
        with contextlib.suppress(Exception):
            s.cleanup()
        servers.remove(s)
    if not args.keep_dir:
        for s in (readonly, primary):
            shutil.rmtree(s.data_dir, ignore_errors=True)
    return r


# --- main -------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="switchovers, each on fresh servers (default 3)")
    ap.add_argument("--writers", type=int, default=2, help="concurrent writer threads (default 2)")
    ap.add_argument("--lead-seconds", type=float, default=3.0,
                    help="seconds of writing before the switchover (default 3)")
    ap.add_argument("--after-writes", type=int, default=20,
                    help="writes each writer gets acknowledged by the new primary before the round ends "
                         "(default 20)")
    ap.add_argument("--retry-delay", type=float, default=0.02,
                    help="seconds a writer waits after a failed attempt (default 0.02)")
    ap.add_argument("--timeout", type=float, default=120.0,
                    help="limit of the switchover command, and of the writers' resumption (default 120 s)")
    ap.add_argument("--keep-dir", action="store_true", help="keep the temporary directory (logs, data)")
    args = ap.parse_args(argv)
    if not 1 <= args.rounds <= 50 or not 1 <= args.writers <= 32:
        ap.error("--rounds must be 1..50 and --writers 1..32")
    if not 0.5 <= args.lead_seconds <= 600 or not 1 <= args.after_writes <= 10_000:
        ap.error("--lead-seconds must be 0.5..600 and --after-writes 1..10000")
    if not 0 <= args.retry_delay <= 5 or not 10 <= args.timeout <= 600:
        ap.error("--retry-delay must be 0..5 s and --timeout 10..600 s")
    return args


def report(rounds: list[Round], args: argparse.Namespace, cpu: tuple[float, float, float]) -> bool:
    print()
    print(f"Switchover under writes: {args.writers} writer(s) POST /api/v1/resources on the primary, following the "
          f"307 to the new primary; 'safehold ha switchover --to {READONLY_NAME}' after {args.lead_seconds:g} s")
    for i, r in enumerate(rounds, 1):
        printed = f"{r.printed:.1f} s" if r.printed is not None else "?"
        steps = ", ".join(f"{name} {at:.2f} s" for name, at in sorted(r.phases.items(), key=lambda kv: kv[1]))
        print(f"  #{i:<2} longest gap {r.gap:5.2f} s (from {r.gap_from:+.2f} s to {r.gap_from + r.gap:+.2f} s; one "
              f"writer's longest {r.writer_gap:.2f} s)   command says {printed}   acknowledged {r.acknowledged:>5}   "
              f"lost {r.lost}")
        print(f"       command {r.wall:.2f} s: {steps}; {r.on_new_primary} writes acknowledged by the new primary, "
              f"{r.redirects} redirects followed, failed attempts {dict(sorted(r.failures.items()))}")
    gaps = [r.gap for r in rounds]
    printed_values = [r.printed for r in rounds if r.printed is not None]
    acked = sum(r.acknowledged for r in rounds)
    lost = sum(r.lost for r in rounds)
    med, worst = statistics.median(gaps), max(gaps)
    printed_med = statistics.median(printed_values) if printed_values else float("nan")
    print(f"  longest gap: median {med:.2f} s, max {worst:.2f} s; target (< {TARGET_SECONDS:g} s every time): "
          + ("met" if worst < TARGET_SECONDS else "NOT met"))
    print(f"  command's figure: median {printed_med:.1f} s; acknowledged {acked}, lost {lost}; target (0 lost): "
          + ("met" if lost == 0 else "NOT met"))
    print(f"  machine: {busy_since(cpu)}")
    print(f"switchover gap_median_s={med:.2f} gap_max_s={worst:.2f} printed_median_s={printed_med:.1f} "
          f"acked={acked} lost={lost} rounds={len(rounds)} writers={args.writers}", flush=True)
    return lost == 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rounds: list[Round] = []
    ok = False
    cpu = system_cpu()
    with bench_run("safehold-bench-switchover-", args.keep_dir) as run:
        run.on_abort(lambda: rounds and report(rounds, args, cpu))
        for n in range(1, args.rounds + 1):
            r = run_round(run.root, n, args, run.servers)
            rounds.append(r)
            log(f"[#{n}] longest gap {r.gap:.2f} s, acknowledged {r.acknowledged}, lost {r.lost}")
        ok = report(rounds, args, cpu)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
