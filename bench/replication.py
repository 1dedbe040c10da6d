#!/usr/bin/env python3
"""Benchmark: how soon a password changed on the primary can be read on the read-only server.

What it does, end to end (nothing to set up beforehand):

1. in a temporary directory, ``safehold init`` a primary on free 127.0.0.1 ports and
   start ``safehold serve``; take a setup pack (``safehold ha pack``) and join a
   read-only server with it (its own streaming replica of the primary database) and
   start it too.  Every server runs as its own process, in its own session;
2. log in on the primary, create a personal API token and one account;
3. ``--changes`` times: change the account's password through the primary's API
   (``PATCH /api/v1/accounts/{id}`` with a new ``password``) and poll the read-only
   side until the new password shows, every ``--poll-interval`` seconds, for at most
   ``--timeout`` seconds per change;
4. print the visibility delay's percentiles (p50/p90/p99/max), measured two ways:
   from the moment the primary acknowledged the change (its ``200`` arrived: the
   change is committed) and from the moment the PATCH was sent; plus timeouts,
   mismatches and how busy the machine was;
5. stop everything it started, also on Ctrl-C, SIGTERM or an error, and remove the
   temporary directory (unless ``--keep-dir``).

Where "shows" is observed (``--via``):

* ``replica-db`` (default): at the database level.  The read-only server redirects
  every user request to the primary while the primary is up, so its API would only
  read the primary.  Instead the bench polls the read-only server's *replica* directly,
  over one psycopg connection as the app login (the role the read-only server itself
  reads with): ``SELECT password_enc FROM accounts WHERE id = ...`` until the
  ciphertext differs from the previous one, then checks that it equals the primary's
  new ciphertext (read from the primary database afterwards, outside the timing).
* ``readonly-api``: through the read-only server's API, in read-only emergency mode.
  The primary app server is started with ``SAFEHOLD_HTTP__PUBLIC_URL`` pointing to a
  loopback port that is bound but not listening, so the URL it registers refuses
  connections: the read-only server's peer check finds no active primary (as if the
  primary app server were down) and serves requests itself, while the bench still
  writes through the primary's real port.  The bench polls
  ``GET /api/v1/accounts/{id}/password`` on the read-only server (with the API token,
  which it reads from its replica) until the new plaintext comes back.  Every poll is
  an audited retrieval there (fsync'd into its local audit spool before the answer),
  so this path costs more per poll.

Run it from the repository root with the project's interpreter::

    .venv/bin/python bench/replication.py                     # 500 changes, replica-db
    .venv/bin/python bench/replication.py --via readonly-api
    .venv/bin/python bench/replication.py --changes 2000 --poll-interval 0.0005

The last line is a one-line summary; the exit status is 0 when every change showed
(no timeout, no mismatch) and the run was not cut short.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench._common import HOST, Api, bench_run, busy_since, log, percentile, system_cpu  # noqa: E402
from tests.support import (  # noqa: E402 - after the sys.path line, so it runs from any directory
    ADMIN_PASSWORD,
    Server,
    app_connect,
    make_readonly,
    wait_until,
)

# --- figures -------------------------------------------------------------------------------------------


@dataclass
class Sample:
    from_ack: float  # seconds from the primary's 200 to the new password showing
    from_send: float  # seconds from sending the PATCH to the new password showing
    write: float  # the PATCH's own round trip
    polls: int


# --- the two ways to observe the change --------------------------------------------------------------


class ReplicaDbProbe:
    """Polls the read-only server's replica (app login) for the account's ciphertext."""

    def __init__(self, readonly: Server, primary: Server, account_id: str) -> None:
        self.replica = app_connect(readonly.data_dir)
        self.primary = app_connect(primary.data_dir)
        self.account_id = account_id
        self.last = self._read(self.replica)

    def _read(self, conn: Any) -> bytes:
        row = conn.execute("SELECT password_enc FROM accounts WHERE id = %s", (self.account_id,)).fetchone()
        return bytes(row[0])

    def shows(self, new_password: str) -> bool:
        return self._read(self.replica) != self.last

    def confirm(self, new_password: str) -> bool:
        """After it showed: the replica holds exactly the primary's new ciphertext."""
        seen = self._read(self.replica)
        ok = seen == self._read(self.primary)
        self.last = seen
        return ok

    def close(self) -> None:
        for c in (self.replica, self.primary):
            with contextlib.suppress(Exception):
                c.close()


