"""Health checks for load balancers, on real servers: one topology (a primary, a secondary, a read-only server)
walked through its states — all up; the primary database refusing connections; the primary database dead (the
read-only server serves users itself); the read-only server promoted; the old primary back, fenced — and in
each, every health endpoint of every server asked with GET, HEAD and OPTIONS."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from tests.support import Server, run_cli, running_topology, serves_users_itself, wait_until

CHECKS = ("live", "ready", "writable", "primary", "readonly", "replica")
VAULT = "/v1/sys/health"
ALLOW = "GET, HEAD, OPTIONS"
#: each endpoint's path by its short name in the tables below
PATHS = {**{c: f"/api/v1/health/{c}" for c in CHECKS}, "vault": VAULT}


def client(server: Server) -> httpx.Client:
    return httpx.Client(base_url=server.url, verify=server.ssl_context(), timeout=15)


def get(server: Server, path: str) -> httpx.Response:
    with client(server) as c:
        return c.get(path)


def statuses(server: Server) -> dict[str, int]:
    with client(server) as c:
        return {name: c.get(path).status_code for name, path in PATHS.items()}


def head(server: Server, path: str) -> tuple[int, bytes]:
    """HEAD over a raw TLS connection: the status, and every byte the server sent after the headers (the body
    it must not send)."""
    request = f"HEAD {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nConnection: close\r\n\r\n"
    data = b""
    with socket.create_connection(("127.0.0.1", server.port), timeout=15) as sock, \
            server.ssl_context().wrap_socket(sock, server_hostname="127.0.0.1") as tls:
        tls.sendall(request.encode())
        while True:
            try:
                chunk = tls.recv(65536)
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                break
            if not chunk:
                break
            data += chunk
    headers, _, rest = data.partition(b"\r\n\r\n")
    return int(headers.split(b" ", 2)[1]), rest


def assert_methods(server: Server, path: str, status: int) -> None:
    """HEAD answers ``status`` with no body; OPTIONS answers 204 with the allowed methods."""
    assert head(server, path) == (status, b""), path
    with client(server) as c:
        r = c.options(path)
    assert r.status_code == 204 and r.headers["allow"] == ALLOW and r.content == b"", (path, r.headers)


def heads(server: Server) -> dict[str, tuple[int, bytes]]:
    return {name: head(server, path) for name, path in PATHS.items()}


def expect(server: Server, what: str, vault: int, **checks: int) -> None:
    """Wait until every endpoint of ``server`` answers as the table says to GET and to HEAD (each worker
    process may answer, and a worker reuses what its database said for up to a second), then ask each with
    OPTIONS too."""
    expected = {**checks, "vault": vault}
    wait_until(lambda: statuses(server) == expected, timeout=60, what=f"{server.data_dir.name}: {what}")
    bodiless = {name: (status, b"") for name, status in expected.items()}
    wait_until(lambda: heads(server) == bodiless, timeout=30, what=f"{server.data_dir.name}: {what} (HEAD)")
    for name, path in PATHS.items():
        assert_methods(server, path, expected[name])


def check_body(server: Server, check: str) -> dict[str, Any]:
    r = get(server, f"/api/v1/health/{check}")
    body: dict[str, Any] = r.json()
    assert set(body) == {"check", "ok", "reason", "role", "mode", "redirecting", "database", "data_age_seconds",
                         "max_lag_seconds"}, body
    assert body["check"] == check and body["ok"] is (r.status_code == 200), body
    assert r.headers["cache-control"] == "no-store"
    return body


def vault_body(server: Server, query: str = "") -> tuple[int, dict[str, Any]]:
    r = get(server, f"{VAULT}{query}")
    assert r.headers["cache-control"] == "no-store"
    return r.status_code, r.json()


def vault_code(server: Server, query: str) -> int:
    return get(server, f"{VAULT}?{query}").status_code


def signal_database(server: Server, sig: int) -> None:
    pid = int((server.data_dir / "pg" / "postmaster.pid").read_text().split()[0])
    os.kill(pid, sig)


def kill_app(server: Server) -> None:
    assert server.proc is not None
    server.proc.kill()
    server.proc.wait()
    server.proc = None


def local(server: Server) -> dict[str, Any]:
    r = get(server, "/api/v1/ha/local")
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_health_endpoints_through_a_failover(server_root: Path) -> None:
    with running_topology(Path(tempfile.mkdtemp(dir=server_root))) as (primary, secondary, readonly):
        wait_until(lambda: not serves_users_itself(readonly), timeout=60, what="the read-only server to redirect")

        # 1. all up: the primary and the secondary take writes, the read-only server redirects users
        expect(primary, "all up", 200, live=200, ready=200, writable=200, primary=200, readonly=503, replica=503)
        expect(secondary, "all up", 200, live=200, ready=200, writable=200, primary=503, readonly=503, replica=503)
        expect(readonly, "redirecting", 429, live=200, ready=200, writable=503, primary=503, readonly=503,
               replica=200)
        body = check_body(primary, "writable")
        assert body["role"] == "primary" and body["mode"] == "read-write" and body["database"] == "ok", body
        assert "secondary" in check_body(secondary, "primary")["reason"]
        body = check_body(readonly, "readonly")
        assert body["redirecting"] is True and body["role"] == "readonly", body
        assert check_body(readonly, "live")["database"] == "unchecked"

        # the replica's lag limit: the configured threshold by default, or the caller's
        body = check_body(readonly, "replica")
        assert body["ok"] and body["max_lag_seconds"] == 30 and 0 <= body["data_age_seconds"] <= 30, body
        assert get(readonly, "/api/v1/health/replica?lag=3600").status_code == 200
        r = get(readonly, "/api/v1/health/replica?lag=0")
        assert r.status_code == 503 and "over the limit of 0 s" in r.json()["reason"], r.text
        assert get(readonly, "/api/v1/health/replica?lag=-1").status_code == 422
        assert get(readonly, "/api/v1/health/replica?lag=soon").status_code == 422
        assert_methods(readonly, "/api/v1/health/replica?lag=0", 503)

        # Vault's body and parameters, on an active server and a standby
        code, body = vault_body(primary)
        assert code == 200 and set(body) >= {"initialized", "sealed", "standby", "performance_standby",
                                            "server_time_utc", "version", "cluster_id"}, body
        assert (body["initialized"], body["sealed"], body["standby"], body["performance_standby"]) == (
            True, False, False, False), body
        assert body["cluster_id"] == local(primary)["cluster_id"] and abs(body["server_time_utc"] - time.time()) < 60
        code, body = vault_body(readonly)
        assert code == 429 and (body["sealed"], body["standby"], body["performance_standby"]) == (
            False, True, False), body
        assert vault_code(readonly, "standbyok=true") == 200
        assert vault_code(readonly, "standbyok=true&activecode=203") == 203
        assert vault_code(readonly, "standbycode=299") == 299
        assert vault_code(readonly, "perfstandbyok=true") == 429
        assert vault_code(primary, "activecode=201&standbycode=299&sealedcode=500") == 201
        assert vault_code(primary, "uninitcode=299&drsecondarycode=299") == 200
        r = get(primary, f"{VAULT}?activecode=204")
        assert r.status_code == 204 and r.content == b""
        for bad in ("standbyok=maybe", "activecode=abc", "standbycode=1000", "perfstandbycode=99"):
            r = get(readonly, f"{VAULT}?{bad}")
            assert r.status_code == 400 and r.json()["error"]["field"] == bad.split("=")[0], r.text
            assert head(readonly, f"{VAULT}?{bad}") == (400, b"")

        # the existing endpoints answer HEAD and OPTIONS too
        for server in (primary, readonly):
            for path in ("/api/v1/health", "/api/v1/ha/local"):
                assert_methods(server, path, 200)
        with client(primary) as c:
            assert c.put("/api/v1/health").status_code == 405
            assert c.options("/api/v1/health/nothing").status_code == 404

        # 2. the primary database refuses new connections (a smart shutdown waits for the open sessions): the
        # app servers' pooled connections still answer, but the ping (as pg_isready) tells
        signal_database(primary, signal.SIGTERM)
        for server in (primary, secondary):
            expect(server, "database refusing connections", 503, live=200, ready=503, writable=503, primary=503,
                   readonly=503, replica=503)
            body = check_body(server, "ready")
            assert body["database"] == "refusing" and "refuses connections" in body["reason"], body

        # 3. the primary database dies: its app servers say so; the read-only server serves users itself
        signal_database(primary, signal.SIGKILL)
        for server in (primary, secondary):  # the same codes as while it refused connections, another reason
            wait_until(lambda s=server: all(check_body(s, "ready")["database"] == "unavailable" for _ in range(4)),
                       timeout=30, what=f"{server.data_dir.name} to find its database down")  # on every worker
            assert "does not answer" in check_body(server, "ready")["reason"]
            expect(server, "database down", 503, live=200, ready=503, writable=503, primary=503, readonly=503,
                   replica=503)
            code, body = vault_body(server)
            assert code == 503 and body["sealed"] is True, body
        assert vault_code(primary, "sealedcode=500") == 500
        # its replica no longer streams: not ready, and no replica to read from; but it serves users itself
        expect(readonly, "emergency mode", 473, live=200, ready=503, writable=503, primary=503, readonly=200,
               replica=503)
        assert "not streaming" in check_body(readonly, "ready")["reason"]
        code, body = vault_body(readonly)
        assert (body["sealed"], body["standby"], body["performance_standby"]) == (False, True, True), body
        assert vault_code(readonly, "perfstandbyok=true") == 200
        assert vault_code(readonly, "standbyok=true") == 473
        assert vault_code(readonly, "performancestandbycode=298") == 298
        assert vault_code(readonly, "perfstandbycode=297") == 297

        # 4. the read-only server is promoted: the acting primary
        kill_app(primary)
        kill_app(secondary)
        run_cli("ha", "promote", "--data-dir", str(readonly.data_dir))
        wait_until(lambda: local(readonly)["role"] == "primary" and local(readonly)["mode"] == "read-write",
                   timeout=60, what="the read-only server to take over")
        expect(readonly, "promoted", 200, live=200, ready=200, writable=200, primary=200, readonly=503,
               replica=503)

        # 5. the old primary comes back fenced: alive, and nothing else
        primary.start()
        assert local(primary)["mode"] == "fenced"
        expect(primary, "fenced", 503, live=200, ready=503, writable=503, primary=503, readonly=503, replica=503)
        body = check_body(primary, "writable")
        assert body["mode"] == "fenced" and "fenced" in body["reason"], body
        code, body = vault_body(primary)
        assert body["sealed"] is True and body["standby"] is True, body
        assert vault_code(primary, "sealedcode=500&standbyok=true") == 500
        assert_methods(primary, "/api/v1/health", 200)  # the old endpoint: its database answers
