"""The peer messages and the judgements on them, as tables (no servers, no mocks): the /ha/local JSON keeps
its shape, an older or broken peer's report never raises, fencing picks the newest acting primary, the
failover watch the furthest writer; and the client against a real local HTTP server."""

from __future__ import annotations

import asyncio
import http.server
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from safehold.ha.failover import WriterReport
from safehold.ha.failover_inputs import InputKind, InputState
from safehold.ha.fencing import superseded_by
from safehold.ha.peers import (
    AlarmReport,
    BacklogReport,
    DatabaseReport,
    FenceReport,
    LeaseReport,
    LocalReport,
    PeerAnswer,
    PeerClient,
    PromoteAnswer,
    SyncPeerClient,
    primary_wal,
    writer_report,
)
from safehold.runtime import Fence

HOST = "127.0.0.1"

#: a report with every part, and the JSON ``GET /api/v1/ha/local`` answered for it before the message was typed
FULL = LocalReport(
    server_id="s1", server_name="alpha", role="primary", cluster_id="c1", generation=3, mode="fenced",
    fence=FenceReport(4, "s2", "beta", "https://beta:8443"),
    database=DatabaseReport("db.example", 5432, "bundled", "primary"),
    audit_backlog=BacklogReport(2, 7, "2026-01-02T03:04:05+00:00", None),
    data_age_seconds=1.5, url="https://alpha:8443", alarm=AlarmReport("WriterUnconfirmed", "no peer"),
    database_ok=True, wal_lsn="0/3000060",
    write_lease=LeaseReport(10.0, True, 9.25, "confirmed"), promoting=True,
    failover_inputs=(InputState(InputKind.WITNESS, "10.0.0.1:22", False, 12.5),),
)
FULL_JSON: dict[str, Any] = {
    "server_id": "s1", "server_name": "alpha", "role": "primary", "cluster_id": "c1", "generation": 3,
    "mode": "fenced",
    "fence": {"generation": 4, "acting_primary_id": "s2", "acting_primary_name": "beta",
              "acting_primary_url": "https://beta:8443"},
    "database": {"host": "db.example", "port": 5432, "mode": "bundled", "role": "primary"},
    "audit_backlog": {"pending": 2, "shipped": 7, "oldest_pending": "2026-01-02T03:04:05+00:00", "error": None},
    "data_age_seconds": 1.5, "url": "https://alpha:8443",
    "alarm": {"condition": "WriterUnconfirmed", "message": "no peer"},
    "database_ok": True, "wal_lsn": "0/3000060",
    "write_lease": {"seconds": 10.0, "valid": True, "remaining": 9.25, "confirmed_by": "confirmed"},
    "promoting": True,
    "failover_inputs": [{"kind": "witness", "target": "10.0.0.1:22", "reachable": False, "since": 12.5}],
}


def test_the_local_json_keeps_its_field_names_and_shapes() -> None:
    assert FULL.to_json() == FULL_JSON
    assert list(FULL.to_json()) == list(FULL_JSON)
    assert LocalReport.from_json(FULL_JSON) == FULL
    assert LocalReport.from_json(json.loads(json.dumps(FULL.to_json()))) == FULL


def test_a_report_without_its_optional_parts() -> None:
    bare = LocalReport(server_id="s1", cluster_id="c1", generation=1, role="readonly", mode="read-write")
    out = bare.to_json()
    assert out["fence"] is None and out["audit_backlog"] is None and out["alarm"] is None
    assert out["write_lease"] is None and out["database"] == {"host": "", "port": 0, "mode": "", "role": ""}
    assert LocalReport.from_json(out) == bare


@pytest.mark.parametrize(("sent", "expected"), [
    pytest.param({}, LocalReport(), id="nothing at all"),
    pytest.param({"cluster_id": "c1", "generation": 2, "role": "primary"},
                 LocalReport(cluster_id="c1", generation=2, role="primary"),
                 id="an older version: no wal, lease, alarm or database_ok"),
    pytest.param({"generation": "2", "cluster_id": 5, "database_ok": "yes", "data_age_seconds": "1"},
                 LocalReport(), id="wrong types get the defaults"),
    pytest.param({"generation": True}, LocalReport(), id="a boolean is no generation"),
    pytest.param({"fence": {"acting_primary_id": "x"}}, LocalReport(), id="a fence without a generation says nothing"),
    pytest.param({"fence": "yes", "database": [], "audit_backlog": 3, "alarm": "x", "write_lease": 1},
                 LocalReport(), id="parts that are not objects"),
    pytest.param({"audit_backlog": {}}, LocalReport(audit_backlog=BacklogReport()), id="an empty backlog counts 0"),
    pytest.param({"write_lease": {"seconds": "ten", "valid": 1}}, LocalReport(write_lease=LeaseReport()),
                 id="a lease of the wrong types"),
])
def test_from_json_never_raises(sent: dict[str, Any], expected: LocalReport) -> None:
    assert LocalReport.from_json(sent) == expected