class ReadonlyApiProbe:
    """Polls the read-only server's API (emergency mode) for the account's password."""

    def __init__(self, readonly: Server, token: str, account_id: str) -> None:
        self.api = Api(readonly, token, timeout=10)
        self.path = f"/accounts/{account_id}/password"
        self.status_counts: dict[int, int] = {}

    def shows(self, new_password: str) -> bool:
        status, raw, _ = self.api.request("GET", self.path)
        self.status_counts[status] = self.status_counts.get(status, 0) + 1
        if status != 200:
            if status in (301, 302, 303, 307, 308):
                raise RuntimeError("the read-only server redirects: it is not in emergency mode")
            return False
        return bool(json.loads(raw).get("password") == new_password)

    def confirm(self, new_password: str) -> bool:
        return True  # shows() compared the plaintext itself

    def close(self) -> None:
        self.api.close()


# --- main ----------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--changes", type=int, default=500, help="password changes to time (default 500)")
    ap.add_argument("--via", choices=("replica-db", "readonly-api"), default="replica-db",
                    help="where the change is looked for (default replica-db; see above)")
    ap.add_argument("--poll-interval", type=float, default=None,
                    help="seconds between polls (default 0.001 for replica-db, 0.005 for readonly-api)")
    ap.add_argument("--timeout", type=float, default=5.0, help="give up on one change after this (default 5 s)")
    ap.add_argument("--warmup", type=int, default=20, help="untimed changes first (default 20)")
    ap.add_argument("--max-seconds", type=float, default=600.0,
                    help="stop the measured loop after this many seconds (default 600)")
    ap.add_argument("--keep-dir", action="store_true", help="keep the temporary directory (logs, data)")
    args = ap.parse_args(argv)
    if not 1 <= args.changes <= 100_000:
        ap.error("--changes must be 1..100000")
    if not 0 <= args.warmup <= 10_000:
        ap.error("--warmup must be 0..10000")
    if args.poll_interval is None:
        args.poll_interval = 0.001 if args.via == "replica-db" else 0.005
    if not 0 <= args.poll_interval <= 1:
        ap.error("--poll-interval must be 0..1 s")
    if not 0.1 <= args.timeout <= 60 or not 1 <= args.max_seconds <= 3600:
        ap.error("--timeout must be 0.1..60 s and --max-seconds 1..3600 s")
    return args


def measure(args: argparse.Namespace, writer: Api, account_id: str, probe: Any) -> tuple[list[Sample], int, int,
                                                                                          bool]:
    samples: list[Sample] = []
    timeouts = mismatches = 0
    deadline = time.monotonic() + args.max_seconds
    total = args.warmup + args.changes
    for i in range(total):
        if time.monotonic() > deadline:
            return samples, timeouts, mismatches, True
        new_password = f"repl-{i:06d}-{secrets.token_urlsafe(12)}"
        t0 = time.perf_counter()
        writer.call("PATCH", f"/accounts/{account_id}", {"password": new_password})
        t1 = time.perf_counter()
        polls, seen = 0, None
        while True:
            polls += 1
            if probe.shows(new_password):
                seen = time.perf_counter()
                break
            if time.perf_counter() - t1 > args.timeout:
                break
            if args.poll_interval:
                time.sleep(args.poll_interval)
        measured = i >= args.warmup
        if seen is None:
            timeouts += measured
            log(f"change {i}: not visible after {args.timeout:g} s")
            with contextlib.suppress(Exception):
                probe.confirm(new_password)  # resynchronise with whatever the replica shows now
            continue
        if not probe.confirm(new_password):
            mismatches += measured
            log(f"change {i}: the replica shows a ciphertext other than the primary's")
        if measured:
            samples.append(Sample(seen - t1, seen - t0, t1 - t0, polls))
        if (i + 1) % 100 == 0:
            log(f"{i + 1}/{total} changes")
    return samples, timeouts, mismatches, False


