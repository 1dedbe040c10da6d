#!/usr/bin/env python3
"""Benchmark: automatic failover -- how soon the read-only server accepts writes after the primary dies.

What it does, end to end (nothing to set up beforehand), ``--rounds`` times, each on fresh servers:

1. in a temporary directory, ``safehold init`` a primary on free 127.0.0.1 ports and start
   ``safehold serve``; take a setup pack and join a read-only server with it (``ha pack`` +
   ``ha join``: its own streaming replica); turn automatic failover on, on the primary (the policy is
   the cluster's: ``safehold ha failover --enable --ping-interval 1 --ping-iterations 3 --witness
   127.0.0.2:PORT --gateway 127.0.0.3:PORT``), and start the read-only server.  The lag guard is on
   (the default ``max_lag_bytes``), and so is the write-lease guard: every server runs with
   ``ha.check_interval`` 0.5 s, ``ha.peer_timeout`` 0.5 s and a write lease of half the failover
   threshold (1.5 s with the defaults), since the lease must be shorter than the threshold.  The witness and the gateway are
   TCP listeners of the bench on 127.0.0.2 and 127.0.0.3 that accept and close connections; they
   stay up the whole time, so the read-only server knows its own side of the network is fine.
   Every server is its own process, in its own session;
2. on the primary: an API token (``POST /api/v1/me/tokens``; it replicates, so it is valid on the
   read-only server's replica and, after the promotion, in its database) and one resource; wait
   until the token is on the replica, the read-only server redirects to the primary and its failover
   watch has heard from the primary once (its log says "the lag guard is armed");
3. after a random fraction of the ping interval (so the kill falls anywhere in the ping cycle),
   ``kill -9`` at the same moment the primary's database (its postmaster, from
   ``<primary>/pg/postmaster.pid``, and the postmaster's children) and its app server;
4. from the kill on, ``POST /api/v1/resources`` on the read-only server with the token every
   ``--poll-interval`` seconds until one is answered ``201``: the time recorded.  Were the token
   refused (401), the bench would log in at the read-only server and carry on with that session;
   it counts such re-logins.  A second thread polls ``GET /api/v1/ha/local`` until its role is
   ``primary``.  The read-only server's log gives the rest of the breakdown (failed pings,
   promotion ordered, acting primary);
5. stop everything of the round and remove its directories.

It prints each round with its breakdown, the median and the max (target: under 10 s), how busy
the machine was, then a one-line summary.  Everything it started is stopped, also on Ctrl-C,
SIGTERM or an error, and the temporary directory removed (unless ``--keep-dir``).

Run it from the repository root with the project's interpreter::

    .venv/bin/python bench/failover.py                         # 3 rounds (~2 min)
    .venv/bin/python bench/failover.py --rounds 5 --ping-iterations 5

The exit status is 0 when every round's write was accepted within ``--timeout``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import json
import os
import random
import re
import shutil
import signal
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench._common import Api, Stoppable, bench_run, busy_since, log, start_pair, system_cpu  # noqa: E402
from tests.support import (  # noqa: E402
    ADMIN_PASSWORD,
    Listener,
    Server,
    app_connect,
    run_cli,
    wait_until,
)

TARGET_SECONDS = 10.0
WITNESS_HOST, GATEWAY_HOST = "127.0.0.2", "127.0.0.3"

# lines of the read-only server's log (asctime first) that mark the steps of the failover
LOG_MARKS = {
    "first failed ping": re.compile(r"automatic failover: ping 1/\d+ failed"),
    "promotion ordered": re.compile(r"automatic failover: promote:"),
    "acting primary": re.compile(r"this server is now the acting primary"),
}
ASCTIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


# --- one round -------------------------------------------------------------------------------------------


@dataclass
class Round:
    accepted_after: float | None  # seconds from the kill to the first 201; None: timed out
    not_redirected_after: float | None  # ... to the first answer that was not a 307
    role_primary_after: float | None  # ... to GET /ha/local saying role "primary"
    marks: dict[str, float]  # step -> seconds from the kill, from the read-only server's log
    statuses: dict[str, int] = field(default_factory=dict)
    relogins: int = 0
    settle: float = 0.0


def postmaster_family(server: Server) -> list[int]:
    """The primary database's postmaster (from pg/postmaster.pid) and its children."""
    pid = int((server.data_dir / "pg" / "postmaster.pid").read_text().split()[0])
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if raw[raw.rindex(")") + 2:].split()[1] == str(pid):
            children.append(int(entry))
    return [pid, *children]


