"""Fault stories, each server its own process on 127.0.0.1: a primary frozen while the cluster moves on, a fenced
old primary restarted (with and without its peers), a primary restarted while no peer answers, a replica
cut off from its primary or killed — and in each, no acknowledged write is lost and nothing pretends."""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.test_ha_failover import (
    kill_app,
    kill_database,
    local,
    resources,
    vault_digest,
)
from tests.support import Listener, Server, app_connect, run_cli, running_pair, wait_until

# a short write lease and heartbeat, so that a freeze outlasts the lease quickly (every server and CLI call
# of a test inherits them)
FAST = {"SAFEHOLD_HA__CHECK_INTERVAL": "0.5", "SAFEHOLD_HA__PEER_TIMEOUT": "0.5",
        "SAFEHOLD_HA__WRITE_LEASE_SECONDS": "2", "SAFEHOLD_LOG_LEVEL": "INFO"}


@pytest.fixture()
def pair(server_root: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Server, Server]]:
    for k, v in FAST.items():
        monkeypatch.setenv(k, v)
    with running_pair(Path(tempfile.mkdtemp(dir=server_root))) as servers:
        yield servers


def postmaster_pid(server: Server) -> int:
    return int((server.data_dir / "pg" / "postmaster.pid").read_text().split()[0])


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (Linux /proc)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{p}/task"):
                with contextlib.suppress(OSError), open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
    return out


@contextlib.contextmanager
def frozen(*pids: int) -> Iterator[None]:
    """SIGSTOP the processes; SIGCONT them however the block ends (a stopped process would outlive the test)."""
    stopped = []
    try:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
            stopped.append(pid)
        yield
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def walreceiver_pid(server: Server) -> int:
    def find() -> int | None:
        for pid in process_tree(postmaster_pid(server)):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"walreceiver" in f.read():
                    return pid
        return None

    return int(wait_until(find, what="the replica's WAL receiver"))


def writer(server: Server, token: str, results: dict[str, int]) -> Callable[[str], None]:
    """A function that creates a resource of the given name and records the answer's status (-1: none)."""

    def write(name: str) -> None:
        with server.client(token) as c:
            try:
                results[name] = c.post("/resources", json={"name": name}, timeout=90).status_code
            except httpx.HTTPError:
                results[name] = -1

    return write


def replicated_write(primary: Server, readonly: Server, name: str) -> str:
    """Sign in to the primary, create a resource, wait until the replica has it; the token."""
    token = primary.login()
    with primary.client(token) as c:
        assert c.post("/resources", json={"name": name}).status_code == 201
    wait_until(lambda: name in resources(readonly.data_dir), what="the replica to have it")
    return token


