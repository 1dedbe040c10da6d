#!/usr/bin/env python3
"""Benchmark: Safehold's failover on a Patroni cluster, beside Patroni's own.

What it does, end to end (etcd from Debian's etcd-server and the test extra's Patroni must be installed:
``scripts/test`` installs both), ``--rounds`` times, each on a fresh cluster:

1. an etcd and a Patroni cluster of ``--members`` members (the bundled PostgreSQL as Patroni's bin_dir,
   Patroni's ttl 20 s, loop_wait 1 s, retry_timeout 5 s, ``--synchronous`` for synchronous mode) on free
   127.0.0.1 ports (tests/patroni_support.py);
2. ``safehold init --database-url`` with the members' multi-host URL (``target_session_attrs=read-write``)
   and ``safehold serve``; an API token and a resource;
3. two probes start at once and run until each succeeds after the kill: **Patroni** — a fresh libpq
   connection through the same multi-host URL and an ``INSERT`` (what any client of the engine sees);
   **Safehold** — ``POST /api/v1/resources`` with the token on the running app server (a keep-alive
   HTTPS connection; nothing restarted). Each polls every ``--poll-interval`` seconds;
4. ``kill -9`` of the leader's Patroni and postmaster; the time from the kill to each probe's first
   success is recorded, and their difference (Safehold minus Patroni);
5. everything of the round is stopped and removed.

It prints each round, the medians, the largest difference (target: Safehold within 1 s of Patroni),
how busy the machine was, and a one-line summary.  Everything it started is stopped, also on Ctrl-C.

Run it from the repository root with the project's interpreter::

    .venv/bin/python bench/patroni_failover.py              # 2 rounds (~3 min)
    .venv/bin/python bench/patroni_failover.py --rounds 3 --synchronous

The exit status is 0 when every round's two writes succeeded within ``--timeout``.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench._common import Api, bench_run, busy_since, log, system_cpu  # noqa: E402
from tests.support import Server  # noqa: E402


def _probe(attempt: Callable[[], bool], start: threading.Event, interval: float, deadline: float,
           out: dict[str, float], name: str, kill_at: list[float]) -> None:
    """After ``start``, call ``attempt`` every ``interval`` seconds until it succeeds after the kill."""
    start.wait()
    while time.perf_counter() < deadline:
        ok = False
        try:
            ok = attempt()
        except Exception:  # noqa: BLE001 - the engine is failing over: keep trying
            ok = False
        if ok and kill_at and time.perf_counter() > kill_at[0]:
            out[name] = time.perf_counter() - kill_at[0]
            return
        time.sleep(interval)


def one_round(args: argparse.Namespace) -> tuple[float | None, float | None, str]:
    import psycopg
    from tests.patroni_support import running_cluster

    with bench_run("safehold-bench-patroni-", args.keep_dir) as run, \
            running_cluster(args.members, synchronous_mode=args.synchronous) as cluster:
        url = cluster.url("read-write")
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS bench_probe (id serial PRIMARY KEY, at timestamptz DEFAULT now())")
            conn.execute(f"GRANT ALL ON bench_probe, bench_probe_id_seq TO {cluster.app_user}")
        app = Server(run.root / "app", detached=True)
        run.servers.append(app)
        app.init("--database-url", url)
        app.start(env={"SAFEHOLD_HA__CHECK_INTERVAL": "0.5"}, timeout=60)
        token = app.login()
        api = Api(app, token, timeout=5)
        run.on_cleanup(api.close)

        def safehold_write() -> bool:
            status, _, _ = api.request("POST", "/resources", {"name": f"probe-{secrets.token_hex(6)}"})
            return status == 201

        def patroni_write() -> bool:
            with psycopg.connect(url, autocommit=True, connect_timeout=2) as c:
                c.execute("INSERT INTO bench_probe DEFAULT VALUES")
            return True

        assert safehold_write() and patroni_write()
        start, kill_at, out = threading.Event(), list[float](), dict[str, float]()
        deadline = time.perf_counter() + args.timeout
        threads = [threading.Thread(target=_probe, args=(fn, start, args.poll_interval, deadline, out, name, kill_at),
                                    daemon=True)
                   for name, fn in (("patroni", patroni_write), ("safehold", safehold_write))]
        for t in threads:
            t.start()
        kill_at.append(time.perf_counter())
        old = cluster.kill_leader()
        start.set()
        for t in threads:
            t.join(args.timeout + 10)
        new = cluster.leader() or "?"
        return out.get("patroni"), out.get("safehold"), f"{old} → {new}"
    return None, None, "aborted"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--members", type=int, default=2, choices=(2, 3))
    p.add_argument("--synchronous", action="store_true", help="Patroni's synchronous_mode")
    p.add_argument("--poll-interval", type=float, default=0.1)
    p.add_argument("--timeout", type=float, default=120)
    p.add_argument("--keep-dir", action="store_true")
    args = p.parse_args()
    from tests.patroni_support import require_patroni

    try:
        require_patroni()
    except BaseException as exc:  # pytest's skip outside pytest
        log(f"cannot run: {exc}")
        return 2
    cpu = system_cpu()
    rows: list[tuple[float, float]] = []
    ok = True
    for n in range(1, args.rounds + 1):
        log(f"round {n}: {args.members} members{' (synchronous mode)' if args.synchronous else ''}")
        patroni, safehold, change = one_round(args)
        if patroni is None or safehold is None:
            ok = False
            print(f"round {n}: {change}: patroni {patroni}, safehold {safehold} — a write did not succeed "
                  f"within {args.timeout:.0f} s")
            continue
        rows.append((patroni, safehold))
        print(f"round {n}: {change}: Patroni (SQL write) {patroni:6.2f} s   Safehold (API write) {safehold:6.2f} s"
              f"   difference {safehold - patroni:+.2f} s", flush=True)
    if rows:
        diffs = [s - p for p, s in rows]
        print(f"median: Patroni {statistics.median(p for p, _ in rows):.2f} s, Safehold "
              f"{statistics.median(s for _, s in rows):.2f} s; largest difference {max(diffs):+.2f} s "
              f"(target: within 1 s of Patroni); machine {busy_since(cpu)}")
        ok = ok and max(diffs) <= 1.0
    print(f"summary: {len(rows)}/{args.rounds} rounds, {'target met' if ok else 'target NOT met'}")
    return 0 if rows and len(rows) == args.rounds else 1


if __name__ == "__main__":
    sys.exit(main())