def report(args: argparse.Namespace, samples: list[Sample], timeouts: int, mismatches: int, cut_short: bool,
           load: str, extra: str) -> bool:
    ack = sorted(s.from_ack * 1000 for s in samples)
    send = sorted(s.from_send * 1000 for s in samples)
    write = sorted(s.write * 1000 for s in samples)
    polls = sum(s.polls for s in samples) / len(samples) if samples else 0.0
    where = ("the read-only server's replica, at the database level (app login)" if args.via == "replica-db"
             else "the read-only server's API, in read-only emergency mode")
    print()
    print(f"Replication visibility: {len(samples)} password changes through the primary's API "
          f"(+{args.warmup} untimed), observed on {where}" + ("  (CUT SHORT)" if cut_short else ""))
    print(f"  poll interval     {args.poll_interval * 1000:g} ms; {polls:.1f} polls per change on average")
    for label, v in (("from the 200", ack), ("from the PATCH", send), ("PATCH itself", write)):
        print(f"  {label:<17} p50 {percentile(v, 50):7.2f} ms   p90 {percentile(v, 90):7.2f} ms   "
              f"p99 {percentile(v, 99):7.2f} ms   max {(v[-1] if v else 0):7.2f} ms")
    print(f"  timeouts          {timeouts} (> {args.timeout:g} s)   mismatches {mismatches}")
    print(f"  machine           {load}")
    if extra:
        print(f"  {extra}")
    p99 = percentile(ack, 99)
    met = bool(samples) and p99 < 100 and not timeouts and not mismatches
    print(f"  target (p99 < 100 ms on loopback, from the primary's 200): {'met' if met else 'NOT met'}")
    print(f"replication_visibility via={args.via} p50_ms={percentile(ack, 50):.2f} p90_ms={percentile(ack, 90):.2f} "
          f"p99_ms={p99:.2f} max_ms={(ack[-1] if ack else 0):.2f} p99_from_send_ms={percentile(send, 99):.2f} "
          f"changes={len(samples)} timeouts={timeouts} mismatches={mismatches}", flush=True)
    return bool(samples) and not timeouts and not mismatches and not cut_short


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ok = False
    with bench_run("safehold-bench-repl-", args.keep_dir) as run:
        root, servers = run.root, run.servers
        dead = socket.socket()  # bound, never listening: a URL on this port refuses connections
        run.on_cleanup(dead.close)
        dead.bind((HOST, 0))
        primary = Server(root / "primary", detached=True)
        servers.append(primary)
        t = time.monotonic()
        log(f"initialising the primary in {primary.data_dir}")
        primary.init()
        env = {}
        if args.via == "readonly-api":
            env["SAFEHOLD_HTTP__PUBLIC_URL"] = f"https://{HOST}:{dead.getsockname()[1]}"
        primary.start(env=env, timeout=90)
        log("taking a setup pack and joining a read-only server with it")
        readonly = Server(root / "readonly", detached=True)  # registered before the join, so a failed join is cleaned up
        servers.append(readonly)
        joined = make_readonly(primary, readonly.data_dir)
        readonly.port, readonly.db_port = joined.port, joined.db_port
        readonly.start(timeout=90)
        log(f"primary {primary.url}, read-only {readonly.url} (set up in {time.monotonic() - t:.0f} s)")

        session = primary.login("admin", ADMIN_PASSWORD)
        setup = Api(primary, session)
        token = setup.call("POST", "/me/tokens", {"name": "bench-replication"}, expect=201)["token"]
        rid = setup.call("POST", "/resources", {"name": "bench-replication"}, expect=201)["id"]
        aid = setup.call("POST", f"/resources/{rid}/accounts", {"username": "root", "password": "initial-pw"},
                         expect=201)["id"]
        setup.close()
        writer = Api(primary, token)
        run.on_cleanup(writer.close)

        def status_on_readonly(path: str, tok: str | None) -> int:
            api = Api(readonly, tok, timeout=5)
            try:
                return api.request("GET", path)[0]
            finally:
                api.close()

        if args.via == "replica-db":
            wait_until(lambda: status_on_readonly("/me", None) == 307, timeout=30,
                       what="the read-only server to redirect to the primary")

            def on_replica() -> bool:
                with app_connect(readonly.data_dir) as conn:
                    return conn.execute("SELECT 1 FROM accounts WHERE id = %s", (aid,)).fetchone() is not None
            wait_until(on_replica, timeout=30, what="the account on the replica")
            probe: Any = ReplicaDbProbe(readonly, primary, aid)
        else:
            wait_until(lambda: status_on_readonly(f"/accounts/{aid}/password", token) == 200, timeout=30,
                       what="the read-only server to serve in emergency mode")
            probe = ReadonlyApiProbe(readonly, token, aid)
        run.on_cleanup(probe.close)

        log(f"timing {args.changes} password changes ({args.warmup} untimed first), via {args.via}")
        before = system_cpu()
        samples, timeouts, mismatches, cut_short = measure(args, writer, aid, probe)
        load = busy_since(before)
        extra = ""
        if isinstance(probe, ReadonlyApiProbe):
            extra = f"read-only answers  {dict(sorted(probe.status_counts.items()))}"
        ok = report(args, samples, timeouts, mismatches, cut_short, load, extra)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
