"""The HA metrics scraped from real servers: one topology (a primary, a secondary, a read-only server, each
with two worker processes) walked through a failover — all up; the primary database dead (the read-only
server serves users itself, its data grows old); the read-only server promoted; the old primary back, fenced —
and in each state every server's /metrics asked several times over new connections (the kernel spreads them
over the workers), each answer parsed as Prometheus parses it and all of them alike.  Alert deliveries are
counted against a webhook receiver on 127.0.0.1 that takes some events and refuses others."""

from __future__ import annotations

import json
import os
import signal
import tempfile
import threading
import tomllib
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from safehold.config import CONFIG_NAME
from tests.integration.test_ha_failover import kill_app
from tests.support import Server, run_cli, running_topology, superuser_connect, wait_until

#: scrapes of one server per look: each over a new connection, so that both workers answer some
SCRAPES = 8
WORKERS = 2
Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


# --- a webhook receiver -------------------------------------------------------------------------------


class Receiver:
    """Plain HTTP on 127.0.0.1: answers 204 to an event, or 400 to one whose message says "refuse" (a
    refusal that is not retried: one failed delivery)."""

    def __init__(self) -> None:
        self.answered: list[tuple[str, int]] = []  # (message, status) of each request
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status = 400 if "refuse" in body["message"] else 204
                with receiver.lock:
                    receiver.answered.append((body["message"], status))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/hooks/safehold"

    def count(self, status: int) -> int:
        with self.lock:
            return sum(1 for _, s in self.answered if s == status)

    def got(self, marker: str) -> bool:
        with self.lock:
            return any(marker in m for m, _ in self.answered)

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.stop()


# --- scraping --------------------------------------------------------------------------------------------


def scrape(server: Server) -> Samples:
    """One /metrics answer (a new connection), as Prometheus parses it: family -> label set -> value."""
    with httpx.Client(verify=server.ssl_context(), timeout=15) as c:
        r = c.get(f"{server.url}/metrics")
    assert r.status_code == 200, r.text
    return {f.name: {tuple(sorted(s.labels.items())): s.value for s in f.samples}
            for f in text_string_to_metric_families(r.text)}


def one_of(samples: Samples, family: str, label: str) -> str:
    """The label value whose sample is 1 (every other one must be 0)."""
    values = {dict(k)[label]: v for k, v in samples[family].items()}
    current = [name for name, v in values.items() if v == 1]
    assert len(current) == 1 and all(v == 0 for name, v in values.items() if name not in current), values
    return current[0]


def single(samples: Samples, family: str) -> float | None:
    got = list(samples.get(family, {}).values())
    assert len(got) <= 1, got
    return got[0] if got else None


def ha(samples: Samples) -> dict[str, Any]:
    """The HA gauges of one answer; the lag and the data age by whether they are there (their values move)."""
    return {
        "role": one_of(samples, "safehold_ha_role", "role"), "mode": one_of(samples, "safehold_ha_mode", "mode"),
        "fenced": single(samples, "safehold_ha_fenced"), "generation": single(samples, "safehold_ha_generation"),
        "backlog": single(samples, "safehold_audit_spool_backlog"),
        "lag": single(samples, "safehold_replication_lag_bytes") is not None,
        "age": single(samples, "safehold_replication_data_age_seconds") is not None,
        "info": sorted(dict(k)["role"] for k in samples["safehold_server_info"]),
    }


def expect(server: Server, what: str, **expected: Any) -> Samples:
    """Wait until every one of SCRAPES answers of ``server`` shows ``expected`` (a value, or a test of it);
    returns the last answer."""
    last: list[Samples] = []

    def alike() -> bool:
        answers = [scrape(server) for _ in range(SCRAPES)]
        views = [ha(a) for a in answers]
        differ = [{k: v for k, v in view.items() if not (expected[k](v) if callable(expected[k]) else
                                                         v == expected[k])} for view in views]
        assert not any(differ), f"scrapes differing from what is expected: {differ}"
        last[:] = answers[-1:]
        return True

    wait_until(alike, timeout=90, interval=0.5, what=f"{server.data_dir.name}: {what}")
    return last[0]


def local(server: Server) -> dict[str, Any]:
    with httpx.Client(verify=server.ssl_context(), timeout=15) as c:
        r = c.get(f"{server.url}/api/v1/ha/local")
    assert r.status_code == 200, r.text
    return dict(r.json())


def deliveries(servers: list[Server], result: str) -> int:
    """The webhook's deliveries with ``result`` counted by ``servers`` together."""
    return int(sum(v for s in servers for k, v in scrape(s).get("safehold_alert_deliveries", {}).items()
                   if dict(k) == {"channel": "webhook", "result": result}))


# --- the topology's moves ------------------------------------------------------------------------------


def kill_database(server: Server) -> None:
    os.kill(int((server.data_dir / "pg" / "postmaster.pid").read_text().split()[0]), signal.SIGKILL)


