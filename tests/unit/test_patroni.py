"""The external HA engine (Patroni) as tables: its /cluster answer read, its snapshots and the events
between them — no servers, no mocks; reading the REST API against small HTTP servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from safehold.config import HaSection, Settings, load_settings
from safehold.crypto.certs import make_ca, make_server_cert
from safehold.errors import ConfigError
from safehold.ha.patroni import (
    UNREACHABLE,
    EngineMember,
    EngineSnapshot,
    EngineView,
    engine_snapshot,
    engine_transitions,
    read_engine,
)
from safehold.ha.policy import Event, EventKind, Health, Thresholds, ha_status, replication_status
from tests.support import free_port

ALIVE, FAILED = Health.ALIVE, Health.FAILED
PATRONI_ANSWER: dict[str, Any] = {
    "scope": "demo",
    "members": [
        {"name": "m0", "role": "leader", "state": "running", "api_url": "http://127.0.0.1:8008/patroni",
         "host": "127.0.0.1", "port": 5432, "timeline": 3},
        {"name": "m1", "role": "replica", "state": "streaming", "api_url": "http://127.0.0.1:8009/patroni",
         "host": "127.0.0.1", "port": 5433, "timeline": 3, "lag": 0, "receive_lag": 0, "replay_lag": 0,
         "lsn": "0/5000000"},
        {"name": "m2", "role": "sync_standby", "state": "stopped", "host": "127.0.0.1", "port": 5434,
         "lag": "unknown", "tags": {"nofailover": True}},
    ],
}


# --- EngineView.from_json ----------------------------------------------------------------------------------


def test_patronis_answer_is_read_as_typed_members() -> None:
    view = EngineView.from_json(PATRONI_ANSWER, source="http://127.0.0.1:8008")
    assert view == EngineView(scope="demo", source="http://127.0.0.1:8008", members=(
        EngineMember("m0", "leader", "running", "127.0.0.1", 5432, "http://127.0.0.1:8008/patroni", 3, None),
        EngineMember("m1", "replica", "streaming", "127.0.0.1", 5433, "http://127.0.0.1:8009/patroni", 3, 0),
        EngineMember("m2", "sync_standby", "stopped", "127.0.0.1", 5434, "", None, None),
    ))
    assert view.leader is not None and view.leader.name == "m0"
    assert [m.health for m in view.members] == [ALIVE, ALIVE, FAILED]


@pytest.mark.parametrize(("data", "members"), [
    pytest.param(None, [], id="null"),
    pytest.param("members", [], id="a string"),
    pytest.param([1, 2], [], id="a list"),
    pytest.param({}, [], id="no members"),
    pytest.param({"members": {"m0": {}}}, [], id="members not a list"),
    pytest.param({"members": [None, 3, "m0", [], {}]}, [], id="members that are not objects or have no name"),
    pytest.param({"members": [{"name": 7, "role": "leader"}]}, [], id="a name that is not text"),
    pytest.param({"members": [{"name": "m0"}]}, [EngineMember("m0", "", "")], id="a name only"),
    pytest.param({"members": [{"name": "m0", "role": ["leader"], "state": 1, "host": None, "port": "5432",
                               "timeline": "x", "lag": True}]},
                 [EngineMember("m0", "", "", "", 5432, "", None, None)], id="fields of the wrong type"),
    pytest.param({"members": [{"name": "m0", "lag": "unknown", "timeline": 2.5, "port": -1}]},
                 [EngineMember("m0", "", "", "", -1, "", None, None)], id="an unknown lag, a fractional timeline"),
    pytest.param({"members": [{"name": "x" * 500, "role": "r" * 500}]},
                 [EngineMember("x" * 200, "r" * 40, "")], id="over-long text is cut"),
])
def test_odd_answers_never_raise(data: Any, members: list[EngineMember]) -> None:
    view = EngineView.from_json(data)
    assert list(view.members) == members
    assert view.reachable


def test_the_view_round_trips_through_its_json() -> None:
    view = EngineView.from_json(PATRONI_ANSWER, source="http://127.0.0.1:8008")
    data = view.to_json()
    assert data["kind"] == "patroni" and data["leader"] == "m0" and data["reachable"] is True
    assert EngineView.from_json(json.loads(json.dumps(data))) == view
    down = EngineView.unreachable("no answer")
    assert EngineView.from_json(down.to_json()) == down
    assert down.to_json()["members"] == [] and down.to_json()["error"] == "no answer"


# --- snapshots and transitions --------------------------------------------------------------------------


def member(name: str, role: str = "replica", state: str = "streaming", timeline: int = 1) -> EngineMember:
    return EngineMember(name, role, state, "127.0.0.1", 5432, timeline=timeline)


def engine(*members: EngineMember) -> EngineView:
    return EngineView(scope="demo", members=members)


def snap(leader: str = "m0", replication: dict[str, Health] | None = None, **members: Health) -> EngineSnapshot:
    """A reachable engine: members Alive unless told, each Alive replica's replication Alive unless told."""
    members = members or {"m0": ALIVE, "m1": ALIVE}
    if replication is None:
        replication = {n: ALIVE for n, h in members.items() if n != leader and h is ALIVE}
    return EngineSnapshot(True, leader, members, replication)


