"""HA status from the engine: a Safehold app server on a real Patroni cluster (etcd, 2 members) shows the
engine's members beside the app servers — in /api/v1/ha/status, on the dashboard and in 'safehold ha
status' — and when the leader is killed, logs the engine's Failover naming the new leader."""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from tests.patroni_support import PatroniCluster, cluster_fixture
from tests.support import ADMIN_PASSWORD, Server, run_cli, wait_until
from tests.ui_client import Browser

pytestmark = pytest.mark.slow
patroni_cluster = cluster_fixture(n=2)
FAST = {"SAFEHOLD_HA__CHECK_INTERVAL": "0.5", "SAFEHOLD_LOG_LEVEL": "INFO"}


def set_patroni_urls(data_dir: Path, urls: list[str]) -> None:
    path = data_dir / "safehold.toml"
    config = tomllib.loads(path.read_text())
    config.setdefault("ha", {})["patroni_urls"] = urls
    path.write_text(tomli_w.dumps(config))


@pytest.fixture
def app_server(tmp_path: Path, patroni_cluster: PatroniCluster) -> Iterator[Server]:
    """A Safehold app server initialised on the cluster's read-write URL, told the members' REST addresses."""
    server = Server(tmp_path / "app")
    try:
        # the URL holds a password: from the environment, not the command line
        pw = tmp_path / "admin-pw"
        pw.write_text(ADMIN_PASSWORD)
        run_cli("init", "--data-dir", str(server.data_dir), "--port", str(server.port), "--name", "app",
                "--admin-password-file", str(pw), env={"SAFEHOLD_DATABASE_URL": patroni_cluster.url()})
        set_patroni_urls(server.data_dir, patroni_cluster.rest_urls)
        server.start(env=FAST, timeout=60)
        yield server
    finally:
        server.cleanup()


def status_of(server: Server, token: str) -> dict[str, Any]:
    with server.client(token) as c:
        r = c.get("/ha/status")
    assert r.status_code == 200, r.text
    return dict(r.json())


def engine_of(server: Server, token: str) -> dict[str, Any]:
    engine = status_of(server, token)["engine"]
    assert engine is not None
    return dict(engine)


def events_of(server: Server, token: str) -> list[dict[str, Any]]:
    with server.client(token) as c:
        r = c.get("/ha/events")
    assert r.status_code == 200, r.text
    return list(r.json()["items"])


def test_engine_members_and_a_leader_killed(app_server: Server, patroni_cluster: PatroniCluster) -> None:
    cluster = patroni_cluster
    token = app_server.login()
    leader = cluster.wait_leader()
    replica = next(n for n in cluster.names if n != leader)

    # --- the members beside the app server: the leader running, the replica streaming; the HA and
    # replication status are the engine's replica's
    def all_up() -> dict[str, Any] | None:
        status = status_of(app_server, token)
        engine = status["engine"]
        states = {m["name"]: (m["role"], m["state"]) for m in engine["members"]}
        ok = engine["reachable"] and engine["leader"] == leader and states == {
            leader: ("leader", "running"), replica: ("replica", "streaming")}
        return engine if ok and status["ha_status"] == status["replication_status"] == "Alive" else None

    engine = wait_until(all_up, timeout=60, interval=0.5, what="the engine's members, all up, in /ha/status")
    assert engine["kind"] == "patroni" and engine["scope"] == cluster.scope
    by_name = {m["name"]: m for m in engine["members"]}
    assert by_name[leader]["port"] == cluster.member(leader).pg_port and by_name[leader]["host"] == "127.0.0.1"
    assert isinstance(by_name[leader]["timeline"], int) and isinstance(by_name[replica]["lag"], int)

    status = run_cli("ha", "status", "--data-dir", str(app_server.data_dir)).stdout
    assert "Engine members" in status and cluster.scope in status and leader in status and replica in status

    with Browser(app_server) as b:
        b.sign_in()
        rows = b.page("/ui/ha").by_id("engine-table").find_all("tr", data_member_name=None)
        assert {r.attrs["data-member-name"]: r.attrs["data-member-role"] for r in rows} == {
            leader: "leader", replica: "replica"}

    # --- kill -9 the leader: Patroni promotes the replica, the monitor logs the engine's Failover
    first_timeline = by_name[leader]["timeline"]
    assert cluster.kill_leader() == leader
    assert cluster.wait_leader(exclude={leader}) == replica

    def failover() -> dict[str, Any] | None:
        return next((e for e in events_of(app_server, token) if e["kind"] == "Failover"), None)

    try:
        event = wait_until(failover, timeout=120, interval=0.5, what="the Failover event in /ha/events")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nevents: {events_of(app_server, token)}\n"
                             f"server log:\n{app_server.log()[-6000:]}") from None
    assert event["subject"] == replica and event["args"] == [replica, leader]
    assert f"replacing {leader}" in event["message"]
    kinds = {(e["kind"], e["subject"]) for e in events_of(app_server, token)}
    assert ("HAFailed", leader) in kinds  # the old leader, gone from the engine's list

    # (Patroni reports the new leader's timeline once its promotion has finished: wait for both)
    def promoted() -> dict[str, Any] | None:
        e = engine_of(app_server, token)
        leader_now = next((m for m in e["members"] if m["name"] == replica), None)
        ok = e["leader"] == replica and leader_now is not None and (leader_now["timeline"] or 0) > first_timeline
        return e if ok else None

    engine = wait_until(promoted, timeout=60, interval=0.5, what="the new leader, on a new timeline, in /ha/status")

    # --- the old leader back, as a replica: HAAlive
    cluster.start_member(leader)
    cluster.wait_replicas_streaming()
    wait_until(lambda: any(e["kind"] == "HAAlive" and e["subject"] == leader for e in events_of(app_server, token)),
               timeout=120, interval=0.5, what="the old leader's HAAlive event")
    # the engine's replicas are never taken for read-only servers' (pg_stat_replication hides them from the login)
    assert not [e for e in events_of(app_server, token) if e["subject"] == "read-only replicas"]
