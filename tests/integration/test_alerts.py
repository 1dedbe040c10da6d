"""Alert channels against real receivers on 127.0.0.1: an SMTP server with STARTTLS and AUTH
(aiosmtpd), syslog listeners (UDP, TCP with octet counting, a unix socket), an SNMPv2c notification
receiver (pysnmp), an HTTPS webhook receiver that checks the HMAC, and an event script that writes
down its arguments.  Then a real Safehold server with every channel configured."""

from __future__ import annotations

import asyncio
import datetime as dt
import email
import email.policy
import hashlib
import hmac
import json
import logging
import os
import re
import shutil
import socket
import socketserver
import ssl
import tempfile
import threading
import time
import tomllib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from safehold.alerts.base import AlertError
from safehold.alerts.dispatch import Dispatcher, send_test
from safehold.alerts.events import AlertEvent
from safehold.alerts.script import run_as
from safehold.config import CONFIG_NAME, Settings
from safehold.crypto.certs import write_tls_bundle
from tests.support import (
    Server,
    free_port,
    make_readonly,
    pg_dump,
    run_cli,
    superuser_connect,
    wait_until,
)

SMTP_USER = "alerts"
SMTP_PASSWORD = "smtp-Pa55word-not-in-logs"
WEBHOOK_SECRET = "webhook-s3cret-not-in-logs"
COMMUNITY = "community-not-in-logs"
SECRETS = (SMTP_PASSWORD, WEBHOOK_SECRET, COMMUNITY)
BASE_OID = "1.3.6.1.4.1.32473.1"
SERVER_ID = "3f2b8c1e-9a4d-4e6f-8b7a-1c2d3e4f5a6b"

# one event of each kind, as the HA monitor and the failover code log them (the seed's arguments)
EVENTS: list[tuple[str, str, str, tuple[str, ...]]] = [
    ("HAAlive", "ro-1", "HA status of ro-1 is Alive", ()),
    ("HAFailed", "ro-1", "HA status of ro-1 is Failed", ()),
    ("ReplicationAlive", "ro-1", "replication status of ro-1 is Alive", ()),
    ("ReplicationFailed", "ro-1", "replication status of ro-1 is Failed", ()),
    ("ServerActive", "vault-2", "server vault-2 is active", ()),
    ("ServerInactive", "vault-2", "server vault-2 is inactive", ()),
    ("StandbyOffline", "ro-1", "standby ro-1 is offline", ("ro-1", "vault-1")),
    ("Failover", "ro-1", "ro-1 took over from vault-1", ("ro-1", "vault-1")),
    ("ManualSwitch", "vault-2", "vault-2 is the primary now, vault-1 its standby", ("vault-2", "vault-1")),
    ("RaiseAlarm", "sync", "no synchronous replica for 30 s", ("SyncDegraded", "no synchronous replica for 30 s")),
    ("ClearAlarm", "sync", "synchronous replication is back", ("synchronous replication is back",)),
    ("Fenced", "vault-1", "vault-1 was superseded by ro-1", ()),
]


# --- receivers ----------------------------------------------------------------------------------


class SmtpReceiver:
    """aiosmtpd with STARTTLS required and AUTH required."""

    def __init__(self, tls: ssl.SSLContext) -> None:
        self.messages: list[dict[str, Any]] = []
        self.port = free_port()

        receiver = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
                receiver.messages.append({"content": envelope.content.decode(errors="replace"),
                                          "to": list(envelope.rcpt_tos), "tls": session.ssl is not None,
                                          "authenticated": session.authenticated})
                return "250 OK"

        def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
            ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
                SMTP_USER.encode(), SMTP_PASSWORD.encode())
            return AuthResult(success=ok, handled=False)

        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port, tls_context=tls,
                                     require_starttls=True, auth_required=True, authenticator=authenticate)
        self.controller.start()

    def stop(self) -> None:
        self.controller.stop()