UP = engine(member("m0", "leader", "running"), member("m1"))


@pytest.mark.parametrize(("before", "view", "expected"), [
    pytest.param(None, UP, snap(), id="a first look"),
    pytest.param(snap(), engine(member("m0", "leader", "running"), member("m1", state="stopped")),
                 snap(m0=ALIVE, m1=FAILED), id="a replica stopped"),
    pytest.param(snap(), engine(member("m1", "leader", "running", timeline=2)),
                 snap("m1", m0=FAILED, m1=ALIVE), id="the leader gone from the list, a new leader"),
    pytest.param(snap(), engine(member("m1", state="running")),
                 snap("m0", m0=FAILED, m1=ALIVE), id="no leader for now: the last one is kept"),
    pytest.param(snap(), engine(member("m0", "leader", "running"), EngineMember("m1", "replica", "streaming", lag=2**30),
                                member("m2", state="stopped")),
                 snap(m0=ALIVE, m1=ALIVE, m2=FAILED, replication={"m1": FAILED}),
                 id="a replica over the lag threshold; one that is down has no replication status"),
    pytest.param(snap(), EngineView.unreachable("down"),
                 EngineSnapshot(False, "m0", {"m0": ALIVE, "m1": ALIVE}, {"m1": ALIVE}, "down"),
                 id="unreachable: what was last seen is kept"),
    pytest.param(None, EngineView.unreachable("down"), EngineSnapshot(False, "", {}, {}, "down"),
                 id="unreachable from the start"),
])
def test_engine_snapshot(before: EngineSnapshot | None, view: EngineView, expected: EngineSnapshot) -> None:
    assert engine_snapshot(before, view) == expected


def kinds(events: list[Event]) -> list[tuple[str, str, tuple[str, ...]]]:
    return [(e.kind.value, e.subject, e.args) for e in events]