def send_alerts_to(primary: Server, receiver: Receiver) -> None:
    secret = primary.data_dir.parent / "webhook-secret"
    secret.write_text("metrics-webhook-secret\n")
    secret.chmod(0o600)
    primary.cli("alerts", "set", "webhook", f"url={receiver.url}", "--secret-file", str(secret))


def log_event(primary: Server, message: str) -> None:
    """An HA event in the cluster's log, as the HA monitor logs them: the schedules-lease holder relays it."""
    server_id = tomllib.loads((primary.data_dir / CONFIG_NAME).read_text())["server"]["id"]
    conn = superuser_connect(primary)
    try:
        conn.execute("INSERT INTO ha_events (kind, subject, message, reported_by, args) "
                     "VALUES ('RaiseAlarm', 'metrics', %s, %s, %s::jsonb)",
                     (message, server_id, json.dumps(["MetricsTest", message])))
    finally:
        conn.close()


def relayed(primary: Server, receiver: Receiver, what: str) -> None:
    """Log an event until one reaches the receiver (the servers take up the new channel within seconds)."""
    def arrived() -> bool:
        marker = f"{what} {uuid.uuid4().hex[:8]}"
        log_event(primary, marker)
        wait_until(lambda: receiver.got(marker), timeout=5, what=marker)
        return True

    wait_until(arrived, timeout=60, interval=0, what=f"an event to be relayed to the webhook ({what})")


def test_ha_metrics_through_a_failover(server_root: Path, receiver: Receiver,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAFEHOLD_HTTP__WORKERS", str(WORKERS))  # every server started here: two workers
    with running_topology(Path(tempfile.mkdtemp(dir=server_root))) as (primary, secondary, readonly):
        for server in (primary, secondary, readonly):
            assert f"with {WORKERS} worker processes" in server.log(), server.log()
        generation = float(local(primary)["generation"])

        # 1. all up: the writers see their standby's lag, the read-only server its replica's and its data age
        common = {"fenced": 0, "generation": generation, "backlog": 0, "age": False}
        expect(primary, "all up", role="primary", mode="read-write", lag=True, info=["primary"], **common)
        expect(secondary, "all up", role="secondary", mode="read-write", lag=True, info=["secondary"], **common)
        samples = expect(readonly, "redirecting", role="readonly", mode="redirecting", fenced=0,
                         generation=generation, backlog=0, lag=True, age=True, info=["readonly"])
        assert samples["safehold_replication_lag_bytes"][()] >= 0
        assert "safehold_failover_input_up" not in samples  # no automatic failover configured: no input

        # alert deliveries: counted where they were made, summed over the workers, one per event and channel
        send_alerts_to(primary, receiver)
        relayed(primary, receiver, "metrics accepted")
        relayed(primary, receiver, "metrics refuse")
        writers = [primary, secondary]
        wait_until(lambda: (deliveries(writers, "delivered"), deliveries(writers, "failed"))
                   == (receiver.count(204), receiver.count(400)), timeout=30,
                   what="the deliveries counted to match what the receiver answered")
        assert receiver.count(204) >= 1 and receiver.count(400) >= 1

        # 2. the primary database dies: the read-only server serves users itself, and audits that it does (a
        # record in its spool until a primary database takes it); how old its data may be grows
        kill_database(primary)
        samples = expect(readonly, "emergency mode", role="readonly", mode="read-only-emergency", fenced=0,
                         generation=generation, backlog=lambda n: n >= 1, lag=True, age=True, info=["readonly"])
        age = samples["safehold_replication_data_age_seconds"][()]
        wait_until(lambda: scrape(readonly)["safehold_replication_data_age_seconds"][()] > age + 1, timeout=30,
                   what="the read-only server's data age to grow while the primary database is down")
        expect(primary, "its database down", role="primary", mode="read-write", lag=False, info=["primary"],
               **common)

        # 3. the read-only server is promoted: the acting primary, of a newer generation, a replica no more, its
        # spool replayed into its own database
        kill_app(primary)
        kill_app(secondary)
        run_cli("ha", "promote", "--data-dir", str(readonly.data_dir))
        expect(readonly, "promoted", role="primary", mode="read-write", fenced=0, generation=generation + 1,
               backlog=0, lag=False, age=False, info=["primary"])
        # it relays the cluster's events now, and counts what it delivers
        relayed(readonly, receiver, "metrics after the promotion")
        wait_until(lambda: deliveries([readonly], "delivered") >= 1, timeout=30,
                   what="the acting primary to count its deliveries")

        # 4. the old primary comes back fenced; its spool holds what it audited since (as /ha/local says)
        primary.start()
        report = local(primary)
        assert report["mode"] == "fenced", report
        expect(primary, "fenced", role="primary", mode="fenced", fenced=1, generation=float(report["generation"]),
               backlog=report["audit_backlog"]["pending"], lag=False, age=False, info=["primary"])
        # its own generation is its database's, older than the acting primary's that fenced it
        assert report["generation"] == generation and report["fence"]["generation"] == generation + 1, report