# --- fencing: which report supersedes this server (generation 2 of cluster c1) -----------------------------

P3 = LocalReport(server_id="p3", server_name="gamma", role="primary", cluster_id="c1", generation=3,
                 url="https://gamma:8443")


@pytest.mark.parametrize(("reports", "expected"), [
    pytest.param([], None, id="no peer answered"),
    pytest.param([LocalReport(cluster_id="c1", generation=2, role="primary")], None, id="a primary at our generation"),
    pytest.param([LocalReport(cluster_id="c1", generation=1, role="readonly")], None, id="an older read-only server"),
    pytest.param([P3], Fence(3, "p3", "gamma", "https://gamma:8443"), id="a newer primary supersedes"),
    pytest.param([LocalReport(server_id="x", role="primary", cluster_id="c2", generation=9)], None,
                 id="another cluster's primary proves nothing"),
    pytest.param([LocalReport(role="primary", cluster_id="c1")], None, id="a primary that does not say its generation"),
    pytest.param([LocalReport(role="readonly", cluster_id="c1", generation=3)], None,
                 id="a newer read-only server is not a primary"),
    pytest.param([LocalReport(role="secondary", cluster_id="c1", generation=5,
                              fence=FenceReport(5, "p5", "eps", "https://eps:8443"))],
                 Fence(5, "p5", "eps", "https://eps:8443"), id="a server fenced by a newer primary names it"),
    pytest.param([LocalReport(role="primary", cluster_id="c1", generation=4, server_id="old",
                              fence=FenceReport(6, "p6", "zeta", "https://zeta:8443"))],
                 Fence(6, "p6", "zeta", "https://zeta:8443"), id="a fenced primary is not the acting one: its fence is"),
    pytest.param([P3, LocalReport(role="readonly", cluster_id="c1", generation=5,
                                  fence=FenceReport(5, "p5", "eps", "https://eps:8443"))],
                 Fence(5, "p5", "eps", "https://eps:8443"), id="the newest wins"),
    pytest.param([LocalReport.from_json({"cluster_id": "c1", "generation": 3, "role": "primary", "server_id": "p3",
                                         "server_name": "gamma", "url": "https://gamma:8443"})],
                 Fence(3, "p3", "gamma", "https://gamma:8443"), id="an older version's report"),
])
def test_superseded_by(reports: list[LocalReport], expected: Fence | None) -> None:
    assert superseded_by("c1", 2, reports) == expected


# --- the failover watch: the primary database's position as its writers report it ----------------------------


def writer(lsn: str | None, *, mode: str = "read-write", db_role: str = "primary",
           lease: float | None = 10.0) -> LocalReport:
    return LocalReport(mode=mode, wal_lsn=lsn, database=DatabaseReport(role=db_role),
                       write_lease=LeaseReport(seconds=lease) if lease is not None else None)


@pytest.mark.parametrize(("reports", "expected"), [
    pytest.param([], None, id="nobody answered"),
    pytest.param([None, writer("0/10")], WriterReport("0/10", 10.0), id="one writer"),
    pytest.param([writer("0/10"), writer("0/FF", lease=7.0), writer("0/20")], WriterReport("0/FF", 7.0),
                 id="the furthest (as an LSN, not as text) and its lease"),
    pytest.param([writer("1/0", mode="fenced"), writer("0/20")], WriterReport("0/20", 10.0),
                 id="a fenced server does not count"),
    pytest.param([writer("1/0", db_role="replica")], None, id="a replica's position does not count"),
    pytest.param([writer(None), writer("")], None, id="no position reported"),
    pytest.param([writer("0/30", lease=None)], WriterReport("0/30", None), id="a writer that does not say its lease"),
])
def test_writer_report(reports: list[LocalReport | None], expected: WriterReport | None) -> None:
    assert writer_report(reports) == expected