@pytest.mark.parametrize(("before", "now", "expected"), [
    pytest.param(snap(), snap(), [], id="nothing changed"),
    pytest.param(None, snap(), [], id="a first look, all well: no Alive repeated"),
    pytest.param(None, snap(m0=ALIVE, m1=FAILED),
                 [("HAFailed", "m1", ()), ("StandbyOffline", "m1", ("m1", "m0"))],
                 id="a first look never hides a failure"),
    pytest.param(snap(), snap("m1", m0=ALIVE, m1=ALIVE), [("Failover", "m1", ("m1", "m0"))],
                 id="a leader change (a switchover too) names the new and the old leader"),
    pytest.param(snap(), snap(m0=ALIVE, m1=FAILED),
                 [("HAFailed", "m1", ()), ("StandbyOffline", "m1", ("m1", "m0"))], id="a replica down"),
    pytest.param(snap(m0=ALIVE, m1=FAILED), snap(), [("HAAlive", "m1", ())], id="a replica back"),
    pytest.param(snap(), snap(m0=FAILED, m1=ALIVE), [("HAFailed", "m0", ())],
                 id="the leader down: no StandbyOffline, the Failover follows"),
    pytest.param(snap(m0=FAILED, m1=ALIVE), snap("m1", m0=FAILED, m1=ALIVE), [("Failover", "m1", ("m1", "m0"))],
                 id="the new leader elected"),
    pytest.param(snap(), snap("m1", m0=FAILED, m1=ALIVE),
                 [("Failover", "m1", ("m1", "m0")), ("HAFailed", "m0", ())], id="both in one cycle"),
    pytest.param(snap("m1", m0=FAILED, m1=ALIVE), snap("m1"), [("HAAlive", "m0", ())],
                 id="the old leader back as a replica"),
    pytest.param(snap(""), snap("m0"), [], id="a first leader is no failover"),
    pytest.param(snap(), snap(replication={"m1": FAILED}), [("ReplicationFailed", "m1", ())],
                 id="a replica falls behind"),
    pytest.param(snap(replication={"m1": FAILED}), snap(), [("ReplicationAlive", "m1", ())], id="and catches up"),
    pytest.param(None, snap(replication={"m1": FAILED}), [("ReplicationFailed", "m1", ())],
                 id="behind at the first look"),
    pytest.param(snap(replication={"m1": FAILED}), snap("m1"), [("Failover", "m1", ("m1", "m0"))],
                 id="a lagging replica promoted: no replication event for a leader"),
    pytest.param(snap(), snap(m0=ALIVE, m1=ALIVE, m2=ALIVE), [], id="a new member"),
    pytest.param(snap(), snap(m0=ALIVE, m1=ALIVE, m2=FAILED),
                 [("HAFailed", "m2", ()), ("StandbyOffline", "m2", ("m2", "m0"))], id="a new member, failed"),
])
def test_engine_transitions(before: EngineSnapshot | None, now: EngineSnapshot,
                            expected: list[tuple[str, str, tuple[str, ...]]]) -> None:
    assert kinds(engine_transitions(before, now)) == expected


def test_unreachable_is_said_once_and_its_end_too() -> None:
    up = snap()
    down = EngineSnapshot(False, "m0", up.members, up.replication, "no Patroni REST address answers")
    events = engine_transitions(up, down)
    assert kinds(events) == [("RaiseAlarm", UNREACHABLE, (UNREACHABLE, events[0].message))]
    assert "no Patroni REST address answers" in events[0].message
    assert engine_transitions(down, down) == []
    assert engine_transitions(None, down)[0].kind is EventKind.RAISE_ALARM
    back = snap("m1")
    assert kinds(engine_transitions(down, back)) == [
        ("ClearAlarm", UNREACHABLE, ("the HA engine answers again",)), ("Failover", "m1", ("m1", "m0"))]


def test_a_whole_failover_as_the_monitor_sees_it() -> None:
    """Cycle by cycle: the leader killed, listed as it was until its key expires, then gone; a new leader;
    the old one back as a replica."""
    cycles = [
        UP,
        UP,  # killed: Patroni lists it as it was until its key expires
        engine(member("m1", state="running")),  # its key expired, no leader yet
        engine(member("m1", "leader", "running", timeline=2)),
        engine(member("m0", state="starting"), member("m1", "leader", "running", timeline=2)),
        engine(member("m0", timeline=2), member("m1", "leader", "running", timeline=2)),
    ]
    before: EngineSnapshot | None = None
    said = []
    for view in cycles:
        now = engine_snapshot(before, view)
        said.append(kinds(engine_transitions(before, now)))
        before = EngineSnapshot.from_json(json.loads(json.dumps(now.to_json())))  # as the monitor stores it
    assert said == [[], [], [("HAFailed", "m0", ())], [("Failover", "m1", ("m1", "m0"))], [], [("HAAlive", "m0", ())]]


