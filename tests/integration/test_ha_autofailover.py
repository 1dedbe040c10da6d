"""Automatic failover (opt-in): the read-only server promotes itself after the configured number of failed
pings of the primary — and does not when its witnesses and gateway are unreachable too."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_ha_failover import kill_app, kill_database, local, resources
from tests.support import (
    Listener,
    Server,
    make_readonly,
    run_cli,
    running_pair,
    wait_until,
)


@pytest.fixture()
def watched(server_root: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Server, Server, Listener, Listener]]:
    base = Path(tempfile.mkdtemp(dir=server_root))
    # failover after 3 pings of 1 s: the writers' lease must be shorter (every server and CLI call inherits these)
    monkeypatch.setenv("SAFEHOLD_HA__CHECK_INTERVAL", "0.5")
    monkeypatch.setenv("SAFEHOLD_HA__PEER_TIMEOUT", "0.5")
    monkeypatch.setenv("SAFEHOLD_HA__WRITE_LEASE_SECONDS", "1.5")
    witness, gateway = Listener("127.0.0.2"), Listener("127.0.0.3")

    def enable_failover(primary: Server) -> None:
        # the cluster's policy, set on the primary; the read-only server follows it from its replica
        out = run_cli("ha", "failover", "--data-dir", str(primary.data_dir), "--enable", "--ping-interval", "1",
                      "--ping-iterations", "3", "--witness", witness.address, "--gateway", gateway.address)
        assert "enabled" in out.stdout.lower(), out.stdout

    try:
        with running_pair(base) as (primary, readonly):
            enable_failover(primary)
            wait_until(lambda: "automatic failover: enabled by the cluster's policy" in readonly.log(), timeout=30,
                       what="the read-only server to follow the cluster's failover policy")
            # the lag guard promotes only a replica that heard from the primary: let it hear once
            wait_until(lambda: "the lag guard is armed" in readonly.log(), timeout=30, what="a first contact")
            yield primary, readonly, witness, gateway
    finally:
        witness.close()
        gateway.close()


def test_promotes_itself_after_the_failed_pings(watched: tuple[Server, Server, Listener, Listener]) -> None:
    primary, readonly, _, _ = watched
    token = primary.login()
    with primary.client(token) as c:
        assert c.post("/resources", json={"name": "before"}).status_code == 201
    assert local(readonly)["role"] == "readonly"
    kill_database(primary)
    kill_app(primary)
    wait_until(lambda: local(readonly)["role"] == "primary", timeout=60, what="the automatic failover")
    report = local(readonly)
    assert report["generation"] == 2 and report["mode"] == "read-write"
    with readonly.client(readonly.login()) as c:
        assert c.post("/resources", json={"name": "after"}).status_code == 201
        events = c.get("/ha/events").json()["items"]
    failover = [e for e in events if e["kind"] == "Failover"]
    assert len(failover) == 1 and "automatic failover after 3 failed pings" in failover[0]["message"], events
    assert failover[0]["args"] == ["readonly", "primary"]

    # the new primary has no CA key file (packs never carry it) and still takes a new read-only server:
    # it unwraps the CA key from its keyring with the key file
    assert not (readonly.data_dir / "tls" / "ca.key").exists()
    spare = make_readonly(readonly, readonly.data_dir.with_name("spare"), name="spare")
    try:
        spare.start()
        wait_until(lambda: (local(spare)["data_age_seconds"] or 99) < 5, timeout=60, what="the new replica to stream")
        with readonly.client(readonly.login()) as c:
            assert c.post("/resources", json={"name": "after-spare"}).status_code == 201
        wait_until(lambda: "after-spare" in resources(spare.data_dir), timeout=30, what="the new replica to follow")
    finally:
        spare.cleanup()


def test_does_not_promote_when_its_own_side_is_cut_off(
        watched: tuple[Server, Server, Listener, Listener]) -> None:
    primary, readonly, witness, gateway = watched
    witness.close()
    gateway.close()
    kill_database(primary)
    kill_app(primary)
    try:
        alarm = wait_until(lambda: local(readonly)["alarm"], timeout=60, what="the isolation alarm")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{readonly.log()[-4000:]}") from None
    assert alarm["condition"] == "StandbyIsolated", alarm
    assert local(readonly)["role"] == "readonly", "promoted although its own side was cut off"
    # its side of the network comes back while the primary is still down: now it takes over
    witness2, gateway2 = witness.reopen(), gateway.reopen()
    try:
        wait_until(lambda: local(readonly)["role"] == "primary", timeout=60, what="the failover after recovery")
        assert local(readonly)["alarm"] is None
    finally:
        witness2.close()
        gateway2.close()
