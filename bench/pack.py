#!/usr/bin/env python3
"""Benchmark: setup-pack creation rate (``safehold ha pack``) on a large database under writes.

What it does, end to end (nothing to set up beforehand):

1. in a temporary directory, ``safehold init`` a primary on free 127.0.0.1 ports and
   start ``safehold serve`` (its own process, in its own session);
2. grow its vault database to at least ``--size-mb`` (default 500) MB: as the database
   superuser, ``INSERT ... SELECT ... FROM generate_series`` into a throwaway table
   ``bench_ballast`` in batches until ``pg_database_size`` reaches the size.  Each row
   carries ~1.9 KB of text (an MD5 of ``random()`` repeated), with column storage
   ``PLAIN`` so PostgreSQL neither compresses nor TOASTs it: the bytes on disk are the
   bytes the base backup copies (nothing on the pack's path compresses either);
3. start a writer thread: one keep-alive client changing account passwords through the
   primary's API (``PATCH /api/v1/accounts/{id}``), ``--writer-rate`` writes/s at most
   (0: as fast as it goes), bounded by ``--writer-max``; a few seconds of it are timed
   before the pack as a baseline;
4. run ``safehold ha pack --data-dir PRIMARY --readonly-host 127.0.0.1 --out FILE
   --passphrase-file P`` while the writer keeps writing, and time it, with its phases
   (from its own progress lines: base backup, sealing);
5. print the wall time, the base backup's size (the pack's size: the base backup plus
   the WAL streamed during it, sealed; a few KB more) and MB/s = size / wall time, the
   writes done meanwhile and their latency against the baseline;
6. stop everything it started, also on Ctrl-C, SIGTERM or an error, and remove the
   temporary directory with the pack (unless ``--keep-dir``).

Run it from the repository root with the project's interpreter::

    .venv/bin/python bench/pack.py                    # 500 MB, unthrottled writer
    .venv/bin/python bench/pack.py --size-mb 1000 --writer-rate 20

The last line is a one-line summary; the exit status is 0 when the pack was written
and the writer saw no error.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench._common import HOST, Api, bench_run, busy_since, log, percentile, run_timed, system_cpu  # noqa: E402
from tests.support import ADMIN_PASSWORD, Server, superuser_connect  # noqa: E402

MB = 1024 * 1024
PAD_REPEAT = 60  # 60 x 32 hex characters = 1,920 bytes of text per row: 4 rows per 8 KB page
WRITER_ACCOUNTS = 20


# --- growing the database ------------------------------------------------------------------------------


def grow(server: Server, size_mb: int, batch_mb: int) -> tuple[int, float]:
    """Fill bench_ballast until pg_database_size >= size_mb; returns (final size in bytes, seconds)."""
    target = size_mb * MB
    rows_per_batch = max(1, batch_mb * MB // (PAD_REPEAT * 32 + 60))
    t = time.monotonic()
    with superuser_connect(server) as conn:
        conn.execute("CREATE TABLE bench_ballast (id bigint, pad text)")
        conn.execute("ALTER TABLE bench_ballast ALTER COLUMN pad SET STORAGE PLAIN")  # no compression, no TOAST
        size = int(conn.execute("SELECT pg_database_size(current_database())").fetchone()[0])
        first = 0
        while size < target:
            conn.execute("INSERT INTO bench_ballast SELECT g, repeat(md5(random()::text), %s) "
                         "FROM generate_series(%s::bigint, %s::bigint) g",
                         (PAD_REPEAT, first, first + rows_per_batch - 1))
            first += rows_per_batch
            size = int(conn.execute("SELECT pg_database_size(current_database())").fetchone()[0])
            log(f"  database {size / MB:.0f} MB ({first:,} ballast rows, {time.monotonic() - t:.0f} s)")
        conn.execute("CHECKPOINT")  # so the pack's own checkpoint does not pay for the load
    return size, time.monotonic() - t


def cluster_size(server: Server) -> tuple[int, int]:
    """(vault database size, all databases of the cluster) in bytes."""
    with superuser_connect(server) as conn:
        db = int(conn.execute("SELECT pg_database_size(current_database())").fetchone()[0])
        total = int(conn.execute("SELECT sum(pg_database_size(datname)) FROM pg_database").fetchone()[0])
    return db, total


# --- the writer --------------------------------------------------------------------------------------------


@dataclass
class Writer:
    server: Server
    token: str
    account_ids: list[str]
    rate: float
    max_writes: int
    stop: threading.Event = field(default_factory=threading.Event)
    writes: list[tuple[float, float]] = field(default_factory=list)  # (end time, latency)
    errors: list[str] = field(default_factory=list)

    def run(self) -> None:
        api = Api(self.server, self.token, timeout=30)
        gap = 1 / self.rate if self.rate > 0 else 0.0
        next_at = time.perf_counter()
        try:
            for i in range(self.max_writes):
                if self.stop.is_set():
                    break
                if gap:
                    delay = next_at - time.perf_counter()
                    if delay > 0 and self.stop.wait(delay):
                        break
                    next_at += gap
                aid = self.account_ids[i % len(self.account_ids)]
                t0 = time.perf_counter()
                try:
                    api.call("PATCH", f"/accounts/{aid}", {"password": f"w{i}-{secrets.token_urlsafe(9)}"})
                except Exception as exc:  # noqa: BLE001 - counted and reported
                    self.errors.append(f"{type(exc).__name__}: {exc}"[:200])
                    continue
                t1 = time.perf_counter()
                self.writes.append((t1, t1 - t0))
        finally:
            api.close()

    def between(self, a: float, b: float) -> list[float]:
        return sorted(lat for end, lat in self.writes if a <= end <= b)


# --- the pack ------------------------------------------------------------------------------------------


def run_pack(server: Server, out: Path, passphrase_file: Path, timeout: float) -> tuple[float, dict[str, float],
                                                                                        str]:
    """Run 'safehold ha pack'; returns (wall seconds, phase name -> seconds from the start, output)."""
    marks = {"taking an online base backup": "backup started", "base backup done": "backup done",
             "sealing the pack": "sealing started"}
    t = run_timed(["ha", "pack", "--data-dir", str(server.data_dir), "--readonly-host", HOST, "--out", str(out),
                   "--passphrase-file", str(passphrase_file), "--name", "bench-ro"], marks, timeout)
    return t.wall, t.phases, t.output


# --- main ----------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=500, help="grow the vault database to at least this (default 500)")
    ap.add_argument("--batch-mb", type=int, default=64, help="ballast inserted per transaction (default 64 MB)")
    ap.add_argument("--writer-rate", type=float, default=0.0,
                    help="writes/s of the writer thread during the pack (default 0: as fast as one client goes)")
    ap.add_argument("--writer-max", type=int, default=50_000, help="writes at most (default 50,000)")
    ap.add_argument("--baseline", type=float, default=5.0,
                    help="seconds the writer runs before the pack starts, timed as a baseline (default 5)")
    ap.add_argument("--timeout", type=float, default=600.0, help="kill the pack after this (default 600 s)")
    ap.add_argument("--keep-dir", action="store_true", help="keep the temporary directory (logs, data, the pack)")
    args = ap.parse_args(argv)
    if not 1 <= args.size_mb <= 20_000 or not 1 <= args.batch_mb <= 1024:
        ap.error("--size-mb must be 1..20000 and --batch-mb 1..1024")
    if args.writer_rate < 0 or not 0 <= args.writer_max <= 10_000_000 or not 0 <= args.baseline <= 600:
        ap.error("--writer-rate must be >= 0, --writer-max 0..10,000,000, --baseline 0..600 s")
    if not 10 <= args.timeout <= 3600:
        ap.error("--timeout must be 10..3600 s")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ok = False
    t_all = time.monotonic()
    with bench_run("safehold-bench-pack-", args.keep_dir) as run:
        root = run.root
        primary = Server(root / "primary", detached=True)
        run.servers.append(primary)
        log(f"initialising the primary in {primary.data_dir}")
        primary.init()
        primary.start(timeout=90)
        session = primary.login("admin", ADMIN_PASSWORD)
        api = Api(primary, session)
        token = api.call("POST", "/me/tokens", {"name": "bench-pack"}, expect=201)["token"]
        rid = api.call("POST", "/resources", {"name": "bench-pack"}, expect=201)["id"]
        ids = [api.call("POST", f"/resources/{rid}/accounts", {"username": f"svc{i:02d}", "password": "initial"},
                        expect=201)["id"] for i in range(WRITER_ACCOUNTS)]
        api.close()

        log(f"growing the vault database to >= {args.size_mb} MB")
        size, grow_s = grow(primary, args.size_mb, args.batch_mb)
        log(f"grown to {size / MB:.0f} MB in {grow_s:.0f} s")
        db_before, cluster_before = cluster_size(primary)

        writer = Writer(primary, token, ids, args.writer_rate, args.writer_max)
        thread = threading.Thread(target=writer.run, name="writer", daemon=True)

        def stop_writer(w: Writer = writer, th: threading.Thread = thread) -> None:
            w.stop.set()
            if th.is_alive():
                th.join(30)

        run.on_cleanup(stop_writer)
        t_writer = time.perf_counter()
        thread.start()
        log(f"writer started; {args.baseline:g} s of baseline before the pack")
        time.sleep(args.baseline)

        passphrase = root / "pack.passphrase"
        passphrase.write_text("bench-pack-" + secrets.token_urlsafe(12))
        passphrase.chmod(0o600)
        out = root / "readonly.pack"
        log("running 'safehold ha pack' while the writer writes")
        cpu_before = system_cpu()
        t_pack = time.perf_counter()
        wall, phases, output = run_pack(primary, out, passphrase, args.timeout)
        t_done = time.perf_counter()
        load = busy_since(cpu_before)
        writer.stop.set()
        thread.join(60)
        pack_size = out.stat().st_size
        db_after, cluster_after = cluster_size(primary)

        base = writer.between(t_writer, t_pack)
        during = writer.between(t_pack, t_done)
        mbps = pack_size / MB / wall
        print()
        print(f"Setup pack ('safehold ha pack') of a {db_before / MB:.0f} MB vault database "
              f"(cluster {cluster_before / MB:.0f} MB), the primary taking writes through its API meanwhile")
        print(f"  database growth   {size / MB:.0f} MB of ballast rows in {grow_s:.1f} s "
              f"({(size / MB) / grow_s:.0f} MB/s, INSERT ... generate_series as the superuser)")
        print(f"  pack              {wall:.1f} s wall, {pack_size / MB:.0f} MB written "
              f"({pack_size:,} bytes): {mbps:.1f} MB/s")
        marks = sorted(phases.items(), key=lambda kv: kv[1])
        if marks:
            print("  phases            " + ", ".join(f"{name} at {at:.1f} s" for name, at in marks)
                  + f", done at {wall:.1f} s")
            if "backup started" in phases and "backup done" in phases:
                b = phases["backup done"] - phases["backup started"]
                print(f"  base backup alone {b:.1f} s (pg_basebackup, WAL streamed): "
                      f"{cluster_before / MB / b:.1f} MB/s of cluster data")
            if "sealing started" in phases:
                s_ = wall - phases["sealing started"]
                print(f"  sealing alone     {s_:.1f} s (encrypting into the pack): {pack_size / MB / s_:.1f} MB/s")
        for label, lat, span in (("writes before", base, t_pack - t_writer), ("writes during", during, wall)):
            print(f"  {label:<17} {len(lat)} in {span:.1f} s ({len(lat) / span if span else 0:.1f}/s): "
                  f"p50 {percentile(lat, 50) * 1000:.1f} ms, p99 {percentile(lat, 99) * 1000:.1f} ms, "
                  f"max {(lat[-1] * 1000 if lat else 0):.1f} ms")
        print(f"  writer errors     {len(writer.errors)}" + (f" (first: {writer.errors[0]})" if writer.errors else ""))
        print(f"  machine           {load} during the pack")
        print(f"  database after    {db_after / MB:.0f} MB (cluster {cluster_after / MB:.0f} MB)")
        print(f"  whole benchmark   {time.monotonic() - t_all:.0f} s so far")
        print(f"pack_rate db_mb={db_before / MB:.0f} pack_mb={pack_size / MB:.0f} wall_s={wall:.1f} mb_per_s={mbps:.1f} "
              f"writes_during={len(during)} write_p99_ms={percentile(during, 99) * 1000:.1f} "
              f"writer_errors={len(writer.errors)}", flush=True)
        ok = not writer.errors
    log(f"total {time.monotonic() - t_all:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