def test_a_frozen_primary_acknowledges_nothing_after_the_cluster_moved_on(pair: tuple[Server, Server]) -> None:
    primary, readonly = pair
    token = replicated_write(primary, readonly, "before-freeze")
    assert local(primary)["write_lease"]["valid"] is True

    results: dict[str, int] = {}
    write = writer(primary, token, results)

    assert primary.proc is not None
    with frozen(*process_tree(primary.proc.pid), *process_tree(postmaster_pid(primary))):
        # while it is frozen the read-only server is promoted, and users' writes queue up at the old primary
        queued = [threading.Thread(target=write, args=(f"queued-{i}",)) for i in range(4)]
        for t in queued:
            t.start()
        promoted = run_cli("ha", "promote", "--data-dir", str(readonly.data_dir))
        assert "acting primary (generation 2)" in promoted.stdout, promoted.stdout
        wait_until(lambda: local(readonly)["mode"] == "read-write", timeout=30, what="the promotion")
        new_token = readonly.login()
        with readonly.client(new_token) as c:
            assert c.post("/resources", json={"name": "on-the-new-primary"}).status_code == 201
    # thawed: the queued writes and one sent just after are refused, never acknowledged
    write("just-after-thaw")
    for t in queued:
        t.join(60)
    assert results and all(code == 503 for code in results.values()), results
    wait_until(lambda: local(primary)["mode"] == "fenced", timeout=30, what="the old primary to be fenced")
    with primary.client(token) as c:
        r = c.post("/resources", json={"name": "later"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "fenced", r.text
    # nothing the old primary acknowledged is missing from the acting primary
    acknowledged = {name for name, code in results.items() if code == 201} | {"before-freeze"}
    assert acknowledged <= resources(readonly.data_dir)
    assert not {n for n in resources(primary.data_dir) if n.startswith(("queued-", "just-after"))}


def test_a_promotion_while_the_primary_writes_loses_no_acknowledged_change(pair: tuple[Server, Server]) -> None:
    """The operator promotes the read-only server while the primary is alive and busy (a mistake, or a
    primary that only looked dead): the promotion first stops confirming the primary's lease and waits it
    out, so whatever the primary acknowledged reached the replica before it became the acting primary."""
    primary, readonly = pair
    token = replicated_write(primary, readonly, "before")

    results: dict[str, int] = {}
    write = writer(primary, token, results)
    stop = threading.Event()

    def keep_writing() -> None:
        for i in range(10_000):
            if stop.is_set():
                return
            write(f"during-{i:05d}")

    busy = threading.Thread(target=keep_writing)
    busy.start()
    try:
        promoted = run_cli("ha", "promote", "--data-dir", str(readonly.data_dir))
        wait_until(lambda: local(readonly)["mode"] == "read-write", timeout=30, what="the promotion")
        wait_until(lambda: local(primary)["mode"] == "fenced", timeout=30, what="the old primary to be fenced")
    finally:
        stop.set()
        busy.join(120)
    acknowledged = {name for name, code in results.items() if code == 201}
    refused = {name for name, code in results.items() if code == 503}
    assert acknowledged and refused, results  # it wrote during the promotion, and was then refused
    missing = acknowledged - resources(readonly.data_dir)
    assert not missing, f"acknowledged by the old primary but not on the acting primary: {sorted(missing)}"
    assert "write leases this server confirmed to run out" in promoted.stdout, promoted.stdout
    assert not (promoting := readonly.data_dir / "promoting").exists(), promoting  # removed at the take-over


def test_a_fenced_old_primary_starts_fenced_with_or_without_its_peers(pair: tuple[Server, Server]) -> None:
    primary, readonly = pair
    token = primary.login()
    kill_database(primary)
    kill_app(primary)
    run_cli("ha", "promote", "--data-dir", str(readonly.data_dir))
    wait_until(lambda: local(readonly)["mode"] == "read-write", timeout=30, what="the promotion")
    primary.start()
    wait_until(lambda: local(primary)["mode"] == "fenced", timeout=30, what="the fence")
    held = vault_digest(primary.data_dir)

    # restarted while the acting primary answers, then while nobody does: it comes up fenced both times
    for peers_up in (True, False):
        primary.stop()
        if not peers_up:
            readonly.stop()
        primary.start()
        report = local(primary)
        assert report["mode"] == "fenced", report
        with primary.client(token) as c:
            r = c.post("/resources", json={"name": "split-brain"})
            assert r.status_code == 503 and r.json()["error"]["code"] == "fenced", r.text
            if peers_up:
                assert report["fence"]["acting_primary_url"] == readonly.url
                # users are sent to the acting primary once the fenced watch has seen it answer (its first cycle,
                # in each worker)
                r = wait_until(lambda: (x := c.post("/auth/login", json={"username": "admin", "password": "x"}))
                               .status_code == 307 and x, timeout=20, what="the fenced server to redirect")
                assert r.headers["location"].startswith(readonly.url), r.headers
        status = run_cli("ha", "status", "--data-dir", str(primary.data_dir))
        assert "fenced" in (status.stdout + status.stderr).lower(), status.stdout + status.stderr
        assert "Traceback" not in primary.log()
    assert vault_digest(primary.data_dir) == held, "the fenced server's data changed"


def test_a_primary_restarted_while_no_peer_answers_writes_only_once_confirmed(pair: tuple[Server, Server]) -> None:
    primary, readonly = pair
    token = primary.login()
    # the read-only server dies: a running primary goes on writing (its heartbeats keep the lease)
    readonly.stop()
    with primary.client(token) as c:
        assert c.post("/resources", json={"name": "ro-down"}).status_code == 201
    # but a primary that restarts cannot know whether someone took over while it was away
    primary.stop()
    primary.start()
    with primary.client(token) as c:
        r = c.post("/resources", json={"name": "unconfirmed"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "writer_unconfirmed", r.text
        assert "override-lease" in r.json()["error"]["message"] + r.json()["error"].get("hint", "")
        # reads still work
        assert c.get("/resources").status_code == 200
    assert local(primary)["alarm"]["condition"] == "WriterUnconfirmed"
    # the operator, sure that nobody took over, overrides; or a peer comes back: either way writes resume
    out = run_cli("ha", "override-lease", "--data-dir", str(primary.data_dir), "--yes")
    assert "override requested" in out.stdout

    def writes() -> bool:
        with primary.client(token) as c:
            return c.post("/resources", json={"name": f"confirmed-{os.urandom(3).hex()}"}).status_code == 201

    wait_until(writes, timeout=30, what="writes after the override")
    # (with several workers, each takes the override at its own next heartbeat)
    wait_until(lambda: local(primary)["alarm"] is None, timeout=10, what="the alarm to clear")


def test_a_cut_off_replica_does_not_look_fresh(pair: tuple[Server, Server]) -> None:
    primary, readonly = pair
    token = primary.login()
    wait_until(lambda: (local(readonly)["data_age_seconds"] or 99) < 5, timeout=30, what="a fresh replica")
    # the replica stops hearing from the primary (its WAL receiver frozen: the link looks up but is silent)
    with frozen(walreceiver_pid(readonly)):
        with primary.client(token) as c:
            for i in range(5):
                assert c.post("/resources", json={"name": f"unseen-{i}"}).status_code == 201
        age = wait_until(lambda: (a := local(readonly)["data_age_seconds"]) is not None and a > 6 and a,
                         timeout=40, what="the data age to grow")
        assert age > 6
    wait_until(lambda: (local(readonly)["data_age_seconds"] or 99) < 5, timeout=40, what="fresh again")


def test_a_switchover_to_a_dead_replica_is_refused_before_anything_stops(pair: tuple[Server, Server]) -> None:
    primary, readonly = pair
    token = primary.login()
    kill_database(readonly)
    wait_until(lambda: local(readonly)["database_ok"] is False, timeout=30, what="the replica to be seen dead")
    wait_until(lambda: local(readonly)["data_age_seconds"] is None, timeout=30, what="an unknown data age")
    out = run_cli("ha", "switchover", "--data-dir", str(primary.data_dir), "--to", readonly.data_dir.name,
                  check=False)
    assert out.returncode != 0 and "not switching over" in out.stdout + out.stderr, out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    # the primary and its database were left alone: it still takes writes
    with primary.client(token) as c:
        assert c.post("/resources", json={"name": "after-refused-switchover"}).status_code == 201
    with app_connect(primary.data_dir) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is False


@pytest.fixture()
def watched_pair(pair: tuple[Server, Server]) -> Iterator[tuple[Server, Server]]:
    """The pair with automatic failover on (3 pings of 1 s; a witness that answers), and the read-only server's
    watch running."""
    primary, readonly = pair
    witness = Listener("127.0.0.2")
    try:
        out = run_cli("ha", "failover", "--data-dir", str(primary.data_dir), "--enable", "--ping-interval", "1",
                      "--ping-iterations", "3", "--witness", witness.address, "--gateway", witness.address,
                      "--max-lag-bytes", "4096")
        assert "enabled" in out.stdout.lower(), out.stdout + out.stderr
        wait_until(lambda: "the lag guard is armed" in readonly.log(), timeout=30,
                   what="the read-only server's failover watch to hear from the primary")
        yield primary, readonly
    finally:
        witness.close()


def test_automatic_failover_refuses_a_replica_known_to_be_behind(watched_pair: tuple[Server, Server]) -> None:
    primary, readonly = watched_pair
    token = primary.login()
    # replication is cut (the WAL receiver hangs): the primary goes on acknowledging writes the replica lacks
    with frozen(walreceiver_pid(readonly)):
        with primary.client(token) as c:
            for i in range(25):
                assert c.post("/resources", json={"name": f"acknowledged-{i}", "description": "x" * 200}
                              ).status_code == 201
        # the read-only server hears from the primary (its WAL position) and knows its replica is behind
        wait_until(lambda: (a := local(readonly)["data_age_seconds"]) is not None and a > 3, timeout=30,
                   what="the replica to know it is behind")
        kill_database(primary)
        kill_app(primary)
        report = wait_until(lambda: (r := local(readonly))["alarm"] and r, timeout=60, what="the lag alarm")
        assert report["alarm"]["condition"] == "FailoverLagTooHigh", report["alarm"]
        assert "max_lag_bytes = 4096" in report["alarm"]["message"]
        assert report["role"] == "readonly" and report["mode"] == "read-only-emergency", report
        status = run_cli("ha", "status", "--data-dir", str(readonly.data_dir))
        assert "FailoverLagTooHigh" in status.stdout, status.stdout
    # not promoted however long it waits (the rounds go on; the alarm was raised once)
    assert readonly.log().count("automatic failover: raise_alarm: ") == 1
    assert local(readonly)["role"] == "readonly"


def test_a_frozen_primary_is_superseded_by_automatic_failover_and_acknowledges_nothing(
        watched_pair: tuple[Server, Server]) -> None:
    primary, readonly = watched_pair
    token = replicated_write(primary, readonly, "before-freeze")
    results: dict[str, int] = {}
    write = writer(primary, token, results)

    assert primary.proc is not None
    queued = [threading.Thread(target=write, args=(f"queued-{i}",)) for i in range(3)]
    with frozen(*process_tree(primary.proc.pid), *process_tree(postmaster_pid(primary))):
        for t in queued:
            t.start()
        wait_until(lambda: local(readonly)["role"] == "primary", timeout=60, what="the automatic failover")
    write("just-after-thaw")
    for t in queued:
        t.join(90)
    assert results and all(code == 503 for code in results.values()), results
    acknowledged = {name for name, code in results.items() if code == 201} | {"before-freeze"}
    assert acknowledged <= resources(readonly.data_dir)


def test_a_hung_read_only_server_does_not_stop_the_primary(pair: tuple[Server, Server]) -> None:
    """A peer that hangs (its app and database frozen: connections open, nothing answers) makes every heartbeat
    wait the whole peer timeout; the lease must outlast that, so the primary keeps writing throughout."""
    primary, readonly = pair
    token = primary.login()
    assert readonly.proc is not None
    codes = []
    with frozen(*process_tree(readonly.proc.pid), *process_tree(postmaster_pid(readonly))), primary.client(token) as c:
        deadline = time.monotonic() + 6  # three write leases (2 s each) of a hung peer
        i = 0
        while time.monotonic() < deadline:
            codes.append(c.post("/resources", json={"name": f"while-ro-hangs-{i}"}).status_code)
            i += 1
        assert local(primary)["alarm"] is None
    assert codes and set(codes) == {201}, codes
