"""Cluster-wide alert settings and failover policy, with real servers and real receivers on 127.0.0.1.

The story: alert channels (a webhook by the CLI, syslog by the API) and the automatic failover policy
are set on the primary only. The read-only server follows them from its replica without any edit to its
safehold.toml — it shows the same policy, starts and stops its failover watch when the primary's
policy changes — and refuses to change them itself. Then the primary dies and the read-only server is
promoted: its Failover event reaches the receivers configured on the old primary."""

from __future__ import annotations

import json
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from safehold.config import CONFIG_NAME
from tests.integration.test_alerts import SECRETS, WEBHOOK_SECRET, Receivers, receivers  # noqa: F401 - fixture
from tests.integration.test_ha_failover import kill_app, kill_database, local
from tests.support import Listener, Server, pg_dump, run_cli, running_pair, wait_until


@pytest.fixture()
def pair(server_root: Path) -> Iterator[tuple[Server, Server]]:
    with running_pair(Path(tempfile.mkdtemp(dir=server_root))) as servers:
        yield servers


def webhook_events(r: Receivers) -> list[dict]:
    return [h["body"] for h in r.webhook.requests]


def test_every_server_follows_the_primarys_settings_and_a_promoted_one_alerts_the_same_receivers(
        receivers: Receivers, pair: tuple[Server, Server]) -> None:  # noqa: F811 - the fixture
    primary, readonly = pair
    receivers.clear()
    secret_file = receivers.base / "cluster-webhook-secret"
    secret_file.write_text(WEBHOOK_SECRET + "\n")
    secret_file.chmod(0o600)

    # on the primary: a webhook by the CLI (its secret read from a file, stored sealed), syslog by the API
    r = run_cli("alerts", "set", "webhook", f"url={receivers.webhook.url}", f"secret_file={secret_file}",
                f"ca_file={receivers.ca}", "--data-dir", str(primary.data_dir))
    assert "saved for the whole cluster" in r.stdout, r.stdout + r.stderr
    token = primary.login()
    with primary.client(token) as c:
        r = c.put("/ha/alerts/syslog", json={"fields": {"transport": "udp", "port": receivers.syslog.udp_port,
                                                        "facility": "local3"}})
        assert r.status_code == 200, r.text
        r = c.put("/ha/alerts/script", json={"fields": {"path": "/bin/true"}})
        assert r.status_code == 422 and "names a file on the server's host" in r.text, r.text
    witness, gateway = Listener("127.0.0.2"), Listener("127.0.0.3")
    try:
        with primary.client(token) as c:
            r = c.patch("/ha/failover", json={"enabled": True, "ping_interval": 5, "ping_iterations": 4,
                                              "witness_targets": [witness.address], "gateway": gateway.address})
            assert r.status_code == 200, r.text
            policy = r.json()["policy"]
            r = c.patch("/ha/failover", json={"witness_targets": ["127.0.0.1:5"]})
            assert r.status_code == 422 and "one of this cluster's own addresses" in r.text, r.text

        # the read-only server sees the same, from its replica; its safehold.toml has neither section
        config = tomllib.loads((readonly.data_dir / CONFIG_NAME).read_text())
        assert not {"email", "syslog", "snmp", "webhook", "script"} & set(config.get("alerts", {}))
        assert not config.get("ha", {}).get("failover", {}).get("enabled")
        # an API token made on the primary: the read-only server reads it from its replica (/ha/ it answers itself)
        with primary.client(token) as c:
            api_token = c.post("/me/tokens", json={"name": "cluster-settings"}).json()["token"]
        with readonly.client(api_token) as c:
            wait_until(lambda: c.get("/ha/failover").json()["policy"] == policy, timeout=30,
                       what="the policy on the read-only server")
            seen = c.get("/ha/alerts").json()
            assert [ch["name"] for ch in seen["channels"]] == ["syslog", "webhook"] and seen["source"] == "database"
            for secret in SECRETS:
                assert secret not in json.dumps(seen)
            r = c.patch("/ha/failover", json={"enabled": False})
            assert r.status_code == 503 and r.json()["error"]["code"] == "read_only", r.text
        shown = run_cli("ha", "failover", "--data-dir", str(readonly.data_dir)).stdout
        assert "cluster-wide (database)" in shown and f"witness targets: {witness.address}" in " ".join(shown.split())
        r = run_cli("ha", "failover", "--disable", "--data-dir", str(readonly.data_dir), check=False)
        assert r.returncode == 1 and "change it on the primary" in " ".join(r.stderr.split()), r.stderr
        # ... and runs its failover watch with it, started and stopped by the primary's changes
        wait_until(lambda: "automatic failover: enabled by the cluster's policy" in readonly.log(), timeout=30,
                   what="the read-only server to start its failover watch")
        with primary.client(token) as c:
            assert c.patch("/ha/failover", json={"enabled": False}).status_code == 200
        wait_until(lambda: "the cluster's policy changed (disabled)" in readonly.log(), timeout=30,
                   what="the read-only server to stop its failover watch")
    finally:
        witness.close()
        gateway.close()

    # the read-only server's dispatcher follows too: a test alert from it reaches the webhook
    with readonly.client(api_token) as c:
        r = c.post("/ha/alerts/test", json={"channel": "webhook"})
        assert r.status_code == 200, r.text

    # the secret (and the webhook URL) are sealed in the database: not in a dump of it
    dump = pg_dump(primary)
    assert b"cluster_settings" in dump
    assert WEBHOOK_SECRET.encode() not in dump and receivers.webhook.url.encode() not in dump

    # the primary dies; the read-only server is promoted: its Failover event goes to the same receivers
    receivers.clear()
    kill_database(primary)
    kill_app(primary)
    promoted = run_cli("ha", "promote", "--data-dir", str(readonly.data_dir))
    assert "acting primary (generation 2)" in promoted.stdout, promoted.stdout
    wait_until(lambda: local(readonly)["role"] == "primary", timeout=30, what="the promotion")
    try:
        wait_until(lambda: any(e["event"] == "Failover" for e in webhook_events(receivers)), timeout=60,
                   what="the promoted server's Failover event at the webhook configured on the old primary")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{readonly.log()[-3000:]}") from None
    assert all(h["signed"] for h in receivers.webhook.requests)
    wait_until(lambda: any(b"Failover" in m for _, m in receivers.syslog.messages), timeout=30,
               what="the Failover event at the syslog receiver")
    for secret in SECRETS:
        assert secret.encode() not in readonly.log().encode()
