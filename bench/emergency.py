#!/usr/bin/env python3
"""Benchmark: emergency access -- how soon the read-only server serves passwords itself after a crash.

What it does, end to end (nothing to set up beforehand):

1. in a temporary directory, ``safehold init`` a primary on free 127.0.0.1 ports and
   start ``safehold serve``; add a secondary (``ha add-secondary`` + ``ha join``) and a
   read-only server (``ha pack`` + ``ha join``: its own streaming replica) and start
   them.  Every server is its own process, in its own session.  Then the secondary
   app server is stopped again (SIGTERM), so that once the primary is gone the
   read-only server has nobody to redirect to and must switch to read-only emergency
   mode itself;
2. on the primary: an API token (the read-only server reads it from its replica) and
   one account;
3. scenario ``app``, ``--repeats`` times: wait until the read-only server redirects to
   the primary, ``kill -9`` the primary's app server (``safehold serve``), and poll
   ``GET /api/v1/accounts/{id}/password`` on the read-only server with the token every
   ``--poll-interval`` seconds until it answers 200 with the password.  Then start the
   primary app server again;
4. scenario ``db``, ``--repeats`` times, with the primary app server up: ``kill -9`` the
   primary *database* (the postmaster and its children, as
   ``safehold.runtime.database.manager(settings).kill()`` does) and poll the same way
   until the read-only server serves the password from its replica.  Then
   ``safehold db start`` on the primary and wait until the read-only server redirects
   to the primary again;
5. print each time and the median per scenario (and the time at which the read-only
   server stopped redirecting), then stop everything it started, also on Ctrl-C,
   SIGTERM or an error, and remove the temporary directory (unless ``--keep-dir``).

The read-only server checks its peers every ``ha.check_interval`` seconds (default 2.0),
so a crash is noticed after up to one interval plus the check itself.  ``--check-interval``
(repeatable) runs both scenarios again for each value, with the read-only server restarted
under ``SAFEHOLD_HA__CHECK_INTERVAL``; without it the server's default is used.

Run it from the repository root with the project's interpreter::

    .venv/bin/python bench/emergency.py                       # 3 + 3 at the default interval
    .venv/bin/python bench/emergency.py --check-interval 2.0 --check-interval 0.5
    .venv/bin/python bench/emergency.py --repeats 5 --scenario app

The last line is a one-line summary; the exit status is 0 when every kill was followed
by a served password within ``--timeout``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench._common import Api, bench_run, log  # noqa: E402
from tests.support import (  # noqa: E402
    ADMIN_PASSWORD,
    Server,
    make_readonly,
    make_secondary,
    wait_until,
)

from safehold.config import load_settings  # noqa: E402 - after the sys.path line
from safehold.runtime import database  # noqa: E402

DEFAULT_CHECK_INTERVAL = 2.0  # safehold.config.HaSection.check_interval
TARGET_SECONDS = 3.0


# --- one measurement -----------------------------------------------------------------------------------


@dataclass
class Outcome:
    scenario: str
    interval: float
    served_after: float | None  # seconds from the kill to the first password served; None: timed out
    switched_after: float | None  # seconds from the kill to the first answer that was not a redirect
    statuses: dict[str, int] = field(default_factory=dict)


def poll_until_served(readonly: Server, token: str, account_id: str, password: str, t_kill: float,
                      args: argparse.Namespace) -> tuple[float | None, float | None, dict[str, int]]:
    api = Api(readonly, token, timeout=args.poll_timeout)
    statuses: dict[str, int] = {}
    switched = None
    try:
        while time.perf_counter() - t_kill < args.timeout:
            try:
                status, raw, _ = api.request("GET", f"/accounts/{account_id}/password")
                key = str(status)
            except (OSError, http.client.HTTPException) as exc:
                status, raw, key = 0, b"", type(exc).__name__
            now = time.perf_counter()
            statuses[key] = statuses.get(key, 0) + 1
            if status and status != 307 and switched is None:
                switched = now - t_kill
            if status == 200 and json.loads(raw).get("password") == password:
                return now - t_kill, switched, statuses
            time.sleep(args.poll_interval)
    finally:
        api.close()
    return None, switched, statuses


def redirect_of(readonly: Server) -> str | None:
    api = Api(readonly, timeout=5)
    try:
        status, _, location = api.request("GET", "/me")
    finally:
        api.close()
    return location if status == 307 else None


def wait_redirect_to(readonly: Server, target: Server, timeout: float = 60) -> None:
    wait_until(lambda: redirect_of(readonly) == f"{target.url}/api/v1/me", timeout=timeout, interval=0.1,
               what=f"the read-only server to redirect to {target.data_dir.name}")


def run_app_kill(primary: Server, readonly: Server, token: str, aid: str, password: str,
                 args: argparse.Namespace, interval: float) -> Outcome:
    wait_redirect_to(readonly, primary)
    time.sleep(args.settle)  # let the kill fall at a random point of the read-only server's check cycle
    assert primary.proc is not None
    t_kill = time.perf_counter()
    primary.proc.kill()  # kill -9 of 'safehold serve' (its PostgreSQL runs on, in a session of its own)
    served, switched, statuses = poll_until_served(readonly, token, aid, password, t_kill, args)
    primary.proc.wait()
    primary.proc = None
    log("restarting the primary app server")
    primary.start(timeout=90)
    return Outcome("app", interval, served, switched, statuses)


def run_db_kill(primary: Server, readonly: Server, token: str, aid: str, password: str,
                args: argparse.Namespace, interval: float) -> Outcome:
    wait_redirect_to(readonly, primary)
    time.sleep(args.settle)
    pg = database.manager(load_settings(primary.data_dir))
    # SIGKILL to the postmaster and its children; kill() then waits until they are gone (tens of ms),
    # so it runs in a thread of its own and the polling starts at once
    killer = threading.Thread(target=pg.kill, name="kill-primary-db")
    t_kill = time.perf_counter()
    killer.start()
    served, switched, statuses = poll_until_served(readonly, token, aid, password, t_kill, args)
    killer.join()
    log("starting the primary database again ('safehold db start')")
    primary.cli("db", "start")
    primary.wait_healthy(timeout=60)  # the primary app server reconnects by itself
    return Outcome("db", interval, served, switched, statuses)


# --- main ----------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3, help="kills per scenario and interval (default 3)")
    ap.add_argument("--scenario", choices=("app", "db", "both"), default="both",
                    help="kill the primary app server, its database, or both in turn (default both)")
    ap.add_argument("--check-interval", type=float, action="append", default=None, metavar="SECONDS",
                    help="run with the read-only server's ha.check_interval set to this (repeatable; default: "
                         "the server's own default, 2.0 s)")
    ap.add_argument("--poll-interval", type=float, default=0.02,
                    help="seconds between the bench's requests to the read-only server (default 0.02)")
    ap.add_argument("--poll-timeout", type=float, default=5.0, help="timeout of one poll request (default 5 s)")
    ap.add_argument("--timeout", type=float, default=30.0,
                    help="give up on one kill after this many seconds (default 30)")
    ap.add_argument("--settle", type=float, default=None,
                    help="seconds to wait after the redirect is seen, before the kill (default: a random "
                         "fraction of the check interval, so kills fall anywhere in the check cycle)")
    ap.add_argument("--keep-dir", action="store_true", help="keep the temporary directory (logs, data)")
    args = ap.parse_args(argv)
    if not 1 <= args.repeats <= 50:
        ap.error("--repeats must be 1..50")
    for v in args.check_interval or []:
        if not 0.2 <= v <= 60:
            ap.error("--check-interval must be 0.2..60 s (the server's own limits)")
    if not 0.001 <= args.poll_interval <= 1 or not 1 <= args.timeout <= 300 or not 0.2 <= args.poll_timeout <= 30:
        ap.error("--poll-interval must be 0.001..1 s, --timeout 1..300 s, --poll-timeout 0.2..30 s")
    return args


def report(outcomes: list[Outcome], args: argparse.Namespace) -> bool:
    print()
    print(f"Emergency access: kill -9, then GET /api/v1/accounts/{{id}}/password on the read-only server every "
          f"{args.poll_interval * 1000:g} ms until it serves the password (secondary app server stopped)")
    ok = True
    summary = []
    groups: dict[tuple[str, float], list[Outcome]] = {}
    for o in outcomes:
        groups.setdefault((o.scenario, o.interval), []).append(o)
    for (scenario, interval), group in groups.items():
        what = "primary app server (safehold serve)" if scenario == "app" else "primary database (postmaster)"
        print(f"  kill -9 of the {what}, read-only server's check interval {interval:g} s:")
        for i, o in enumerate(group, 1):
            served = f"{o.served_after:.2f} s" if o.served_after is not None else f"NOT within {args.timeout:g} s"
            switched = f"{o.switched_after:.2f} s" if o.switched_after is not None else "-"
            print(f"    #{i:<2} served after {served:>8}   (stopped redirecting after {switched})   answers "
                  f"{dict(sorted(o.statuses.items()))}")
        times = [o.served_after for o in group if o.served_after is not None]
        failed = len(group) - len(times)
        med = statistics.median(times) if times else float("nan")
        worst = max(times) if times else float("nan")
        met = not failed and worst < TARGET_SECONDS
        ok &= not failed
        print(f"    median {med:.2f} s, max {worst:.2f} s; target (< {TARGET_SECONDS:g} s every time): "
              + ("met" if met else "NOT met") + (f"; {failed} timed out" if failed else ""))
        summary.append(f"{scenario}@{interval:g}s_median_s={med:.2f} {scenario}@{interval:g}s_max_s={worst:.2f}")
    print("emergency_access " + " ".join(summary) + f" repeats={args.repeats}", flush=True)
    return ok


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    outcomes: list[Outcome] = []
    ok = False
    rng = random.Random()
    with bench_run("safehold-bench-emergency-", args.keep_dir) as run:
        run.on_abort(lambda: outcomes and report(outcomes, args))
        root, servers = run.root, run.servers
        t = time.monotonic()
        primary = Server(root / "primary", detached=True)
        servers.append(primary)
        log(f"initialising the primary in {primary.data_dir}")
        primary.init()
        primary.start(timeout=90)
        log("adding a secondary")
        secondary = Server(root / "secondary", detached=True)
        servers.append(secondary)
        joined = make_secondary(primary, secondary.data_dir)
        secondary.port, secondary.db_port = joined.port, joined.db_port
        log("taking a setup pack and joining a read-only server with it")
        readonly = Server(root / "readonly", detached=True)
        servers.append(readonly)
        joined = make_readonly(primary, readonly.data_dir)
        readonly.port, readonly.db_port = joined.port, joined.db_port

        session = primary.login("admin", ADMIN_PASSWORD)
        setup = Api(primary, session)
        token = setup.call("POST", "/me/tokens", {"name": "bench-emergency"}, expect=201)["token"]
        rid = setup.call("POST", "/resources", {"name": "bench-emergency"}, expect=201)["id"]
        password = "emergency-" + os.urandom(9).hex()
        aid = setup.call("POST", f"/resources/{rid}/accounts", {"username": "root", "password": password},
                         expect=201)["id"]
        setup.close()

        secondary.start(timeout=90)
        intervals = args.check_interval or [None]
        first = True
        for interval in intervals:
            env = {} if interval is None else {"SAFEHOLD_HA__CHECK_INTERVAL": f"{interval:g}"}
            shown = DEFAULT_CHECK_INTERVAL if interval is None else interval
            if readonly.proc is not None:
                readonly.stop()
            log(f"starting the read-only server (check interval {shown:g} s"
                + (", the default)" if interval is None else ")"))
            readonly.start(env=env, timeout=90)
            if first:
                # the read-only server has seen the secondary; now stop it, so that without the primary
                # the read-only server has no one to redirect to
                wait_redirect_to(readonly, primary)
                log("stopping the secondary app server")
                secondary.stop()
                first = False
            log(f"set up in {time.monotonic() - t:.0f} s")
            scenarios = ["app", "db"] if args.scenario == "both" else [args.scenario]
            for scenario in scenarios:
                for i in range(args.repeats):
                    settle = args.settle if args.settle is not None else rng.uniform(0, shown)
                    args_i = argparse.Namespace(**{**vars(args), "settle": settle})
                    log(f"{scenario} kill #{i + 1} (interval {shown:g} s)")
                    run_kill = run_app_kill if scenario == "app" else run_db_kill
                    o = run_kill(primary, readonly, token, aid, password, args_i, shown)
                    outcomes.append(o)
                    log(f"  served after {o.served_after if o.served_after is None else round(o.served_after, 3)}"
                        f" s; answers {o.statuses}")
        ok = report(outcomes, args)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
