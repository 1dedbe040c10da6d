"""How fast the HA monitor notices: cut a read-only server's replica off and restore it, and time how
long until HA status and replication status are Failed, then Alive again, both in
GET /api/v1/ha/status (computed live) and in the HA event log (written by the monitor, which samples
every ha.check_interval seconds) — issue target: within 10 s each, each transition logged once.

    .venv/bin/python bench/monitoring.py [--rounds 3]

Starts a primary and a read-only server (own processes, each in its own session, own data directories,
127.0.0.1), and stops everything it started, also on Ctrl-C, SIGTERM or an error (``--keep-dir`` keeps
the temporary directory with the logs).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import bench_run  # noqa: E402
from tests.support import Server, make_readonly  # noqa: E402

from safehold.config import load_settings  # noqa: E402
from safehold.runtime import database  # noqa: E402


def _until(predicate, timeout: float = 60) -> float:  # type: ignore[no-untyped-def]
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.1)
    raise RuntimeError(f"gave up after {timeout} s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--keep-dir", action="store_true", help="keep the temporary directory (logs, data)")
    args = ap.parse_args()
    failed: list[float] = []
    alive: list[float] = []
    kinds: list[str] | None = None
    with bench_run("safehold-bench-monitoring-", args.keep_dir) as run:
        primary = Server(run.root / "primary", detached=True)
        run.servers.append(primary)
        primary.init()
        primary.start(timeout=90)
        readonly = Server(run.root / "readonly", detached=True)
        run.servers.append(readonly)
        joined = make_readonly(primary, readonly.data_dir)
        readonly.port, readonly.db_port = joined.port, joined.db_port
        readonly.start(timeout=90)
        with primary.client(primary.login()) as c:
            def statuses() -> tuple[str, str]:
                st = c.get("/ha/status").json()
                return st["ha_status"], st["replication_status"]

            def logged(kind: str) -> int:
                return [e["kind"] for e in c.get("/ha/events", params={"limit": 500}).json()["items"]].count(kind)

            _until(lambda: statuses() == ("Alive", "Alive"))
            replica = database.manager(load_settings(readonly.data_dir))
            for n in range(args.rounds):
                replica.kill()
                status_failed = _until(lambda: statuses() == ("Failed", "Failed"))
                failed.append(_until(lambda n=n: logged("HAFailed") == n + 1 and logged("ReplicationFailed") == n + 1))
                readonly.cli("db", "start")
                status_alive = _until(lambda: statuses() == ("Alive", "Alive"))
                alive.append(_until(lambda n=n: logged("HAAlive") == n + 1 and logged("ReplicationAlive") == n + 1))
                print(f"round {n + 1}: status Failed after {status_failed:.1f} s, logged after {failed[-1]:.1f} s; "
                      f"status Alive after {status_alive:.1f} s, logged after {alive[-1]:.1f} s", flush=True)
            time.sleep(3)  # one more monitor cycle: nothing further may be logged
            kinds = [e["kind"] for e in c.get("/ha/events", params={"limit": 500}).json()["items"]]
    if kinds is None:
        return 1
    counts = {k: kinds.count(k) for k in ("HAFailed", "ReplicationFailed", "HAAlive", "ReplicationAlive")}
    once = all(v == args.rounds for v in counts.values())
    print(f"events logged: {counts} (expected {args.rounds} of each)")
    print(f"to_failed_median_s={statistics.median(failed):.1f} to_failed_max_s={max(failed):.1f} "
          f"to_alive_median_s={statistics.median(alive):.1f} to_alive_max_s={max(alive):.1f} rounds={args.rounds} "
          f"each_logged_once={once}", flush=True)
    return 0 if once else 1


if __name__ == "__main__":
    sys.exit(main())