def test_failover_message_names_both_leaders() -> None:
    (event,) = engine_transitions(snap(), snap("m1"))
    assert event.message == "the HA engine's leader is m1, replacing m0"


@pytest.mark.parametrize(("m", "ha", "rep"), [
    pytest.param(member("m1", state="streaming"), ALIVE, ALIVE, id="streaming"),
    pytest.param(EngineMember("m1", "replica", "running", lag=None), ALIVE, ALIVE, id="running, lag unknown"),
    pytest.param(EngineMember("m1", "replica", "streaming", lag=65 * 2**20), ALIVE, FAILED, id="over the lag threshold"),
    pytest.param(EngineMember("m1", "replica", "stopped"), FAILED, FAILED, id="stopped"),
    pytest.param(EngineMember("m1", "replica", "starting"), FAILED, FAILED, id="starting"),
])
def test_an_engine_replica_has_the_ha_and_replication_status_of_a_bundled_one(m: EngineMember, ha: Health,
                                                                                rep: Health) -> None:
    assert ha_status(m.observation()) is ha
    assert replication_status(m.observation(), Thresholds()) is rep


@pytest.mark.parametrize("data", [None, "x", [], {"members": []}, {"members": {"m0": "Dead"}, "reachable": "no"}])
def test_a_stored_snapshot_of_another_shape_never_raises(data: Any) -> None:
    s = EngineSnapshot.from_json(data)
    assert s is None or (s.reachable and not s.members)


# --- reading the REST API ---------------------------------------------------------------------------------


class _Patroni(BaseHTTPRequestHandler):
    routes: dict[str, tuple[int, bytes]] = {
        "/good/cluster": (200, json.dumps(PATRONI_ANSWER).encode()),
        "/wrong/cluster": (200, b'{"not": "patroni"}'),
        "/failing/cluster": (503, b"{}"),
        "/garbage/cluster": (200, b"<html>"),
    }

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        status, body = self.routes.get(self.path, (404, b""))
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def serving(ctx: ssl.SSLContext | None = None) -> Iterator[str]:
    """A small HTTP(S) server on 127.0.0.1 while the block runs: each path prefix of
    :attr:`_Patroni.routes` is one REST address under the URL it gives."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Patroni)
    if ctx is not None:
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"{'https' if ctx else 'http'}://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def rest() -> Iterator[str]:
    with serving() as url:
        yield url


def test_the_first_address_that_answers_is_read(rest: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    view = asyncio.run(read_engine([dead, rest + "/wrong", rest + "/good/"], timeout=2))
    assert view.reachable and view.source == rest + "/good/" and view.leader is not None and view.leader.name == "m0"


def test_no_address_answers_says_why_for_each(rest: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    view = asyncio.run(read_engine([dead, rest + "/failing", rest + "/garbage", rest + "/wrong"], timeout=2))
    assert not view.reachable and view.members == ()
    assert view.error == (f"no Patroni REST address answers: {dead}: connection refused or failed; "
                          f"{rest}/failing: HTTP 503; {rest}/garbage: not JSON; {rest}/wrong: not a Patroni cluster")


@pytest.fixture
def rest_tls(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The same server over HTTPS, its certificate from a CA of its own; (its address, the CA file)."""
    ca_pem, ca_key = make_ca("Patroni test CA")
    cert, key = make_server_cert(ca_pem, ca_key, ["127.0.0.1"])
    (tmp_path / "ca.crt").write_bytes(ca_pem)
    (tmp_path / "server.crt").write_bytes(cert)
    (tmp_path / "server.key").write_bytes(key)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "server.crt", tmp_path / "server.key")
    with serving(ctx) as url:
        yield url, tmp_path / "ca.crt"


