"""'safehold ha check' (could this server take over right now?) and 'safehold ha failover' (the
automatic failover policy) on a real primary and a real read-only server on 127.0.0.1.

The readiness check passes on both, one line per check, and fails naming the key check when the
server is given another cluster's key file. The failover command refuses out-of-range values, a
duplicated witness, too many witnesses and a witness that is the primary database itself, each with
a clear message and without changing the stored policy; a good call on the primary stores it for the
whole cluster, and the read-only server follows it (and refuses to change it). No witness or gateway
is contacted by these commands."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from safehold.config import CONFIG_NAME, load_settings
from safehold.crypto.keyfile import create_key_file
from tests.support import Server, run_cli, running_pair, wait_until

CHECKS = ["key file", "audit spool", "disk (data)", "disk (database)", "replication", "generation"]


@pytest.fixture(scope="module")
def cluster(server_root: Path) -> Iterator[tuple[Server, Server]]:
    """The primary + read-only deployment model, both serving."""
    with running_pair(Path(tempfile.mkdtemp(dir=server_root))) as pair:
        yield pair


def check(server: Server, env: dict[str, str] | None = None) -> tuple[int, list[str]]:
    proc = run_cli("ha", "check", "--data-dir", str(server.data_dir), check=False, env=env)
    return proc.returncode, proc.stdout.splitlines()


def lines_by_name(lines: list[str]) -> dict[str, str]:
    """'✓ key file     matches …' -> {'key file': '✓ key file     matches …'} for the check lines."""
    out = {}
    for line in lines:
        if line[:1] in "✓✗":
            for name in [*CHECKS, "peer primary", "peer readonly", "peers"]:
                if line[2:].startswith(name + " "):
                    out[name] = line
    return out


def test_check_passes_on_the_primary_and_the_readonly_server(cluster: tuple[Server, Server]) -> None:
    primary, readonly = cluster
    code, lines = check(primary)
    assert code == 0, "\n".join(lines)
    got = lines_by_name(lines)
    assert set(got) == {*CHECKS, "peer readonly"}, lines
    assert all(line.startswith("✓") for line in got.values())
    assert "matches the database (key id " in got["key file"]
    assert "n/a" in got["replication"] and "n/a" in got["audit spool"]
    assert lines[-1].startswith("ready: all 7 checks passed")

    # the replica streams (it may take a moment after the start)
    code, lines = wait_until(lambda: (r := check(readonly))[0] == 0 and r, timeout=60,
                             what="the read-only server's checks to pass")
    got = lines_by_name(lines)
    assert set(got) == {*CHECKS, "peer primary"}, lines
    assert "streaming" in got["replication"]
    assert f"{readonly.data_dir / 'spool'} is writable" in got["audit spool"]
    assert "generation" in got["generation"] and "superseded" not in got["generation"]
    assert f"{primary.url} answers" in got["peer primary"]


def test_check_api_for_administrators(cluster: tuple[Server, Server]) -> None:
    primary, _ = cluster
    with primary.client(primary.login()) as c:
        r = c.get("/ha/checks")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["ok"] is True and [c["name"] for c in body["checks"]] == [*CHECKS, "peer readonly"]
    with httpx.Client(base_url=f"{primary.url}/api/v1", verify=primary.ssl_context()) as anonymous:
        assert anonymous.get("/ha/checks").status_code == 401


def test_check_fails_with_another_clusters_key_file(cluster: tuple[Server, Server], tmp_path: Path) -> None:
    primary, readonly = cluster
    other = tmp_path / "other.key"
    create_key_file(other)
    for server in (primary, readonly):
        code, lines = check(server, env={"SAFEHOLD_SECURITY__KEY_FILE": str(other)})
        assert code == 1, "\n".join(lines)
        key_line = lines_by_name(lines)["key file"]
        assert key_line.startswith("✗") and "does not match the database" in key_line
        assert "key file" in lines[-1] and lines[-1].startswith("not ready: 1 of")


def failover(server: Server, *args: str) -> tuple[int, str]:
    proc = run_cli("ha", "failover", "--data-dir", str(server.data_dir), *args, check=False)
    return proc.returncode, proc.stdout + proc.stderr


_tokens: dict[str, str] = {}


def policy(server: Server, primary: Server | None = None) -> dict:
    """The cluster's failover policy as a server sees it (from its database), with an API token made on the
    primary (a read-only server reads it from its replica)."""
    primary = primary or server
    if primary.url not in _tokens:
        with primary.client(primary.login()) as c:
            _tokens[primary.url] = c.post("/me/tokens", json={"name": "policy-check"}).json()["token"]
    with server.client(_tokens[primary.url]) as c:
        r = c.get("/ha/failover")
        assert r.status_code == 200, r.text
        return r.json()


def test_failover_refuses_bad_values_and_changes_nothing(cluster: tuple[Server, Server]) -> None:
    primary, readonly = cluster
    before = policy(primary)
    files = [(s.data_dir / CONFIG_NAME).read_bytes() for s in (primary, readonly)]
    db = load_settings(readonly.data_dir).ha
    assert db.primary_db_host == "127.0.0.1"
    refused = [
        (["--ping-iterations", "25"], "ping_iterations must be between 2 and 20 (got 25)"),
        (["--ping-iterations", "1"], "ping_iterations must be between 2 and 20 (got 1)"),
        (["--ping-interval", "0.5"], "ping_interval must be between 1 and 3600 (got 0.5)"),
        (["--witness", "192.0.2.10", "--witness", "192.0.2.10"],
         "witness '192.0.2.10' is given twice (as '192.0.2.10' too)"),
        ([arg for w in ("192.0.2.10", "192.0.2.11", "192.0.2.12:53", "192.0.2.13") for arg in ("--witness", w)],
         "at most 3 witness targets (got 4)"),
        (["--witness", f"{db.primary_db_host}:{db.primary_db_port}"],
         f"witness '127.0.0.1:{db.primary_db_port}' is one of this cluster's own addresses (127.0.0.1:"),
        (["--witness", "bad host!"], "witness 'bad host!': 'bad host!' is not a valid host name or IP address"),
        (["--gateway", "192.0.2.1:99999"], "gateway '192.0.2.1:99999': the port must be a number from 1 to 65535"),
    ]
    for args, message in refused:
        code, output = failover(primary, *args)
        assert code == 2, (args, output)
        assert message in " ".join(output.split()), (args, output)
        assert "nothing was changed" in output
        assert policy(primary)["version"] == before["version"], args

    # the policy is the cluster's: a read-only server shows it but does not change it
    code, output = failover(readonly, "--enable")
    assert code == 1 and "change it on the primary" in " ".join(output.split()), output
    assert policy(primary)["version"] == before["version"]
    assert [(s.data_dir / CONFIG_NAME).read_bytes() for s in (primary, readonly)] == files


def test_failover_writes_a_good_policy(cluster: tuple[Server, Server]) -> None:
    primary, readonly = cluster
    # documentation addresses (TEST-NET): written into the policy, never contacted by the command
    code, output = failover(primary, "--enable", "--ping-interval", "5", "--ping-iterations", "4",
                            "--witness", "192.0.2.10", "--witness", "198.51.100.7:53", "--gateway", "192.0.2.1",
                            "--no-may-promote")
    assert code == 0, output
    fo = policy(primary)["policy"]
    assert (fo["enabled"], fo["ping_interval"], fo["ping_iterations"], fo["witness_targets"], fo["gateway"],
            fo["may_promote"]) == (True, 5.0, 4, ["192.0.2.10", "198.51.100.7:53"], "192.0.2.1", False)
    text = " ".join(output.split())
    assert "automatic failover: enabled" in text
    assert "raise an alarm (may not promote) after 4 failed pings in a row (about 20 s)" in text
    assert "witness targets: 192.0.2.10 (ICMP ping), 198.51.100.7:53 (TCP connect)" in text
    # the read-only server follows it (its replica), without any edit to its safehold.toml
    wait_until(lambda: policy(readonly, primary)["policy"] == fo, timeout=30,
               what="the policy on the read-only server")

    # a third witness is added to the two; --clear-witnesses starts over; then off again
    assert failover(primary, "--witness", "192.0.2.20")[0] == 0
    assert policy(primary)["policy"]["witness_targets"] == ["192.0.2.10", "198.51.100.7:53", "192.0.2.20"]
    code, output = failover(primary, "--clear-witnesses", "--gateway", "default", "--may-promote", "--disable")
    assert code == 0, output
    fo = policy(primary)["policy"]
    assert (fo["enabled"], fo["witness_targets"], fo["gateway"], fo["may_promote"]) == (False, [], None, True)
    # without options: shows the policy and changes nothing
    version = policy(primary)["version"]
    code, output = failover(readonly)
    assert code == 0 and "automatic failover: disabled" in output
    assert policy(primary)["version"] == version