def local_role(server: Server) -> str | None:
    api = Api(server, timeout=2)
    try:
        status, raw, _ = api.request("GET", "/ha/local")
        return json.loads(raw).get("role") if status == 200 else None
    except (OSError, http.client.HTTPException, ValueError):
        return None
    finally:
        api.close()


def redirects_to_primary(readonly: Server, token: str) -> bool:
    api = Api(readonly, token, timeout=5)
    try:
        status, _, _ = api.request("GET", "/me")
    finally:
        api.close()
    return status == 307


def log_marks(readonly: Server, wall_kill: float) -> dict[str, float]:
    """Seconds from the kill to each step, from the asctime of the first log line after the kill that
    marks it (millisecond resolution; the clock is the wall clock, as time.time())."""
    found: dict[str, float] = {}
    for line in readonly.log().splitlines():
        m = ASCTIME.match(line)
        if not m:
            continue
        at = dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        if at < wall_kill - 0.002:
            continue
        for name, pattern in LOG_MARKS.items():
            if name not in found and pattern.search(line):
                found[name] = at - wall_kill
    return found


def watch_role(readonly: Server, t_kill: float, stop: threading.Event, out: list[float]) -> None:
    while not stop.is_set():
        if local_role(readonly) == "primary":
            out.append(time.perf_counter() - t_kill)
            return
        stop.wait(0.05)