class SyslogReceiver:
    """Syslog over UDP, TCP (octet counting) and a unix datagram socket."""

    def __init__(self, unix_path: Path) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.unix_path = unix_path
        self.unix = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.unix.bind(str(unix_path))
        os.chmod(unix_path, 0o666)
        receiver = self

        class Frames(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                while True:
                    length = b""
                    while (c := self.rfile.read(1)) not in (b" ", b""):
                        length += c
                    if not length:
                        return
                    receiver._add("tcp", self.rfile.read(int(length)))

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.tcp = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Frames)
        self.tcp.daemon_threads = True
        self.stopping = False
        self.threads = [threading.Thread(target=self._datagrams, args=("udp", self.udp), daemon=True),
                        threading.Thread(target=self._datagrams, args=("unix", self.unix), daemon=True),
                        threading.Thread(target=self.tcp.serve_forever, args=(0.05,), daemon=True)]
        for t in self.threads:
            t.start()

    @property
    def udp_port(self) -> int:
        return int(self.udp.getsockname()[1])

    @property
    def tcp_port(self) -> int:
        return int(self.tcp.server_address[1])

    def _add(self, transport: str, data: bytes) -> None:
        with self.lock:
            self.messages.append((transport, data))

    def _datagrams(self, transport: str, sock: socket.socket) -> None:
        sock.settimeout(0.05)
        while not self.stopping:
            try:
                self._add(transport, sock.recv(65535))
            except TimeoutError:
                continue
            except OSError:
                return

    def stop(self) -> None:
        self.stopping = True
        self.tcp.shutdown()
        self.tcp.server_close()
        for t in self.threads:
            t.join(5)
        self.udp.close()
        self.unix.close()


class SnmpReceiver:
    """pysnmp's SNMPv2c notification receiver, in an asyncio loop of its own."""

    def __init__(self) -> None:
        from pysnmp.carrier.asyncio.dgram import udp
        from pysnmp.entity import config, engine
        from pysnmp.entity.rfc3413 import ntfrcv

        self.port = free_port()
        self.notifications: list[list[tuple[str, str]]] = []
        ready = threading.Event()
        self.loop = asyncio.new_event_loop()

        def serve() -> None:
            asyncio.set_event_loop(self.loop)
            self.engine = engine.SnmpEngine()
            config.add_transport(self.engine, udp.DOMAIN_NAME,
                                 udp.UdpTransport().open_server_mode(("127.0.0.1", self.port)))
            config.add_v1_system(self.engine, "safehold-area", COMMUNITY)

            def received(snmp_engine: Any, ref: Any, context_engine: Any, context: Any, binds: Any, ctx: Any) -> None:
                self.notifications.append([(str(oid), value.prettyPrint()) for oid, value in binds])

            ntfrcv.NotificationReceiver(self.engine, received)
            ready.set()
            self.loop.run_forever()
            pending = asyncio.all_tasks(self.loop)
            for task in pending:
                task.cancel()
            self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self.loop.close()

        self.thread = threading.Thread(target=serve, daemon=True)
        self.thread.start()
        assert ready.wait(10)

    def stop(self) -> None:
        def close() -> None:
            self.engine.close_dispatcher()
            self.loop.stop()

        self.loop.call_soon_threadsafe(close)
        self.thread.join(5)


class WebhookReceiver:
    """HTTPS; answers 204 to a request whose X-Safehold-Signature is right, 401 otherwise."""

    def __init__(self, tls: ssl.SSLContext) -> None:
        self.requests: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                expected = "sha256=" + hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
                ok = hmac.compare_digest(expected, self.headers.get("X-Safehold-Signature", ""))
                receiver.requests.append({"path": self.path, "body": json.loads(body), "signed": ok,
                                          "timestamp": self.headers.get("X-Safehold-Timestamp")})
                self.send_response(204 if ok else 401)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.httpd.server_address[1]}/hooks/safehold"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


def write_script(directory: Path, body: str, mode: int = 0o755) -> Path:
    """The operator's script, owned by the user it runs as (the service user when we are root)."""
    owner = run_as()
    path = directory / f"script-{uuid.uuid4().hex[:8]}"
    path.write_text(body)
    os.chown(path, owner.uid, -1)
    path.chmod(mode)
    return path