def test_https_is_verified_against_patroni_ca(rest_tls: tuple[str, Path]) -> None:
    url, ca = rest_tls
    view = asyncio.run(read_engine([url + "/good"], timeout=2, ca=ca))
    assert view.reachable and view.leader is not None
    untrusted = asyncio.run(read_engine([url + "/good"], timeout=2))
    assert not untrusted.reachable and "TLS certificate is not trusted" in untrusted.error


def test_an_unreadable_ca_file_is_said(tmp_path: Path) -> None:
    view = asyncio.run(read_engine(["https://127.0.0.1:1"], timeout=1, ca=tmp_path / "missing.crt"))
    assert not view.reachable and "ha.patroni_ca" in view.error


# --- the setting ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "urls"), [
    ("http://127.0.0.1:8008", ["http://127.0.0.1:8008"]),
    ("http://127.0.0.1:8008, https://db2:8008/", ["http://127.0.0.1:8008", "https://db2:8008/"]),
    (["http://a:8008", "http://b:8008"], ["http://a:8008", "http://b:8008"]),
    ([], []),
])
def test_patroni_url_takes_one_address_or_several(value: Any, urls: list[str]) -> None:
    assert HaSection.model_validate({"patroni_url": value}).patroni_urls == urls
    assert HaSection.model_validate({"patroni_urls": value}).patroni_urls == urls


@pytest.mark.parametrize(("value", "why"), [
    ("postgresql://a:5432", "http:// or https://"),
    ("http://", "must name a host"),
    ("http://user:secret@a:8008", "user name or password"),
    ("http://a:99999", "not a URL"),
    ("http://a:8008/?x=1", "query"),
    (["http://a:8008", "http://a:8008"], "listed twice"),
    ([f"http://a{i}:8008" for i in range(10)], "at most 9"),
])
def test_bad_patroni_urls_are_refused_without_echoing_them(tmp_path: Path, value: Any, why: str) -> None:
    text = f'[server]\nid = "8e6c1f3c-6a51-4a3e-9a8e-8f1c2b3d4e5f"\nname = "a"\n[ha]\npatroni_url = {json.dumps(value)}\n'
    (tmp_path / "safehold.toml").write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_settings(tmp_path, env={})
    assert "ha.patroni_urls" in exc.value.message and why in exc.value.message
    assert "secret" not in exc.value.message


def test_both_spellings_at_once_are_refused() -> None:
    with pytest.raises(ValueError, match="not both"):
        HaSection.model_validate({"patroni_url": "http://a:8008", "patroni_urls": ["http://b:8008"]})


def test_the_environment_gives_a_comma_separated_list(tmp_path: Path) -> None:
    (tmp_path / "safehold.toml").write_text('[server]\nid = "8e6c1f3c-6a51-4a3e-9a8e-8f1c2b3d4e5f"\nname = "a"\n')
    s: Settings = load_settings(tmp_path, env={"SAFEHOLD_HA__PATRONI_URLS": "http://a:8008,http://b:8008",
                                               "SAFEHOLD_HA__PATRONI_CA": "patroni-ca.crt",
                                               "SAFEHOLD_DATABASE__MODE": "external",
                                               "SAFEHOLD_DATABASE__URL": "postgresql://safehold@db1/safehold"})
    assert s.ha.patroni_urls == ["http://a:8008", "http://b:8008"]
    assert s.path(s.ha.patroni_ca or Path()) == tmp_path.resolve() / "patroni-ca.crt"


def test_patroni_urls_only_with_a_database_an_engine_runs(tmp_path: Path) -> None:
    (tmp_path / "safehold.toml").write_text('[server]\nid = "8e6c1f3c-6a51-4a3e-9a8e-8f1c2b3d4e5f"\nname = "a"\n')
    with pytest.raises(ConfigError, match="database.mode"):
        load_settings(tmp_path, env={"SAFEHOLD_HA__PATRONI_URL": "http://a:8008"})