def run_round(run_root: Path, n: int, args: argparse.Namespace, servers: list[Stoppable],
              witness: Listener, gateway: Listener, rng: random.Random) -> Round:

    def enable_failover(readonly: Server) -> None:
        primary_dir = run_root / f"r{n}-primary"  # the policy is the cluster's: set on the primary
        out = run_cli("ha", "failover", "--data-dir", str(primary_dir), "--enable",
                      "--ping-interval", f"{args.ping_interval:g}", "--ping-iterations", str(args.ping_iterations),
                      "--witness", witness.address, "--gateway", gateway.address)
        if "enabled" not in out.stdout.lower():
            raise RuntimeError(f"'safehold ha failover --enable' did not say enabled:\n{out.stdout}\n{out.stderr}")

    log(f"[#{n}] a primary and a read-only server with automatic failover on")
    primary, readonly = start_pair(run_root, f"r{n}", servers, configure=enable_failover)

    setup = Api(primary, primary.login("admin", ADMIN_PASSWORD))
    token = setup.call("POST", "/me/tokens", {"name": "bench-failover"}, expect=201)["token"]
    setup.call("POST", "/resources", {"name": f"failover{n}-before"}, expect=201)
    setup.close()

    def replicated() -> bool:  # the resource was committed after the token
        with app_connect(readonly.data_dir) as conn:
            row = conn.execute("SELECT 1 FROM resources WHERE name = %s", (f"failover{n}-before",)).fetchone()
        return row is not None
    wait_until(replicated, timeout=30, what="the token and the resource on the replica")
    wait_until(lambda: redirects_to_primary(readonly, token), timeout=60, interval=0.1,
               what="the read-only server to redirect to the primary")
    # the lag guard lets a standby promote itself only once it has heard from the primary
    wait_until(lambda: "the lag guard is armed" in readonly.log(), timeout=60, interval=0.1,
               what="the read-only server's failover watch to hear from the primary")
    if local_role(readonly) != "readonly":
        raise RuntimeError(f"the read-only server's role is {local_role(readonly)!r} before the kill")

    settle = args.settle if args.settle is not None else rng.uniform(0, args.ping_interval)
    time.sleep(settle)
    victims = postmaster_family(primary)
    assert primary.proc is not None
    app = primary.proc
    t_kill = time.perf_counter()
    wall_kill = time.time()
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    app.kill()
    log(f"[#{n}] killed the primary database (postmaster {victims[0]} and {len(victims) - 1} children) and "
        f"app server (pid {app.pid}); writing to the read-only server every {args.poll_interval * 1000:g} ms")

    role_at: list[float] = []
    stop = threading.Event()
    watcher = threading.Thread(target=watch_role, args=(readonly, t_kill, stop, role_at), name="role-watch",
                               daemon=True)
    watcher.start()
    api = Api(readonly, token, timeout=args.poll_timeout)
    statuses: dict[str, int] = {}
    accepted = not_redirected = None
    relogins = 0
    i = 0
    try:
        while time.perf_counter() - t_kill < args.timeout:
            i += 1
            try:
                status, _, _ = api.request("POST", "/resources", {"name": f"failover{n}-after-{i}"})
                key = str(status)
            except (OSError, http.client.HTTPException) as exc:
                status, key = 0, type(exc).__name__
            now = time.perf_counter()
            statuses[key] = statuses.get(key, 0) + 1
            if status and status != 307 and not_redirected is None:
                not_redirected = now - t_kill
            if status == 201:
                accepted = now - t_kill
                break
            if status == 401:  # a token the server does not know (any more): a session made here instead
                with contextlib.suppress(Exception):
                    api.token = readonly.login("admin", ADMIN_PASSWORD)
                    relogins += 1
            time.sleep(args.poll_interval)
    finally:
        api.close()
        app.wait()
        primary.proc = None
        if accepted is None:
            stop.set()  # timed out or interrupted: the role watch ends too
    deadline = time.monotonic() + (15 if accepted is not None else 0)
    while not role_at and watcher.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    watcher.join(5)
    marks = log_marks(readonly, wall_kill)

    for s in (readonly, primary):
        with contextlib.suppress(Exception):
            s.cleanup()
        servers.remove(s)
    if not args.keep_dir:
        for s in (readonly, primary):
            shutil.rmtree(s.data_dir, ignore_errors=True)
    return Round(accepted, not_redirected, role_at[0] if role_at else None, marks, statuses, relogins, settle)


# --- main ------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="failovers, each on fresh servers (default 3)")
    ap.add_argument("--ping-interval", type=float, default=1.0,
                    help="the read-only server's ha.failover.ping_interval (default 1 s, the least allowed)")
    ap.add_argument("--ping-iterations", type=int, default=3,
                    help="failed pings before it promotes itself (default 3)")
    ap.add_argument("--poll-interval", type=float, default=0.05,
                    help="seconds between the bench's write attempts on the read-only server (default 0.05)")
    ap.add_argument("--poll-timeout", type=float, default=5.0, help="timeout of one write attempt (default 5 s)")
    ap.add_argument("--timeout", type=float, default=60.0,
                    help="give up on one round after this many seconds from the kill (default 60)")
    ap.add_argument("--settle", type=float, default=None,
                    help="seconds between the redirect seen and the kill (default: a random fraction of the "
                         "ping interval, so kills fall anywhere in the ping cycle)")
    ap.add_argument("--keep-dir", action="store_true", help="keep the temporary directory (logs, data)")
    args = ap.parse_args(argv)
    if not 1 <= args.rounds <= 50:
        ap.error("--rounds must be 1..50")
    if not 1 <= args.ping_interval <= 60 or not 2 <= args.ping_iterations <= 20:
        ap.error("--ping-interval must be 1..60 s and --ping-iterations 2..20 (the server's own limits)")
    if not 0.001 <= args.poll_interval <= 1 or not 5 <= args.timeout <= 600 or not 0.2 <= args.poll_timeout <= 30:
        ap.error("--poll-interval must be 0.001..1 s, --timeout 5..600 s, --poll-timeout 0.2..30 s")
    return args


