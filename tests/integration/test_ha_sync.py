"""Synchronous mode ('safehold ha sync'), as real processes on 127.0.0.1: a primary and a read-only server
with its own replica.

The stories: (1) with synchronous mode on, a writer creates resources through the primary's API while the
primary's database is killed (kill -9) mid-stream; the read-only server's replica is promoted, and every
write the API acknowledged is in it — none lost.  (2) The read-only server stops: writes on the primary
wait for a synchronous standby only until ``ha.sync_degrade_after`` has passed, then the primary degrades
to asynchronous replication and logs a ``RaiseAlarm SyncStandbyMissing``; when the read-only server is
back, synchronous replication is restored and a ``ClearAlarm`` is logged.  Every process is stopped by
the fixtures, the replicas' postmasters included, also when a test fails.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

from safehold.config import load_settings
from safehold.runtime import database
from tests.support import (
    Server,
    app_connect,
    superuser_connect,
    wait_until,
)

SYNC_STATES = ("sync", "quorum")  # 'quorum' with ANY 1 (...)


def server_id(server: Server) -> str:
    return load_settings(server.data_dir).server.id


def replication_of(primary: Server) -> dict[str, tuple[str, str]]:
    """application_name -> (state, sync_state), from the primary's pg_stat_replication."""
    with superuser_connect(primary, "postgres") as conn:
        rows = conn.execute("SELECT application_name, state, sync_state FROM pg_stat_replication").fetchall()
    return {r[0]: (r[1], r[2]) for r in rows}


def sync_names(primary: Server) -> str:
    with superuser_connect(primary, "postgres") as conn:
        return str(conn.execute("SHOW synchronous_standby_names").fetchone()[0])


def is_synchronous_standby(primary: Server, readonly: Server) -> bool:
    state = replication_of(primary).get(server_id(readonly))
    return state is not None and state[1] in SYNC_STATES


def events(primary: Server, token: str, kind: str) -> list[dict[str, Any]]:
    with primary.client(token) as c:
        r = c.get("/ha/events")
    assert r.status_code == 200, r.text
    return [e for e in r.json()["items"] if e["kind"] == kind]


class Writer(threading.Thread):
    """Creates resources through the primary's API, one at a time, and records every id whose 201 it
    received (acknowledged).  Stops at the first failure (the primary dies) or when asked."""

    def __init__(self, server: Server, token: str) -> None:
        super().__init__(name="sync-writer", daemon=True)
        self.server, self.token = server, token
        self.acknowledged: list[str] = []
        self.failure: str | None = None
        self._stop_asked = threading.Event()
        self._lock = threading.Lock()

    def run(self) -> None:
        try:
            with self.server.client(self.token) as c:
                while not self._stop_asked.is_set():
                    r = c.post("/resources", json={"name": f"sync-{uuid.uuid4().hex[:12]}"})
                    if r.status_code != 201:
                        self.failure = f"HTTP {r.status_code}"
                        return
                    with self._lock:
                        self.acknowledged.append(r.json()["id"])
        except Exception as exc:  # noqa: BLE001 - the primary died under it: expected
            self.failure = type(exc).__name__

    def count(self) -> int:
        with self._lock:
            return len(self.acknowledged)

    def finish(self) -> list[str]:
        self._stop_asked.set()
        self.join(60)
        assert not self.is_alive(), "the writer did not stop"
        with self._lock:
            return list(self.acknowledged)


def test_no_acknowledged_write_is_lost_when_the_primary_database_dies(
        primary_and_readonly: tuple[Server, Server]) -> None:
    primary, readonly = primary_and_readonly
    said = primary.cli("ha", "sync", "--on").stdout
    assert "synchronous mode on" in said, said
    wait_until(lambda: is_synchronous_standby(primary, readonly), timeout=30,
               what="the read-only replica to be a synchronous standby")

    writer = Writer(primary, primary.login())
    writer.start()
    try:
        wait_until(lambda: writer.count() >= 40 or writer.failure, timeout=30, what="the writer to get going")
        assert writer.failure is None, writer.failure
        # the primary's database crashes mid-stream (kill -9 of the postmaster named in postmaster.pid and of
        # its children), then its app server
        database.manager(load_settings(primary.data_dir)).kill()
        assert primary.proc is not None
        primary.proc.kill()
        primary.proc.wait()
    finally:
        acknowledged = writer.finish()
    assert len(acknowledged) >= 40

    readonly.cli("ha", "promote", "--force")  # its data may look stale: the primary is gone
    with app_connect(readonly.data_dir) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is False
        found = {r[0] for r in conn.execute("SELECT id::text FROM resources WHERE id = ANY(%s::uuid[])",
                                            (acknowledged,))}
    lost = [i for i in acknowledged if i not in found]
    assert not lost, f"{len(lost)} of {len(acknowledged)} acknowledged writes are missing after the failover"


