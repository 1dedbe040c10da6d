"""Automatic failover (opt-in): the read-only server promotes itself after the configured number of failed
pings of the primary — and does not when its witnesses and gateway are unreachable too."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.test_ha_failover import kill_app, kill_database, local, resources
from tests.support import (
    Listener,
    Server,
    make_readonly,
    run_cli,
    running_pair,
    wait_until,
)
from tests.ui_client import Browser


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
        # (the witness and gateway, dead first, may raise WitnessUnreachable before: the isolation alarm replaces it)
        alarm = wait_until(lambda: (a := local(readonly)["alarm"]) and a["condition"] == "StandbyIsolated" and a,
                           timeout=60, what="the isolation alarm")
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


def events_of(server: Server, kind: str) -> list[dict[str, Any]]:
    with server.client(server.login()) as c:
        items: list[dict[str, Any]] = c.get("/ha/events", params={"limit": 200}).json()["items"]
    return [e for e in items if e["kind"] == kind]


def input_metrics(server: Server) -> dict[tuple[str, str], float]:
    """``safehold_failover_input_up`` by (kind, target), and that decisions were counted, from /metrics."""
    with httpx.Client(base_url=server.url, verify=server.ssl_context(), timeout=15) as c:
        text = c.get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert any(s.value > 0 for s in families["safehold_failover_decisions"].samples), "no decision counted"
    return {(s.labels["kind"], s.labels["target"]): s.value for s in families["safehold_failover_input_up"].samples}


def inputs_of(server: Server) -> dict[str, bool | None]:
    return {i["target"]: i["reachable"] for i in local(server)["failover_inputs"]}


def test_a_dead_witness_is_reported_while_the_primary_is_healthy_and_cleared_when_back(
        watched: tuple[Server, Server, Listener, Listener]) -> None:
    primary, readonly, witness, gateway = watched
    wait_until(lambda: inputs_of(readonly) == {witness.address: True, gateway.address: True}, timeout=30,
               what="the witness and gateway to be probed while the primary answers")
    witness.close()
    wait_until(lambda: all(local(readonly)["alarm"] for _ in range(4)), timeout=30, what="the witness alarm")
    alarm = local(readonly)["alarm"]
    assert alarm["condition"] == "WitnessUnreachable" and f"witness {witness.address} does not answer" in \
        alarm["message"], alarm
    assert inputs_of(readonly) == {witness.address: False, gateway.address: True}
    assert input_metrics(readonly) == {("witness", witness.address): 0.0, ("gateway", gateway.address): 1.0}
    # the acting primary logs the event (once) and shows the targets in its status; nothing failed over
    down = wait_until(lambda: events_of(primary, "WitnessUnreachable"), timeout=30, what="the HA event")
    assert len(down) == 1 and down[0]["args"] == ["readonly", f"witness {witness.address}"], down
    status = json.loads(run_cli("ha", "status", "--json", "--data-dir", str(primary.data_dir)).stdout)
    ro = next(s for s in status["servers"] if s["name"] == "readonly")
    assert {i["target"]: i["reachable"] for i in ro["failover_inputs"]} == inputs_of(readonly)
    assert any(a["condition"] == "WitnessUnreachable" for a in status["alarms"]), status["alarms"]
    assert "Automatic failover: gateway and witnesses" in run_cli(
        "ha", "status", "--data-dir", str(primary.data_dir)).stdout
    with Browser(primary) as b:  # the HA dashboard
        b.sign_in()
        rows = b.page("/ui/ha").by_id("failover-inputs-table").find_all("tr", data_input_target=None)
        assert {r.attrs["data-input-target"]: r.attrs["data-input-state"] for r in rows} == {
            witness.address: "unreachable", gateway.address: "reachable"}
    # 'ha check' on the read-only server probes them itself
    check = run_cli("ha", "check", "--data-dir", str(readonly.data_dir), check=False)
    assert check.returncode == 1 and f"witness {witness.address} UNREACHABLE" in check.stdout, check.stdout
    assert local(readonly)["role"] == "readonly" and local(primary)["role"] == "primary"
    assert not events_of(primary, "Failover")

    witness2 = witness.reopen()
    try:
        # (on every worker: the others follow the first one's view, written every check interval)
        wait_until(lambda: all((r := local(readonly))["alarm"] is None and {i["target"]: i["reachable"] for i in
                                                                          r["failover_inputs"]}[witness.address]
                               for _ in range(4)), timeout=30, what="the witness alarm to clear")
        wait_until(lambda: all(input_metrics(readonly)[("witness", witness.address)] == 1.0 for _ in range(4)),
                   timeout=10, what="the metric of every worker")
        wait_until(lambda: events_of(primary, "WitnessReachable"), timeout=30, what="the HA event of its return")
        assert len(events_of(primary, "WitnessUnreachable")) == 1
        check = run_cli("ha", "check", "--data-dir", str(readonly.data_dir), check=False)
        assert check.returncode == 0 and f"witness {witness.address} reachable" in check.stdout, check.stdout
    finally:
        witness2.close()