def report(rounds: list[Round], args: argparse.Namespace, cpu: tuple[float, float, float]) -> bool:
    def s(v: float | None) -> str:
        return f"{v:.2f} s" if v is not None else "-"

    print()
    print(f"Automatic failover: kill -9 of the primary's database and app server, then POST /api/v1/resources on "
          f"the read-only server every {args.poll_interval * 1000:g} ms until 201 (ping interval "
          f"{args.ping_interval:g} s, {args.ping_iterations} failed pings, witness and gateway up; lag guard on; "
          f"write lease {os.environ.get('SAFEHOLD_HA__WRITE_LEASE_SECONDS', '?')} s)")
    for i, r in enumerate(rounds, 1):
        accepted = s(r.accepted_after) if r.accepted_after is not None else f"NOT within {args.timeout:g} s"
        steps = ", ".join(f"{name} {at:.2f} s" for name, at in sorted(r.marks.items(), key=lambda kv: kv[1]))
        print(f"  #{i:<2} write accepted after {accepted:>8}   (read-only server's log: {steps or 'no marks'}; "
              f"/ha/local role primary {s(r.role_primary_after)}; stopped redirecting {s(r.not_redirected_after)})")
        print(f"       answers {dict(sorted(r.statuses.items()))}" + (f", {r.relogins} re-logins" if r.relogins else ""))
    times = [r.accepted_after for r in rounds if r.accepted_after is not None]
    failed = len(rounds) - len(times)
    med = statistics.median(times) if times else float("nan")
    worst = max(times) if times else float("nan")
    met = not failed and worst < TARGET_SECONDS
    print(f"  median {med:.2f} s, max {worst:.2f} s; target (< {TARGET_SECONDS:g} s every time): "
          + ("met" if met else "NOT met") + (f"; {failed} timed out" if failed else ""))
    print(f"  machine: {busy_since(cpu)}")
    print(f"auto_failover median_s={med:.2f} max_s={worst:.2f} timeouts={failed} rounds={len(rounds)} "
          f"ping_interval_s={args.ping_interval:g} ping_iterations={args.ping_iterations}", flush=True)
    return not failed


def lease_environment(args: argparse.Namespace) -> dict[str, str]:
    """Settings every server and command of the run inherits: a write lease shorter than the failover threshold
    (half of it), renewed often enough (a check interval and a peer timeout that fit it)."""
    lease = args.ping_interval * args.ping_iterations / 2
    step = min(0.5, lease / 3)
    return {"SAFEHOLD_HA__CHECK_INTERVAL": f"{step:g}", "SAFEHOLD_HA__PEER_TIMEOUT": f"{step:g}",
            "SAFEHOLD_HA__WRITE_LEASE_SECONDS": f"{lease:g}"}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    env = lease_environment(args)
    os.environ.update(env)
    log("write lease: " + ", ".join(f"{k}={v}" for k, v in env.items()))
    rounds: list[Round] = []
    ok = False
    rng = random.Random()
    cpu = system_cpu()
    with bench_run("safehold-bench-failover-", args.keep_dir) as run:
        run.on_abort(lambda: rounds and report(rounds, args, cpu))
        witness = Listener(WITNESS_HOST)
        run.on_cleanup(witness.close)
        gateway = Listener(GATEWAY_HOST)
        run.on_cleanup(gateway.close)
        log(f"witness {witness.address}, gateway {gateway.address} (up throughout)")
        for n in range(1, args.rounds + 1):
            r = run_round(run.root, n, args, run.servers, witness, gateway, rng)
            rounds.append(r)
            log(f"[#{n}] write accepted after {r.accepted_after if r.accepted_after is None else round(r.accepted_after, 3)}"
                f" s; answers {r.statuses}")
        ok = report(rounds, args, cpu)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