@pytest.mark.parametrize(("reports", "expected"), [
    pytest.param([], None, id="nobody answered"),
    pytest.param([writer("0/9"), None, writer("0/A0")], "0/A0", id="the furthest"),
    pytest.param([writer("0/9", mode="fenced")], "0/9", id="a fenced server's database is still the primary one"),
    pytest.param([writer("2/0", db_role="replica"), writer("0/1")], "0/1", id="replicas do not count"),
])
def test_primary_wal(reports: list[LocalReport | None], expected: str | None) -> None:
    assert primary_wal(reports) == expected


# --- the other messages ----------------------------------------------------------------------------------------


def test_promote_answer() -> None:
    a = PromoteAnswer(5, "s1", "alpha", "https://alpha:8443")
    assert a.to_json() == {"generation": 5, "server_id": "s1", "name": "alpha", "url": "https://alpha:8443"}
    assert PromoteAnswer.from_json(a.to_json()) == a
    with pytest.raises(KeyError):
        PromoteAnswer.from_json({"server_id": "s1"})


@pytest.mark.parametrize(("answer", "expected"), [
    pytest.param(PeerAnswer(409, {"error": {"message": "no", "hint": "h"}}, ""), ("no", "h"), id="an error JSON"),
    pytest.param(PeerAnswer(409, {"error": {"message": "no"}}, ""), ("no", None), id="without a hint"),
    pytest.param(PeerAnswer(502, None, "Bad gateway" + "x" * 300), ("Bad gateway" + "x" * 189, None),
                 id="not JSON: the start of the text"),
    pytest.param(PeerAnswer(500, {"detail": 1}, "{}"), ("{}", None), id="another JSON"),
])
def test_peer_answer_error(answer: PeerAnswer, expected: tuple[str, str | None]) -> None:
    assert answer.error() == expected


# --- the client, against a real local server ---------------------------------------------------------------------


class _Peer(http.server.BaseHTTPRequestHandler):
    routes: dict[str, tuple[int, bytes]] = {
        "/ok/api/v1/health": (200, b'{"status": "ok", "server": {"id": "s-1", "name": "one"}}'),
        "/anon/api/v1/health": (200, b"not json"),
        "/ok/api/v1/ha/local": (200, json.dumps(FULL_JSON).encode()),
        "/old/api/v1/health": (503, b"{}"),
        "/old/api/v1/ha/local": (200, b'{"cluster_id": "c1", "generation": 3, "role": "primary"}'),
        "/broken/api/v1/ha/local": (200, b"not json"),
        "/list/api/v1/ha/local": (200, b"[1, 2]"),
        "/down/api/v1/ha/local": (503, b'{"generation": 9}'),
    }

    def do_GET(self) -> None:  # noqa: N802
        status, body = self.routes.get(self.path, (404, b""))
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def peer() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer((HOST, 0), _Peer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{HOST}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def closed_url() -> str:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return f"http://{HOST}:{s.getsockname()[1]}"  # nothing listens there once it is closed


def test_the_client_reads_reports_and_health(peer: str, closed_url: str) -> None:
    async def run() -> None:
        async with PeerClient(ssl.create_default_context(), 2) as c:
            assert await c.local(peer + "/ok/") == FULL
            assert await c.local(peer + "/old") == LocalReport(cluster_id="c1", generation=3, role="primary")
            for broken in ("/broken", "/list", "/down", "/missing"):
                assert await c.local(peer + broken) is None, broken
            assert await c.local(closed_url) is None
            got = await c.reports([peer + "/old", closed_url, peer + "/ok"])
            assert [r.url for r in got] == [peer + "/old", FULL.url]  # its own URL wins; the asked one else
            assert await c.healthy(peer + "/ok") is True
            assert await c.healthy(peer + "/old") is False
            old = await c.health(peer + "/old")
            assert (old.status, old.error) == (503, None)
            down = await c.health(closed_url)
            assert down.status is None and down.error and down.error.startswith("cannot connect")
            assert (await c.health(peer + "/ok")).server_id == "s-1"

    asyncio.run(run())


def test_the_blocking_client_reads_health_and_the_server_it_names(peer: str, closed_url: str) -> None:
    with SyncPeerClient(ssl.create_default_context(), 2) as c:
        ok = c.health(peer + "/ok")
        assert (ok.ok, ok.server_id) == (True, "s-1")
        anon = c.health(peer + "/anon")  # a 200 whose body names no server
        assert (anon.ok, anon.server_id) == (True, None)
        assert (c.health(peer + "/old").status, c.health(peer + "/sub").status) == (503, 404)
        down = c.health(closed_url)
        assert down.status is None and down.error and down.error.startswith("cannot connect")
        assert c.local(peer + "/ok") == FULL and c.local(closed_url) is None