def test_without_a_standby_the_primary_degrades_raises_an_alarm_and_restores_sync_when_it_is_back(
        primary_and_readonly: tuple[Server, Server]) -> None:
    primary, readonly = primary_and_readonly
    token = primary.login()
    ro_id = server_id(readonly)
    primary.cli("ha", "sync", "--on", "--degrade-after", "3")
    wait_until(lambda: is_synchronous_standby(primary, readonly), timeout=30,
               what="the read-only replica to be a synchronous standby")
    assert ro_id in sync_names(primary)

    # the read-only server stops, its replica with it: commits wait, then the primary degrades
    readonly.stop()
    wait_until(lambda: ro_id not in replication_of(primary), timeout=30, what="the replica to disconnect")
    with primary.client(token) as c:  # the client waits (30 s timeout); the guard degrades after ~3 s
        r = c.post("/resources", json={"name": "written-while-degraded"})
    assert r.status_code == 201, r.text
    wait_until(lambda: events(primary, token, "RaiseAlarm"), timeout=30, what="a RaiseAlarm event")
    (alarm,) = events(primary, token, "RaiseAlarm")
    assert alarm["args"][0] == "SyncStandbyMissing" and "asynchronous" in alarm["args"][1], alarm
    assert sync_names(primary) == ""
    with primary.client(token) as c:
        assert c.post("/resources", json={"name": "still-writable"}).status_code == 201

    # back: synchronous replication is restored and the alarm cleared, once
    readonly.start()
    wait_until(lambda: events(primary, token, "ClearAlarm"), timeout=30, what="a ClearAlarm event")
    (cleared,) = events(primary, token, "ClearAlarm")
    assert cleared["args"] == [f"synchronous replication restored with {ro_id}"], cleared
    wait_until(lambda: is_synchronous_standby(primary, readonly), timeout=30,
               what="the read-only replica to be a synchronous standby again")
    with primary.client(token) as c:
        assert c.post("/resources", json={"name": "synchronous-again"}).status_code == 201
    assert len(events(primary, token, "RaiseAlarm")) == 1


def test_sync_command_refuses_bad_values_and_off_resets_the_setting(
        primary_and_readonly: tuple[Server, Server]) -> None:
    primary, readonly = primary_and_readonly
    bad = primary.cli("ha", "sync", "--on", "--degrade-after", "0.5", check=False)
    assert bad.returncode != 0 and "between 1 and 86400 seconds" in bad.stderr, bad.stderr
    both = primary.cli("ha", "sync", "--on", "--off", check=False)
    assert both.returncode != 0 and "exactly one of --on and --off" in both.stderr, both.stderr
    on_readonly = readonly.cli("ha", "sync", "--on", check=False)
    assert on_readonly.returncode != 0 and "on the primary" in on_readonly.stderr, on_readonly.stderr
    assert load_settings(primary.data_dir).ha.synchronous is False  # nothing written

    primary.cli("ha", "sync", "--on", "--degrade-after", "45")
    settings = load_settings(primary.data_dir)
    assert settings.ha.synchronous is True and settings.ha.sync_degrade_after == 45
    wait_until(lambda: is_synchronous_standby(primary, readonly), timeout=30, what="a synchronous standby")
    said = primary.cli("ha", "sync", "--off").stdout
    assert "synchronous mode off" in said, said
    assert load_settings(primary.data_dir).ha.synchronous is False
    assert load_settings(primary.data_dir).ha.sync_degrade_after == 45  # kept for the next --on
    wait_until(lambda: sync_names(primary) == "" and replication_of(primary).get(server_id(readonly), ("", ""))[1]
               == "async", timeout=30, what="asynchronous replication")
