"""A server with several worker processes (http.workers): they share the HTTPS port and serve concurrently;
the audit chain stays one and verifies, a revoked token is refused by every worker at once, metrics are
summed over the workers, a worker that dies is replaced, and SIGTERM stops all of them and the database."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from safehold.services.auth import PRINCIPAL_TTL
from tests.integration.test_ha_audit_faults import assert_exactly_once, chain_of, retrieve
from tests.integration.test_ha_failover import kill_app, local, resources
from tests.support import (
    Server,
    accounts_in,
    make_secondary,
    run_cli,
    running_pair,
    running_server,
    seed_account,
    serves_users_itself,
    wait_until,
)

WORKERS = {"SAFEHOLD_HTTP__WORKERS": "2"}


def workers_of(server: Server) -> list[int]:
    """The supervisor's worker processes: its children forked from it (the same command line), not a program it
    ran meanwhile (a PostgreSQL tool, ``ping``), and not dead."""
    assert server.proc is not None
    with open(f"/proc/{server.proc.pid}/cmdline", "rb") as f:
        command = f.read()
    pids = []
    for task in os.listdir(f"/proc/{server.proc.pid}/task"):
        with contextlib.suppress(OSError), open(f"/proc/{server.proc.pid}/task/{task}/children") as f:
            pids.extend(int(p) for p in f.read().split())
    alive = []
    for pid in pids:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as f, open(f"/proc/{pid}/cmdline", "rb") as c:
            if f.read().split(") ")[-1].split()[0] != "Z" and c.read() == command:
                alive.append(pid)
    return alive


@pytest.fixture()
def server(server_root: Path) -> Iterator[Server]:
    s = Server(Path(tempfile.mkdtemp(dir=server_root)) / "data")
    try:
        s.init()
        s.start(env=WORKERS)
        wait_until(lambda: len(workers_of(s)) == 2, what="two workers")
        yield s
    finally:
        s.cleanup()


def postmaster_alive(server: Server) -> bool:
    pid_file = server.data_dir / "pg" / "postmaster.pid"
    if not pid_file.exists():
        return False
    try:
        os.kill(int(pid_file.read_text().split()[0]), 0)
    except (ProcessLookupError, ValueError):
        return False
    return True


def seed(server: Server, token: str) -> str:
    with server.client(token) as c:
        resource = c.post("/resources", json={"name": "db-01"}).json()["id"]
        r = c.post(f"/resources/{resource}/accounts", json={"username": "svc", "password": "Worker-Secret-1"})
        assert r.status_code == 201, r.text
        return str(r.json()["id"])


def metric(server: Server, name: str) -> float:
    with httpx.Client(verify=server.ssl_context(), timeout=10) as c:
        text = c.get(f"{server.url}/metrics").text
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def test_workers_serve_concurrently_with_one_verifiable_audit_chain(server: Server) -> None:
    token = server.login()
    account = seed(server, token)
    before = metric(server, "safehold_password_retrievals_total")
    results: list[int] = []

    def retrieve(n: int) -> None:
        for _ in range(n):
            with server.client(token) as c:  # a new connection each time: the kernel spreads them over the workers
                r = c.get(f"/accounts/{account}/password")
                results.append(r.status_code)
                assert r.status_code != 200 or r.json()["password"] == "Worker-Secret-1"

    threads = [threading.Thread(target=retrieve, args=(25,)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert results == [200] * 200
    # every worker counted its own; /metrics (answered by either) shows the sum
    assert metric(server, "safehold_password_retrievals_total") - before == 200
    with server.client(token) as c:
        audited = c.get("/audit", params={"action": "password_retrieved", "limit": 1}).json()["total"]
    assert audited == 200
    out = server.cli("audit", "verify")
    assert "audit chain intact" in out.stdout, out.stdout + out.stderr


def answers(server: Server, bearer: str, n: int = 10) -> set[int]:
    codes = set()
    for _ in range(n):  # a new connection each time: every worker answers some
        with server.client(bearer) as c:
            codes.add(c.get("/resources").status_code)
    return codes


def test_a_revoked_token_or_disabled_user_is_refused_by_every_worker_at_once(server: Server) -> None:
    """Each worker keeps a token's principal for a moment, but a revocation on this server reaches all its
    workers at once (the shared count of forgotten principals)."""
    token = server.login()
    with server.client(token) as c:
        created = c.post("/me/tokens", json={"name": "automation"}).json()
        added = c.post("/users", json={"username": "robot", "password": "Robot-Password-4711", "role": "user"})
        assert added.status_code == 201, added.text
    robot_token = server.login("robot", "Robot-Password-4711")
    assert answers(server, created["token"]) == {200} and answers(server, robot_token) == {200}  # cached
    with server.client(token) as c:
        assert c.delete(f"/me/tokens/{created['id']}").status_code == 204
        assert c.patch(f"/users/{added.json()['id']}", json={"disabled": True}).status_code == 200
    assert answers(server, created["token"]) == {401}
    assert answers(server, robot_token) == {401}


def test_a_revocation_reaches_another_server_within_the_cache_life(server_root: Path) -> None:
    """A secondary caches a token's principal too; a revocation made on the primary reaches it once
    PRINCIPAL_TTL (0.5 s) has passed: whatever it cached, it cached before the revocation."""
    base = Path(tempfile.mkdtemp(dir=server_root))
    with running_server(base / "primary") as primary:
        secondary = make_secondary(primary, base / "secondary")
        try:
            secondary.start()
            with primary.client(primary.login()) as c:
                created = c.post("/me/tokens", json={"name": "automation"}).json()
            assert answers(secondary, created["token"]) == {200}
            with primary.client(primary.login()) as c:
                assert c.delete(f"/me/tokens/{created['id']}").status_code == 204
            time.sleep(PRINCIPAL_TTL)
            assert answers(secondary, created["token"]) == {401}
        finally:
            secondary.cleanup()


def test_a_dead_worker_is_replaced_and_sigterm_stops_everything(server: Server) -> None:
    first = workers_of(server)
    os.kill(first[0], signal.SIGKILL)
    # (one listing per look: a worker being killed may be listed by one look and gone from the next)
    wait_until(lambda: len(now := workers_of(server)) == 2 and first[0] not in now,
               what="the dead worker to be replaced")
    assert f"(pid {first[0]})" in server.log() and "starting a new one" in server.log(), server.log()
    token = server.login()
    with server.client(token) as c:
        assert c.post("/resources", json={"name": "after-the-crash"}).status_code == 201

    workers = workers_of(server)
    assert server.stop() == 0
    for pid in workers:
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split(") ")[-1][0] == "Z"
    assert not postmaster_alive(server)
    assert "stopped the bundled PostgreSQL" in server.log()


@pytest.fixture()
def pair(server_root: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Server, Server]]:
    monkeypatch.setenv("SAFEHOLD_HTTP__WORKERS", "2")  # both servers
    with running_pair(Path(tempfile.mkdtemp(dir=server_root))) as servers:
        yield servers


def test_a_switchover_keeps_the_workers_through_the_role_changes(pair: tuple[Server, Server]) -> None:
    primary, readonly = pair
    wait_until(lambda: len(workers_of(primary)) == 2 and len(workers_of(readonly)) == 2,
               what="two workers on each server")
    before = set(workers_of(primary)) | set(workers_of(readonly))
    token = primary.login()
    with primary.client(token) as c:
        for i in range(10):
            assert c.post("/resources", json={"name": f"before-{i}"}).status_code == 201
    wait_until(lambda: (readonly.client().get("/ha/local").json()["data_age_seconds"] or 99) < 5, timeout=30,
               what="the replica to stream")
    out = run_cli("ha", "switchover", "--data-dir", str(primary.data_dir), "--to", "readonly")
    assert "is the primary (generation 2)" in out.stdout, out.stdout + out.stderr
    wait_until(lambda: local(primary)["role"] == "readonly", timeout=30, what="the old primary to carry on read-only")
    token = readonly.login()
    for i in range(10):  # new connections: both workers of the new primary take writes
        with readonly.client(token) as c:
            assert c.post("/resources", json={"name": f"after-{i}"}).status_code == 201
    # every worker followed the change itself: none was replaced
    assert set(workers_of(primary)) | set(workers_of(readonly)) == before
    assert {f"before-{i}" for i in range(10)} | {f"after-{i}" for i in range(10)} <= resources(readonly.data_dir)
    out = readonly.cli("audit", "verify")
    assert "audit chain intact" in out.stdout, out.stdout + out.stderr


def test_a_read_only_server_with_two_workers_shares_sessions_and_ships_its_spool_exactly_once(
        pair: tuple[Server, Server]) -> None:
    primary, readonly = pair
    wait_until(lambda: len(workers_of(readonly)) == 2, what="two workers on the read-only server")
    _, aid = seed_account(primary, primary.login(), "Spooled-Secret-1")
    ro_id = local(readonly)["server_id"]
    kill_app(primary)  # its database stays: the read-only server serves users and ships to it
    wait_until(lambda: serves_users_itself(readonly), timeout=30, what="read-only emergency mode")
    wait_until(lambda: aid in accounts_in(readonly.data_dir), what="the replica to have the account")

    # one session, used on new connections at once: the kernel spreads them over both workers
    token = readonly.login()
    codes: list[int] = []

    def retrieve_once() -> None:
        codes.append(retrieve(readonly, token, aid)[0])

    threads = [threading.Thread(target=retrieve_once) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert codes == [200] * 40, codes  # the session made on one worker is known to the other
    with readonly.client(token) as c:
        assert c.post("/auth/logout").status_code == 204
    refused = [retrieve(readonly, token, aid)[0] for _ in range(8)]  # on both workers
    assert refused == [401] * 8, refused

    wait_until(lambda: local(readonly)["audit_backlog"]["pending"] == 0, timeout=30, what="the spool shipped")
    records = chain_of(primary.data_dir, ro_id)
    assert_exactly_once(primary.data_dir, ro_id, 40)
    assert Counter(action for _, action in records)["logout"] == 1


def test_the_workers_stop_when_the_supervisor_is_killed(server: Server) -> None:
    workers = workers_of(server)
    assert server.proc is not None
    server.proc.kill()  # kill -9: no chance to stop them itself
    server.proc.wait()

    def gone(pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().split(") ")[-1][0] in "ZX"
        except OSError:
            return True

    wait_until(lambda: all(gone(pid) for pid in workers), timeout=30, what="the orphaned workers to stop")
    with pytest.raises(httpx.TransportError), httpx.Client(verify=server.ssl_context(), timeout=3) as c:
        c.get(f"{server.url}/api/v1/health")


def test_a_second_server_on_the_same_port_refuses_to_start(server: Server, server_root: Path) -> None:
    """The workers' sockets share the port among themselves (SO_REUSEPORT), never with another server."""
    other = Server(Path(tempfile.mkdtemp(dir=server_root)) / "other")
    try:
        other.init()
        other.start(wait=False, env={"SAFEHOLD_HTTP__PORT": str(server.port)})
        assert other.proc is not None
        assert other.proc.wait(60) != 0
        assert f"HTTPS port {server.port} on 127.0.0.1 is already in use" in other.log(), other.log()
        token = server.login()  # the first one serves on, alone
        assert answers(server, token) == {200}
    finally:
        other.cleanup()
