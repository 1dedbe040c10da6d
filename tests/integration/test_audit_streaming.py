"""Audit streaming against real receivers on 127.0.0.1: a syslog receiver over TLS (RFC 5425, octet-counted
frames, its certificate from this test's own CA), an HTTPS webhook receiver that checks the batch signature,
and a JSON-lines file, all fed by one real Safehold server.

The stories: every stored record reaches every sink once and in order; a receiver that is stopped while
audited actions go on gets every one of them once it is back, none twice; a fail-closed sink that is down
makes the server refuse password retrievals (503, naming the sink), and they are accepted again once it is
back.  One server serves every test (module scope); each test starts from receivers that have caught up.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import shutil
import ssl
import tempfile
import threading
import tomllib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from safehold.audit.gate import CACHE_SECONDS
from safehold.config import CONFIG_NAME
from safehold.crypto.certs import write_tls_bundle
from tests.support import Server, app_connect, free_port, run_cli, seed_account, wait_until

WEBHOOK_SECRET = "audit-webhook-secret-for-tests"
Key = tuple[str, int]  # (server_id, seq)


def frames(buffer: bytearray) -> list[bytes]:
    """Take the whole octet-counted frames (``MSG-LEN SP MSG``) off the buffer (the receiver's own parser)."""
    out = []
    while (space := buffer.find(b" ")) > 0:
        length = int(buffer[:space])
        if len(buffer) < space + 1 + length:
            break
        out.append(bytes(buffer[space + 1:space + 1 + length]))
        del buffer[:space + 1 + length]
    return out


class SyslogTlsReceiver:
    """RFC 5425: TLS on a port of its own; each message is kept as (structured data, the JSON record)."""

    def __init__(self, tls: ssl.SSLContext) -> None:
        self.tls, self.port = tls, free_port()
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server: asyncio.Server | None = None
        self.start()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buffer = bytearray()
        try:
            while chunk := await reader.read(65536):
                buffer += chunk
                for message in frames(buffer):
                    header, _, body = message.partition(b"\xef\xbb\xbf")
                    self.messages.append((header.decode(), json.loads(body)))
        finally:
            writer.close()

    def start(self) -> None:
        async def listen() -> asyncio.Server:
            return await asyncio.start_server(self._client, "127.0.0.1", self.port, ssl=self.tls,
                                              reuse_address=True)

        self.server = asyncio.run_coroutine_threadsafe(listen(), self.loop).result(10)

    def stop(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            async def close() -> None:
                server.close()
                await server.wait_closed()

            asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)

    def close(self) -> None:
        self.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    def keys(self) -> list[Key]:
        return [(r["server_id"], r["seq"]) for _, r in self.messages]


class WebhookReceiver:
    """HTTPS; takes a signed batch with 204, refuses a badly signed one with 401."""

    def __init__(self, tls: ssl.SSLContext) -> None:
        self.tls, self.port = tls, free_port()
        self.batches: list[list[dict[str, Any]]] = []
        self.unsigned = 0
        self.httpd: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None
        self.start()

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                expected = "sha256=" + hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
                ok = hmac.compare_digest(expected, self.headers.get("X-Safehold-Signature", ""))
                if ok:
                    receiver.batches.append(json.loads(body)["records"])
                else:
                    receiver.unsigned += 1
                self.send_response(204 if ok else 401)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.httpd.daemon_threads = True
        self.httpd.socket = self.tls.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def stop(self) -> None:
        httpd, self.httpd = self.httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
            assert self.thread is not None
            self.thread.join(5)

    def keys(self) -> list[Key]:
        return [(r["server_id"], r["seq"]) for batch in self.batches for r in batch]


class Rig:
    def __init__(self, server: Server, syslog: SyslogTlsReceiver, webhook: WebhookReceiver, token: str,
                 account_id: str) -> None:
        self.server, self.syslog, self.webhook = server, syslog, webhook
        self.token, self.account_id = token, account_id

    def stored(self) -> list[Key]:
        """Every record the audit log holds, per chain in seq order."""
        with app_connect(self.server.data_dir) as conn:
            rows = conn.execute("SELECT server_id::text, seq FROM audit_log ORDER BY server_id, seq").fetchall()
        return [(str(sid), int(seq)) for sid, seq in rows]

    def file_keys(self) -> list[Key]:
        path = self.server.data_dir / "audit.jsonl"
        if not path.exists():
            return []
        return [(r["server_id"], r["seq"]) for r in map(json.loads, path.read_text().splitlines())]

    def retrieve(self) -> Any:
        with self.server.client(self.token) as c:
            return c.get(f"/accounts/{self.account_id}/password")

    def sinks(self) -> tuple[int, dict[str, dict[str, Any]]]:
        proc = run_cli("audit", "sinks", "--json", "--data-dir", str(self.server.data_dir), check=False)
        assert proc.returncode in (0, 1), proc.stderr
        return proc.returncode, {s["name"]: s for s in json.loads(proc.stdout)["sinks"]}

    def caught_up(self) -> list[Key]:
        """Wait until every sink has every stored record; returns them."""
        def done() -> list[Key] | None:
            stored = self.stored()
            got = [sorted(set(k)) for k in (self.syslog.keys(), self.webhook.keys(), self.file_keys())]
            return stored if all(g == stored for g in got) else None

        return wait_until(done, timeout=30, what="every sink to have every stored record")


def in_order_once(received: list[Key], stored: list[Key]) -> None:
    """Each stored record arrived exactly once, and the records of each chain in seq order."""
    assert sorted(received) == stored, "every record once"
    for chain in {sid for sid, _ in stored}:
        seqs = [seq for sid, seq in received if sid == chain]
        assert seqs == sorted(seqs), f"chain {chain} in seq order"


def started_before(server: Server, sink: str, seconds: float) -> bool:
    """Whether the sink's state was created more than ``seconds`` ago (by the database's clock)."""
    with app_connect(server.data_dir) as conn:
        row = conn.execute("SELECT now() - created_at > make_interval(secs => %s) FROM audit_sinks WHERE name = %s",
                           (seconds, sink)).fetchone()
    return bool(row and row[0])


@pytest.fixture(scope="module")
def rig(server_root: Path) -> Iterator[Rig]:
    base = Path(tempfile.mkdtemp(prefix="sh-audit-sinks-"))
    tls = write_tls_bundle(base / "tls", ["127.0.0.1", "localhost"], cluster_name="Audit receivers")
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(tls.cert, tls.key)
    syslog, webhook = SyslogTlsReceiver(server_tls), WebhookReceiver(server_tls)
    server = Server(Path(tempfile.mkdtemp(dir=server_root)) / "data")
    try:
        server.init()
        (server.data_dir / "secrets").mkdir(mode=0o700, exist_ok=True)
        (server.data_dir / "secrets" / "audit-webhook").write_text(WEBHOOK_SECRET + "\n")
        config = server.data_dir / CONFIG_NAME
        data = tomllib.loads(config.read_text())
        data.setdefault("ha", {})["check_interval"] = 0.5
        retry = {"retry_initial": 0.2, "retry_max": 1.0, "start": "beginning"}
        data["audit"] = {"interval": 0.2, "sinks": [
            {"name": "siem", "kind": "syslog", "host": "127.0.0.1", "port": syslog.port, "ca_file": str(tls.ca_cert),
             **retry},
            {"name": "hook", "kind": "webhook", "url": f"https://127.0.0.1:{webhook.port}/audit?token=t0ken",
             "ca_file": str(tls.ca_cert), "secret_file": "secrets/audit-webhook", "fail_closed": True,
             "max_lag": 50, **retry},
            {"name": "local", "kind": "file", "path": "audit.jsonl", **retry},
        ]}
        config.write_text(tomli_w.dumps(data))
        server.start()
        # the fail-closed sink refuses audited actions, a sign-in too, until its first delivery has started it, and
        # each worker process keeps what it read of the sink for up to a second (audit.gate.CACHE_SECONDS)
        wait_until(lambda: started_before(server, "hook", CACHE_SECONDS), timeout=30,
                   what="the fail-closed sink to start taking records, known to every worker")
        token = server.login()
        _, account_id = seed_account(server, token, "S3cret-Password-1")
        rig = Rig(server, syslog, webhook, token, account_id)
        rig.caught_up()
        yield rig
    finally:
        server.cleanup()
        syslog.close()
        webhook.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_every_record_reaches_every_sink_once_in_order(rig: Rig) -> None:
    for _ in range(5):
        assert rig.retrieve().status_code == 200
    stored = rig.caught_up()
    for received in (rig.syslog.keys(), rig.webhook.keys(), rig.file_keys()):
        in_order_once(received, stored)
    assert rig.webhook.unsigned == 0
    # a record as the sinks carry it: its chain MAC, server and seq, the fields; the syslog message says which
    sd, record = rig.syslog.messages[-1]
    assert record["action"] == "password_retrieved" and record["actor"] == "admin" and len(record["mac"]) == 64
    assert f'server="{record["server_id"]}" seq="{record["seq"]}" mac="{record["mac"]}"' in sd
    assert sd.startswith("<85>1 ")  # authpriv, notice
    with app_connect(rig.server.data_dir) as conn:
        mac = conn.execute("SELECT mac FROM audit_log WHERE server_id = %s AND seq = %s",
                           (record["server_id"], record["seq"])).fetchone()[0]
    assert bytes(mac).hex() == record["mac"]
    assert "S3cret-Password-1" not in json.dumps(rig.webhook.batches) + rig.server.log()


def test_a_syslog_receiver_outage_loses_nothing_and_repeats_nothing(rig: Rig) -> None:
    rig.caught_up()
    rig.syslog.stop()
    try:
        for _ in range(6):  # the syslog sink is not fail-closed: retrievals go on
            assert rig.retrieve().status_code == 200
        def siem_failed() -> dict[str, dict[str, Any]] | None:
            _, sinks = rig.sinks()
            return sinks if sinks["siem"]["last_error"] else None

        sinks = wait_until(siem_failed, timeout=30, what="the syslog sink to report its failed delivery")
        siem = sinks["siem"]
        assert "refused the connection" in siem["last_error"] and siem["lag"] > 0 and siem["failures"] >= 1
        assert siem["refusing"] is None and sinks["hook"]["last_error"] is None
        assert "token" not in sinks["hook"]["target"]  # the webhook URL's query is never shown
    finally:
        rig.syslog.start()
    stored = rig.caught_up()
    in_order_once(rig.syslog.keys(), stored)
    code, sinks = rig.sinks()
    assert code == 0 and sinks["siem"]["last_error"] is None and sinks["siem"]["lag"] == 0


def test_a_fail_closed_sink_that_is_down_refuses_retrievals_until_it_is_back(rig: Rig) -> None:
    rig.caught_up()
    rig.webhook.stop()
    try:
        # the first retrievals may still be accepted (recorded, delivered later); once a delivery failed, refused
        refused = wait_until(lambda: (r := rig.retrieve()).status_code == 503 and r, timeout=30,
                             what="a retrieval to be refused while the fail-closed sink is down")
        error = refused.json()["error"]
        assert error["code"] == "audit_unavailable"
        assert "'hook'" in error["message"] and "127.0.0.1" not in error["message"]
        assert "Error" not in error["message"] and "Exception" not in error["message"]
        # every worker process reads the sink's state for itself (at most a second old): soon all refuse
        wait_until(lambda: all(rig.retrieve().status_code == 503 for _ in range(6)), timeout=30,
                   what="every worker to refuse retrievals")
        code, sinks = rig.sinks()
        assert code == 1 and sinks["hook"]["refusing"] and "refused the connection" in sinks["hook"]["last_error"]
    finally:
        rig.webhook.start()
    wait_until(lambda: rig.retrieve().status_code == 200, timeout=30, what="retrievals to be accepted again")
    stored = rig.caught_up()
    in_order_once(rig.webhook.keys(), stored)
    in_order_once(rig.syslog.keys(), stored)
    in_order_once(rig.file_keys(), stored)