@dataclass
class Receivers:
    base: Path
    ca: Path
    smtp: SmtpReceiver
    syslog: SyslogReceiver
    snmp: SnmpReceiver
    webhook: WebhookReceiver
    script: Path
    script_out: Path
    secrets: dict[str, Path] = field(default_factory=dict)

    def script_runs(self) -> list[list[str]]:
        """Each run of the event script: its argv after the script's path."""
        runs = []
        for f in sorted(self.script_out.iterdir(), key=lambda p: p.stat().st_mtime_ns):
            runs.append(f.read_bytes().decode().split("\0")[:-1])
        return runs

    def clear(self) -> None:
        self.smtp.messages.clear()
        with self.syslog.lock:
            self.syslog.messages.clear()
        self.snmp.notifications.clear()
        self.webhook.requests.clear()
        for f in self.script_out.iterdir():
            f.unlink()

    def alerts(self, *, syslog: str = "tcp", secrets_dir: Path | None = None) -> dict[str, Any]:
        """An [alerts] section sending to these receivers."""
        sdir = secrets_dir or self.base / "secrets"
        sdir.mkdir(exist_ok=True)
        for name, value in (("smtp_password", SMTP_PASSWORD), ("webhook_secret", WEBHOOK_SECRET),
                            ("snmp_community", COMMUNITY)):
            (sdir / name).write_text(value + "\n")
            (sdir / name).chmod(0o600)
        syslog_section: dict[str, Any] = {"transport": syslog, "facility": "local3"}
        if syslog == "unix":
            syslog_section["socket"] = str(self.syslog.unix_path)
        else:
            syslog_section["port"] = self.syslog.udp_port if syslog == "udp" else self.syslog.tcp_port
        return {
            "email": {"host": "127.0.0.1", "port": self.smtp.port, "username": SMTP_USER,
                      "password_file": str(sdir / "smtp_password"), "sender": "safehold@example.com",
                      "to": ["ops@example.com"], "ca_file": str(self.ca)},
            "syslog": syslog_section,
            "snmp": {"host": "127.0.0.1", "port": self.snmp.port, "community_file": str(sdir / "snmp_community")},
            "webhook": {"url": self.webhook.url, "secret_file": str(sdir / "webhook_secret"), "ca_file": str(self.ca)},
            "script": {"path": str(self.script), "timeout": 10},
            "retry": {"attempts": 3, "initial_delay": 0.2},
        }

    def settings(self, **kwargs: Any) -> Settings:
        return settings_with(self.base, self.alerts(**kwargs))


def settings_with(data_dir: Path, alerts: dict[str, Any]) -> Settings:
    return Settings.model_validate({"server": {"id": SERVER_ID, "name": "vault-1"}, "alerts": alerts,
                                    "data_dir": data_dir})


@pytest.fixture(scope="module")
def receivers() -> Iterator[Receivers]:
    # a directory the service user can reach (the script lives there and writes its arguments there)
    base = Path(tempfile.mkdtemp(prefix="sh-alerts-"))
    base.chmod(0o755)
    tls = write_tls_bundle(base / "tls", ["127.0.0.1", "localhost"], cluster_name="Alert receivers")
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(tls.cert, tls.key)
    owner = run_as()
    out = base / "script-out"
    out.mkdir()
    os.chown(out, owner.uid, -1)
    script = write_script(base, f'#!/bin/sh\nf=$(mktemp {out}/run.XXXXXXXX)\nprintf "%s\\0" "$@" > "$f"\n')
    started: list[Any] = []
    try:
        started.append(SmtpReceiver(server_tls))
        started.append(SyslogReceiver(base / "syslog.sock"))
        started.append(SnmpReceiver())
        started.append(WebhookReceiver(server_tls))
        yield Receivers(base, tls.ca_cert, *started, script=script, script_out=out)
    finally:
        for r in reversed(started):
            r.stop()
        shutil.rmtree(base, ignore_errors=True)


def alert_event(kind: str, subject: str, message: str, args: tuple[str, ...], i: int) -> AlertEvent:
    return AlertEvent(kind=kind, subject=subject, message=message, at=dt.datetime.now(dt.UTC), args=args,
                      server_id=SERVER_ID, server_name="vault-1", cluster_id="c-1", id=1000 + i)


def subject_of(mail: dict[str, Any]) -> str:
    return str(email.message_from_string(mail["content"], policy=email.policy.default)["Subject"])


def no_secret_in(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


def safehold_logs(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("safehold"))


# --- every channel, every event -------------------------------------------------------------------


@pytest.mark.parametrize("syslog", ["udp", "tcp", "unix"])
def test_each_receiver_gets_one_message_per_event(receivers: Receivers, syslog: str,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    receivers.clear()
    d = Dispatcher(receivers.settings(syslog=syslog))
    assert d.channels() == ["email", "syslog", "snmp", "webhook", "script"]
    d.start()
    try:
        for i, e in enumerate(EVENTS):
            d.publish(alert_event(*e, i))
        assert d.wait_idle(60), d.status()
    finally:
        d.stop(5)
    n = len(EVENTS)
    status = d.status()
    assert all(s["delivered"] == n and s["failed"] == 0 for s in status.values()), status
    wait_until(lambda: len(receivers.snmp.notifications) == n and len(receivers.syslog.messages) == n,
               timeout=10, what="the datagrams")

    # email: over STARTTLS, logged in; the event name and the message (with the servers) in the subject
    mails = receivers.smtp.messages
    assert len(mails) == n and all(m["tls"] and m["authenticated"] for m in mails)
    for (kind, _subject, message, args), mail in zip(EVENTS, mails, strict=True):
        assert subject_of(mail) == f"[Safehold] {kind}: {message}"
        assert f"Event:      {kind}" in mail["content"] and "vault-1" in mail["content"]
        if args:
            assert f"Arguments:  {' '.join(args)}" in mail["content"]

    # syslog: RFC 5424, MSGID = the event name, one arg="" per argument
    lines = receivers.syslog.messages
    assert {t for t, _ in lines} == {syslog}
    by_kind = {line.split(b" ")[5].decode(): line for _, line in lines}  # MSGID (TCP: one connection each,
    assert len(by_kind) == n                                             # so the order may vary)
    for kind, _subject, message, args in EVENTS:
        line = by_kind[kind]
        assert re.match(rb"<15[2-8]>1 ", line)  # local3: PRI 152-158, version 1
        assert f" {kind} [safehold@32473 event=\"{kind}\"".encode() in line
        assert all(f'arg="{a}"'.encode() in line for a in args)
        assert line.endswith(message.encode())

    # SNMP: the notification OID of the kind, the event name, its arguments, the reporting server
    for (kind, _subject, message, args), binds in zip(EVENTS, receivers.snmp.notifications, strict=True):
        b = dict(binds)
        assert b["1.3.6.1.6.3.1.1.4.1.0"].startswith(f"{BASE_OID}.0.")
        assert b[f"{BASE_OID}.1.1.0"] == kind and b[f"{BASE_OID}.1.3.0"] == message
        assert [b[f"{BASE_OID}.1.2.{i}"] for i in range(1, len(args) + 1)] == list(args)
        assert b[f"{BASE_OID}.1.4.0"] == "vault-1" and b[f"{BASE_OID}.1.5.0"] == "c-1"
    assert len({dict(b)["1.3.6.1.6.3.1.1.4.1.0"] for b in receivers.snmp.notifications}) == n

    # webhook: signed, the event and its arguments in the JSON body
    hooks = receivers.webhook.requests
    assert len(hooks) == n and all(h["signed"] and h["path"] == "/hooks/safehold" for h in hooks)
    assert [(h["body"]["event"], tuple(h["body"]["args"])) for h in hooks] == [(e[0], e[3]) for e in EVENTS]
    assert all(h["body"]["sent_at"] == int(h["timestamp"]) for h in hooks)

    # the script: exactly the seed's arguments
    assert receivers.script_runs() == [alert_event(*e, i).script_args() for i, e in enumerate(EVENTS)]
    assert receivers.script_runs()[7] == ["Failover", "ro-1", "vault-1"]
    assert receivers.script_runs()[6] == ["StandbyOffline", "ro-1", "vault-1"]
    assert receivers.script_runs()[9] == ["RaiseAlarm", "SyncDegraded", "no synchronous replica for 30 s"]
    assert receivers.script_runs()[0] == ["HAAlive", "ro-1"]

    no_secret_in(safehold_logs(caplog) + repr(status))


def test_send_test_on_every_channel(receivers: Receivers) -> None:
    receivers.clear()
    s = receivers.settings(syslog="udp")
    results = {name: send_test(s, name) for name in s.alerts.configured()}
    assert results["email"] == f"email sent to ops@example.com via 127.0.0.1:{receivers.smtp.port}"
    assert results["snmp"].startswith("SNMP trap sent to")
    assert results["webhook"].startswith("webhook delivered to https://127.0.0.1:")
    assert results["script"].endswith("(exit code 0, " + results["script"].split(", ")[-1])
    wait_until(lambda: receivers.snmp.notifications and receivers.syslog.messages, timeout=5, what="the test alerts")
    assert receivers.script_runs() == [["Test", "vault-1"]]
    assert subject_of(receivers.smtp.messages[0]) == "[Safehold] Test: test alert from Safehold server vault-1: this channel works"
    assert dict(receivers.snmp.notifications[0])["1.3.6.1.6.3.1.1.4.1.0"] == f"{BASE_OID}.0.99"


def test_snmp_inform_is_acknowledged_and_a_wrong_community_is_not(receivers: Receivers) -> None:
    alerts = receivers.alerts()
    alerts["snmp"] = {**alerts["snmp"], "inform": True, "timeout": 1}
    assert send_test(settings_with(receivers.base, alerts), "snmp").startswith("SNMP inform acknowledged by")
    wrong = receivers.base / "wrong-community"
    wrong.write_text("not-the-community")
    alerts["snmp"] = {**alerts["snmp"], "community_file": str(wrong), "retries": 0, "timeout": 0.5}
    with pytest.raises(AlertError, match="did not acknowledge the inform"):
        send_test(settings_with(receivers.base, alerts), "snmp")


# --- failures: clear, secret-free, and no effect on the other channels ------------------------------


def closed_port_alerts(receivers: Receivers) -> dict[str, Any]:
    dead = free_port()  # nothing listens there (TCP and UDP)
    a = receivers.alerts()
    a["email"] = {**a["email"], "port": dead}
    a["syslog"] = {"transport": "udp", "port": dead}
    a["snmp"] = {**a["snmp"], "port": dead}
    a["webhook"] = {**a["webhook"], "url": f"https://127.0.0.1:{dead}/hooks/T0KEN"}
    return a


@pytest.mark.parametrize("channel", ["email", "syslog", "snmp", "webhook"])
def test_a_closed_port_gives_a_clear_error(receivers: Receivers, channel: str) -> None:
    start = time.monotonic()
    with pytest.raises(AlertError) as exc:
        send_test(settings_with(receivers.base, closed_port_alerts(receivers)), channel)
    assert "refused the connection (nothing listens there?)" in exc.value.message
    assert exc.value.message.startswith(f"{channel}: ")
    assert "T0KEN" not in str(exc.value)
    no_secret_in(str(exc.value))
    assert time.monotonic() - start < 5


def test_syslog_tcp_closed_port(receivers: Receivers) -> None:
    a = receivers.alerts(syslog="tcp")
    a["syslog"]["port"] = free_port()
    with pytest.raises(AlertError, match=r"syslog: tcp://127\.0\.0\.1:\d+ refused the connection"):
        send_test(settings_with(receivers.base, a), "syslog")


def test_a_dead_channel_does_not_delay_the_others(receivers: Receivers) -> None:
    receivers.clear()
    a = receivers.alerts(syslog="tcp")
    a["email"] = closed_port_alerts(receivers)["email"]
    a["retry"] = {"attempts": 5, "initial_delay": 2.0}  # the dead channel keeps retrying for 30 s
    d = Dispatcher(settings_with(receivers.base, a))
    d.start()
    try:
        start = time.monotonic()
        for i, e in enumerate(EVENTS[:3]):
            d.publish(alert_event(*e, i))
        assert time.monotonic() - start < 0.2  # publish only queues
        wait_until(lambda: (len(receivers.webhook.requests) == 3 and len(receivers.syslog.messages) == 3
                            and len(receivers.snmp.notifications) == 3 and len(receivers.script_runs()) == 3),
                   timeout=10, what="the live channels")
        assert time.monotonic() - start < 10
        st = d.status()
        assert st["email"]["delivered"] == 0 and st["email"]["retries"] >= 1
        assert st["webhook"]["delivered"] == 3
    finally:
        d.stop(1)
    assert "refused the connection" in (d.status()["email"]["last_error"] or "")


def test_wrong_credentials_and_untrusted_certificates(receivers: Receivers) -> None:
    a = receivers.alerts()
    wrong = receivers.base / "wrong-password"
    wrong.write_text("not-the-password")
    a["email"] = {**a["email"], "password_file": str(wrong)}
    with pytest.raises(AlertError, match=r"refused the login of alerts \(535\)") as exc:
        send_test(settings_with(receivers.base, a), "email")
    assert "not-the-password" not in str(exc.value)

    a = receivers.alerts()
    a["email"] = {k: v for k, v in a["email"].items() if k != "ca_file"}  # the system CAs do not know ours
    with pytest.raises(AlertError, match="certificate of 127.0.0.1:.* is not trusted"):
        send_test(settings_with(receivers.base, a), "email")
    a["webhook"] = {k: v for k, v in a["webhook"].items() if k != "ca_file"}
    with pytest.raises(AlertError, match=r"webhook: the certificate of https://127.0.0.1:\d+ is not trusted"):
        send_test(settings_with(receivers.base, a), "webhook")

    a = receivers.alerts()
    (receivers.base / "wrong-secret").write_text("another-secret")
    a["webhook"] = {**a["webhook"], "secret_file": str(receivers.base / "wrong-secret")}
    with pytest.raises(AlertError, match=r"answered HTTP 401"):
        send_test(settings_with(receivers.base, a), "webhook")

    a["webhook"] = {**a["webhook"], "secret_file": str(receivers.base / "missing-secret")}
    with pytest.raises(AlertError, match="the webhook secret file .*missing-secret is missing"):
        send_test(settings_with(receivers.base, a), "webhook")


@pytest.mark.parametrize("mode", [0o775, 0o757])
def test_a_group_or_other_writable_script_is_refused(receivers: Receivers, mode: int) -> None:
    receivers.clear()
    bad = write_script(receivers.base, f"#!/bin/sh\ntouch {receivers.script_out}/ran\n", mode=mode)
    a = receivers.alerts()
    a["script"] = {"path": str(bad)}
    with pytest.raises(AlertError, match=r"is writable by group or others \(mode 0\d+\); refused") as exc:
        send_test(settings_with(receivers.base, a), "script")
    assert exc.value.hint == f"chmod go-w {bad}"
    # and again before each run: the dispatcher refuses it too, without running it
    d = Dispatcher(settings_with(receivers.base, {"script": {"path": str(bad)}}))
    d.start()
    d.publish(alert_event(*EVENTS[7], 7))
    assert d.wait_idle(10)
    d.stop(1)
    assert "writable by group or others" in (d.status()["script"]["last_error"] or "")
    assert not (receivers.script_out / "ran").exists()


def test_a_root_owned_script_is_refused_when_running_as_root(receivers: Receivers) -> None:
    owner = run_as()
    if owner.drop is None:
        pytest.skip("only as root: the script must then belong to the service user")
    p = receivers.base / "root-owned"
    p.write_text("#!/bin/sh\nexit 0\n")
    p.chmod(0o755)
    with pytest.raises(AlertError, match=f"is owned by root, not by {owner.name} \\(the user it runs as\\)"):
        send_test(settings_with(receivers.base, {"script": {"path": str(p)}}), "script")


def test_a_slow_script_is_killed_after_its_time_limit(receivers: Receivers) -> None:
    slow = write_script(receivers.base, "#!/bin/sh\nsleep 30\n")
    start = time.monotonic()
    with pytest.raises(AlertError, match=r"ran longer than 0.5 s and was killed"):
        send_test(settings_with(receivers.base, {"script": {"path": str(slow), "timeout": 0.5}}), "script")
    assert time.monotonic() - start < 5


# --- a real Safehold server -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def alerting_server(receivers: Receivers, server_root: Path) -> Iterator[Server]:
    """A server whose safehold.toml sends alerts to the receivers (secrets in its data directory)."""
    server = Server(Path(tempfile.mkdtemp(dir=server_root)) / "data")
    try:
        server.init()
        config = server.data_dir / CONFIG_NAME
        data = tomllib.loads(config.read_text())
        alerts = receivers.alerts(syslog="udp", secrets_dir=server.data_dir / "secrets")
        for section, key in (("email", "password_file"), ("webhook", "secret_file"), ("snmp", "community_file")):
            alerts[section][key] = str(Path(alerts[section][key]).relative_to(server.data_dir))  # data-dir relative
        data["alerts"] = {**data.get("alerts", {}), **alerts}
        data.setdefault("ha", {})["check_interval"] = 0.5
        config.write_text(tomli_w.dumps(data))
        server.start()
        yield server
    finally:
        server.cleanup()


def test_api_lists_channels_and_sends_test_alerts(receivers: Receivers, alerting_server: Server) -> None:
    receivers.clear()
    token = alerting_server.login()
    with alerting_server.client(token) as c:
        r = c.get("/ha/alerts")
        assert r.status_code == 200, r.text
        names = [ch["name"] for ch in r.json()["channels"]]
        assert names == ["email", "syslog", "snmp", "webhook", "script"]
        no_secret_in(r.text)
        assert "/hooks" not in r.text

        r = c.post("/ha/alerts/test", json={"channel": "webhook"})
        assert r.status_code == 200, r.text
        assert r.json()["result"].startswith("webhook delivered to")
        assert receivers.webhook.requests[-1]["body"]["event"] == "Test"
        audited = c.get("/audit", params={"action": "alert_tested"}).json()["items"]
        assert any(r["target_name"] == "webhook" and r["result"] == "success" for r in audited), audited

        r = c.post("/ha/alerts/test", json={"channel": "pager"})
        assert r.status_code == 422

    with alerting_server.client() as anonymous:
        assert anonymous.get("/ha/alerts").status_code == 401


def test_api_reports_a_failing_channel_with_502(receivers: Receivers, alerting_server: Server) -> None:
    # the SMTP receiver refuses a wrong password: store a wrong one for a moment (write-only, never shown)
    with alerting_server.client(alerting_server.login()) as c:
        r = c.put("/ha/alerts/email", json={"secret": "not-the-password"})
        assert r.status_code == 200, r.text
        assert "not-the-password" not in r.text
        try:
            r = c.post("/ha/alerts/test", json={"channel": "email"})
        finally:
            assert c.put("/ha/alerts/email", json={"secret": SMTP_PASSWORD}).status_code == 200
    assert r.status_code == 502, r.text
    err = r.json()["error"]
    assert err["code"] == "alert_channel_failed" and "refused the login of alerts" in err["message"]
    assert "not-the-password" not in r.text


def test_toml_sections_are_imported_once_and_the_secrets_are_sealed(receivers: Receivers,
                                                                     alerting_server: Server) -> None:
    """The [alerts] section of safehold.toml went into the database at the first start (said in the log);
    from then on the database wins: editing the file changes nothing; no secret is in clear in the
    database or in an API response."""
    assert "imported the [alerts] section of safehold.toml into the database" in alerting_server.log()
    with alerting_server.client(alerting_server.login()) as c:
        body = c.get("/ha/alerts").json()
    assert body["source"] == "database" and body["version"] >= 1, body
    assert {ch["name"]: ch["settings"].get("secret") for ch in body["channels"]} == {
        "email": "set", "syslog": None, "snmp": "set", "webhook": "set", "script": None}
    no_secret_in(json.dumps(body))
    assert "T0KEN" not in json.dumps(body) and "/hooks" not in json.dumps(body)
    dump = pg_dump(alerting_server)
    assert b"cluster_settings" in dump
    for secret in SECRETS:
        assert secret.encode() not in dump
    assert receivers.webhook.url.encode() not in dump  # the URL (its path may hold a token) is sealed too
    # the file's secrets are no longer read: emptying one changes nothing
    pw = alerting_server.data_dir / "secrets" / "smtp_password"
    pw.write_text("")
    try:
        with alerting_server.client(alerting_server.login()) as c:
            r = c.post("/ha/alerts/test", json={"channel": "email"})
        assert r.status_code == 200, r.text
    finally:
        pw.write_text(SMTP_PASSWORD)


def test_cli_show_set_test_and_remove(receivers: Receivers, alerting_server: Server) -> None:
    receivers.clear()
    d = str(alerting_server.data_dir)
    shown = run_cli("alerts", "show", "--data-dir", d).stdout
    for name in ("email", "syslog", "snmp", "webhook", "script"):
        assert name in shown
    assert "cluster-wide (database)" in shown
    assert "T0KEN" not in shown and "/hooks" not in shown
    no_secret_in(shown)

    dead = free_port()
    r = run_cli("alerts", "set", "webhook", f"url=https://127.0.0.1:{dead}/hooks/T0KEN", "--data-dir", d)
    assert "saved for the whole cluster" in r.stdout, r.stdout + r.stderr
    try:
        start = time.monotonic()
        r = run_cli("alerts", "test", "--data-dir", d, "--channel", "all", check=False)
        assert r.returncode == 1, r.stdout + r.stderr
        assert time.monotonic() - start < 30
        for name in ("email", "syslog", "snmp", "script"):
            assert f"✓ {name}: " in r.stdout
        assert "✗ webhook: webhook: https://127.0.0.1:" in r.stdout and "refused the connection" in r.stdout
        assert "T0KEN" not in r.stdout
        no_secret_in(r.stdout + r.stderr)
    finally:
        run_cli("alerts", "set", "webhook", f"url={receivers.webhook.url}", "--data-dir", d)
    ok = run_cli("alerts", "test", "--data-dir", d, "--channel", "webhook")
    assert ok.stdout.startswith("✓ webhook: webhook delivered to")

    # a saved password never goes to a new SMTP server unless it is given again
    r = run_cli("alerts", "set", "email", f"port={dead}", "--data-dir", d, check=False)
    assert r.returncode == 1 and "is never sent to a new destination" in r.stderr, r.stdout + r.stderr
    r = run_cli("alerts", "set", "syslog", "facility=local9", "--data-dir", d, check=False)
    assert r.returncode == 1 and "syslog.facility: must be one of" in r.stderr, r.stderr
    r = run_cli("alerts", "remove", "script", "--data-dir", d)
    try:
        r = run_cli("alerts", "test", "--data-dir", d, "--channel", "script", check=False)
        assert r.returncode == 1 and "the script alert channel is not configured" in r.stdout
    finally:
        run_cli("alerts", "set", "script", f"path={receivers.script}", "timeout=10", "--data-dir", d)
    with alerting_server.client(alerting_server.login()) as c:
        audited = c.get("/audit", params={"action": "settings_changed"}).json()["items"]
    assert any(a["actor"].startswith("cli") and a["target_name"] == "alerts" for a in audited), audited


def test_end_to_end_an_ha_event_reaches_every_receiver_once(receivers: Receivers, alerting_server: Server) -> None:
    """An event logged in ha_events (here by hand: wire-independent) is relayed by the schedules-lease
    holder's ``relay_once`` to every channel, once."""
    conn = superuser_connect(alerting_server)
    try:
        def cursor() -> Any:
            row = conn.execute("SELECT value FROM settings WHERE key = 'alerts.cursor'").fetchone()
            return row is not None

        # the relay's first cycle starts at the newest event: log ours after it
        wait_until(cursor, timeout=20, what="the alert relay's cursor (is relay_once wired into the server?)")
        receivers.clear()
        marker = f"e2e-{uuid.uuid4().hex[:8]}"
        server_id = tomllib.loads((alerting_server.data_dir / CONFIG_NAME).read_text())["server"]["id"]
        conn.execute("INSERT INTO ha_events (kind, subject, message, reported_by, args) "
                     "VALUES ('Failover', 'ro-1', %s, %s, %s::jsonb)",
                     (f"ro-1 took over from vault-1 ({marker})", server_id, json.dumps(["ro-1", "vault-1"])))
    finally:
        conn.close()

    def received() -> dict[str, int]:
        return {
            "email": sum(marker in m["content"] for m in receivers.smtp.messages),
            "syslog": sum(marker.encode() in m for _, m in receivers.syslog.messages),
            "snmp": sum(any(marker in v for _, v in n) for n in receivers.snmp.notifications),
            "webhook": sum(marker in h["body"]["message"] for h in receivers.webhook.requests),
            "script": sum(run == ["Failover", "ro-1", "vault-1"] for run in receivers.script_runs()),
        }

    wait_until(lambda: all(v >= 1 for v in received().values()), timeout=30, what="the event at every receiver")
    # a few more relay cycles: still exactly one each
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        assert all(v == 1 for v in received().values()), received()
        time.sleep(0.2)
    assert all(h["signed"] for h in receivers.webhook.requests)
    assert subject_of(receivers.smtp.messages[-1]) == f"[Safehold] Failover: ro-1 took over from vault-1 ({marker})"
    no_secret_in(alerting_server.log())


def test_real_transitions_reach_the_receivers_once_each(receivers: Receivers, alerting_server: Server,
                                                         server_root: Path) -> None:
    """Not logged by hand: a read-only server joins the alerting primary, then goes away. Each transition the
    monitor sees goes out once, with the event name and the servers involved; the script gets the seed's
    arguments (StandbyOffline <standby> <active>)."""
    readonly = make_readonly(alerting_server, Path(tempfile.mkdtemp(dir=server_root)) / "ro-alerts",
                             name="ro-alerts")
    try:
        readonly.start()

        def kinds() -> list[str]:
            return [h["body"]["event"] for h in receivers.webhook.requests]

        # its arrival first (HA status Alive), so that its departure is a transition
        wait_until(lambda: {"HAAlive", "ServerActive"} <= set(kinds()), timeout=60,
                   what="the read-only server's arrival to be alerted")
        receivers.clear()
        readonly.stop()
        wanted = {"HAFailed", "ServerInactive", "StandbyOffline"}
        try:
            wait_until(lambda: wanted <= set(kinds()), timeout=60, what=f"{wanted} at the webhook")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; got {kinds()}\n{alerting_server.log()[-3000:]}") from None
        assert receivers.webhook.requests
        deadline = time.monotonic() + 3  # a few more monitor cycles: nothing is sent twice
        while time.monotonic() < deadline:
            got = kinds()
            assert len(got) == len(set(got)), got
            time.sleep(0.2)
        offline = next(h["body"] for h in receivers.webhook.requests if h["body"]["event"] == "StandbyOffline")
        assert offline["args"] == ["ro-alerts", "data"], offline
        wait_until(lambda: ["StandbyOffline", "ro-alerts", "data"] in receivers.script_runs(), timeout=30,
                   what="the event script to run with the seed's arguments")
        wait_until(lambda: sum("StandbyOffline" in m["content"] for m in receivers.smtp.messages) == 1, timeout=30,
                   what="one StandbyOffline mail")
        wait_until(lambda: sum(b"StandbyOffline" in m for _, m in receivers.syslog.messages) == 1, timeout=30,
                   what="one StandbyOffline syslog message")
        wait_until(lambda: sum(any(v == "StandbyOffline" for _, v in n) for n in receivers.snmp.notifications) == 1,
                   timeout=30, what="one StandbyOffline trap")
    finally:
        readonly.cleanup()
