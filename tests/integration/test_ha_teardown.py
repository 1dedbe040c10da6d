"""'safehold ha teardown': a cluster back to standalone servers, as real processes on 127.0.0.1.

Two stories. (1) A primary with a secondary and a streaming read-only server: the secondary leaves,
then the primary dissolves the cluster while it serves (no replication slot, role or login left, base
pg_hba.conf, only itself in the registry), the read-only server leaves a primary that is down (it
prints what is left there), and after a restart the primary is a working standalone server.
(2) A read-only server leaves a live primary: the primary forgets it, and the server becomes a
standalone copy under a new cluster id holding every write made before, also while its replica was
down, that takes writes of its own the primary never sees.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from safehold.config import load_settings, write_settings
from safehold.domain import ServerRole
from safehold.ha.teardown import spool_pending
from safehold.pg import conf
from tests.support import (
    SAFEHOLD,
    Server,
    app_connect,
    make_readonly,
    make_secondary,
    run_cli,
    running_server,
    seed_account,
    superuser_connect,
    wait_until,
)

BASE_HBA = [line for line in conf.render_hba([]).splitlines() if line and not line.startswith("#")]


@pytest.fixture()
def base(server_root: Path) -> Path:
    return Path(tempfile.mkdtemp(dir=server_root))


@pytest.fixture()
def primary(base: Path) -> Iterator[Server]:
    with running_server(base / "primary") as server:
        yield server


def teardown_cli(server: Server, *extra: str, check: bool = True) -> tuple[int, str, str]:
    """'safehold ha teardown' with no terminal on stdin (as under cron or CI)."""
    proc = run_cli("ha", "teardown", "--data-dir", str(server.data_dir), *extra, check=check, input="")
    assert "Traceback" not in proc.stdout + proc.stderr
    return proc.returncode, proc.stdout, proc.stderr


def safehold_slots_and_roles(server: Server) -> tuple[list[str], list[str]]:
    with superuser_connect(server, "postgres") as c:
        slots = [r[0] for r in c.execute("SELECT slot_name FROM pg_replication_slots ORDER BY 1")]
        roles = [r[0] for r in c.execute("SELECT rolname FROM pg_roles WHERE rolname ~ '^(repl|app)_' ORDER BY 1")]
    return slots, roles


def registry(server: Server) -> list[tuple[str, str]]:
    with app_connect(server.data_dir) as c:
        return [(str(r[0]), r[1]) for r in c.execute("SELECT id, role FROM servers ORDER BY registered_at")]


def cluster_id(server: Server) -> str:
    with app_connect(server.data_dir) as c:
        return str(c.execute("SELECT cluster_id FROM cluster").fetchone()[0])


def hba_rules(server: Server) -> list[str]:
    text = (server.data_dir / "pg" / "pg_hba.conf").read_text()
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def server_id(server: Server) -> str:
    return load_settings(server.data_dir).server.id


def replica_marker(server: Server) -> dict[str, str]:
    return dict(json.loads((server.data_dir / "pg" / conf.MARKER_FILE).read_text())["primary"])


def password_of(server: Server, token: str, account: str) -> str:
    with server.client(token) as c:
        r = c.get(f"/accounts/{account}/password")
        assert r.status_code == 200, r.text
        return str(r.json()["password"])


def test_the_primary_dissolves_its_cluster_and_serves_on_as_a_standalone_server(
        primary: Server, base: Path) -> None:
    others: list[Server] = []
    try:
        secondary = make_secondary(primary, base / "secondary")
        others.append(secondary)
        readonly = make_readonly(primary, base / "readonly")
        others.append(readonly)
        readonly.cli("db", "start")  # its replica streams: its slot at the primary is in use
        ro_names = replica_marker(readonly)
        wait_until(lambda: _slot_active(primary, ro_names["slot"]), timeout=30, what="the replica to stream")
        token = primary.login()
        _, before = seed_account(primary, token, "kept-through-teardown")
        assert hba_rules(primary) != BASE_HBA

        # the secondary leaves first: its registry row goes, its login stays until the primary's turn
        secondary.start()  # it lists itself in the registry
        assert server_id(secondary) in dict(registry(primary))
        secondary.stop()
        code, said, _ = teardown_cli(secondary, "--yes")
        assert code == 0, said
        login = "app_" + uuid.UUID(server_id(secondary)).hex[:12]
        assert login in said and "safehold init" in said and "no database of its own" in said
        assert "not listed" not in said
        assert server_id(secondary) not in dict(registry(primary))
        assert login in safehold_slots_and_roles(primary)[1]

        # no terminal and no --yes: refused with a clear message, nothing changed
        code, said, err = teardown_cli(primary, check=False)
        assert code == 1 and "--yes" in err and "no terminal" in err
        assert load_settings(primary.data_dir).server.role == ServerRole.PRIMARY

        code, said, _ = teardown_cli(primary, "--yes")
        assert code == 0, said
        assert "readonly" in said and server_id(readonly) in said  # it names the server it detached
        assert "next start" in said  # it was serving meanwhile
        slots, roles = safehold_slots_and_roles(primary)
        assert slots == [] and roles == []
        assert hba_rules(primary) == BASE_HBA
        assert registry(primary) == [(server_id(primary), "standalone")]
        settings = load_settings(primary.data_dir, env={})
        assert settings.server.role == ServerRole.STANDALONE
        assert (settings.ha.cluster_id, settings.ha.synchronous, settings.ha.failover.enabled) == (None, False, False)
        with pytest.raises(Exception, match="authentication failed|no pg_hba.conf entry|does not exist"):
            app_connect(secondary.data_dir)  # the secondary's login is gone
        _, said, _ = teardown_cli(primary, "--yes")
        assert "nothing to tear down" in said  # twice is fine

        # the read-only server leaves while the primary's database is down: it says what stays there
        primary.stop()
        primary.cli("db", "stop")
        readonly.cli("db", "stop")
        code, said, _ = teardown_cli(readonly, "--yes")
        assert code == 0, said
        assert "cannot be reached" in said
        assert f"DROP ROLE IF EXISTS {ro_names['user']};" in said
        assert f"pg_drop_replication_slot('{ro_names['slot']}')" in said
        assert "SEPARATE COPY" in said
        assert load_settings(readonly.data_dir).server.role == ServerRole.STANDALONE

        # after a restart: a working standalone server
        primary.start()
        with primary.client() as c:
            assert c.get("/health").json()["server"]["role"] == "standalone"
        token = primary.login()
        assert password_of(primary, token, before) == "kept-through-teardown"
        _, after = seed_account(primary, token, "written-standalone", resource="db02")
        assert password_of(primary, token, after) == "written-standalone"
        assert primary.cli("audit", "verify").returncode == 0
        with primary.client(token) as c:
            assert [s["id"] for s in c.get("/ha/status").json()["servers"]] == [server_id(primary)]
        status = primary.cli("ha", "status").stdout
        assert "primary" in status and "readonly" not in status and "secondary" not in status
    finally:
        for s in reversed(others):
            s.cleanup()


def _slot_active(server: Server, slot: str) -> bool:
    with superuser_connect(server, "postgres") as c:
        row = c.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone()
    return bool(row and row[0])


def test_a_readonly_server_leaves_and_becomes_a_separate_standalone_copy(primary: Server, base: Path) -> None:
    readonly = make_readonly(primary, base / "readonly")
    try:
        ro_id, names = server_id(readonly), replica_marker(readonly)
        token = primary.login()
        _, replicated = seed_account(primary, token, "replicated-pw")
        readonly.start()
        code, _, err = teardown_cli(readonly, "--yes", check=False)
        assert code == 1 and "running" in err and "stop it" in err  # not under a serving server
        readonly.stop()
        # written while the read-only server and its replica are down: the teardown catches up first
        _, late = seed_account(primary, token, "written-while-replica-down", resource="db-late")

        code, said, _ = teardown_cli(readonly, "--yes")
        assert code == 0, said
        assert "SEPARATE COPY" in said and "promoting the replica" in said
        slots, roles = safehold_slots_and_roles(primary)
        assert names["slot"] not in slots and names["user"] not in roles
        assert ro_id not in dict(registry(primary))
        assert not (readonly.data_dir / "pg" / conf.STANDBY_SIGNAL).exists()
        assert not (readonly.data_dir / "pg" / conf.REPLICATION_PASSFILE).exists()
        settings = load_settings(readonly.data_dir, env={})
        assert settings.server.role == ServerRole.STANDALONE
        assert (settings.ha.cluster_id, settings.ha.primary_db_host, settings.ha.primary_db_port) == (None,) * 3
        assert "nothing to tear down" in teardown_cli(readonly, "--yes")[1]
        # what it audited as a read-only server (its start and stop) reached the primary before it left
        assert spool_pending(settings) == 0
        with primary.client(token) as c:
            shipped = c.get("/audit", params={"server": ro_id, "limit": 100}).json()["items"]
            assert {"server_started", "server_stopped"} <= {r["action"] for r in shipped}
        assert primary.cli("audit", "verify").returncode == 0

        readonly.start()  # it stopped the database it started
        with readonly.client() as c:
            assert c.get("/health").json()["server"]["role"] == "standalone"
        assert cluster_id(readonly) != cluster_id(primary)
        assert registry(readonly) == [(ro_id, "standalone")]
        slots, roles = safehold_slots_and_roles(readonly)  # the copy's catalog forgot the old cluster too
        assert slots == [] and roles == []
        ro_token = readonly.login()
        assert password_of(readonly, ro_token, replicated) == "replicated-pw"
        assert password_of(readonly, ro_token, late) == "written-while-replica-down"
        _, own = seed_account(readonly, ro_token, "only-on-the-copy", resource="db-copy")
        assert password_of(readonly, ro_token, own) == "only-on-the-copy"
        with primary.client(token) as c:
            assert c.get(f"/accounts/{own}/password").status_code == 404  # a separate copy
        assert readonly.cli("audit", "verify").returncode == 0
        with readonly.client(ro_token) as c:
            assert [s["id"] for s in c.get("/ha/status").json()["servers"]] == [ro_id]
    finally:
        readonly.cleanup()


def test_clear_errors_for_a_missing_directory_and_a_broken_configuration(base: Path) -> None:
    missing = run_cli("ha", "teardown", "--yes", "--data-dir", str(base / "nope"), check=False)
    assert missing.returncode == 1 and "does not exist" in missing.stderr and "Traceback" not in missing.stderr
    broken = base / "broken"
    broken.mkdir()
    (broken / "safehold.toml").write_text("[server\nid = ")
    bad = run_cli("ha", "teardown", "--yes", "--data-dir", str(broken), check=False)
    assert bad.returncode == 1 and "not valid TOML" in bad.stderr and "Traceback" not in bad.stderr


def _answer(server: Server, answer: str) -> subprocess.CompletedProcess[str]:
    """'safehold ha teardown' on a terminal (a pty), answering its question with `answer`."""
    main, terminal = os.openpty()
    try:
        with os.fdopen(main, "w") as keyboard:
            keyboard.write(answer + "\n")
            keyboard.flush()
            return subprocess.run([*SAFEHOLD, "ha", "teardown", "--data-dir", str(server.data_dir)], stdin=terminal,
                                  capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})
    finally:
        os.close(terminal)


def test_on_a_terminal_it_asks_first_and_a_no_changes_nothing(server: Server) -> None:
    """A server that made itself primary (e.g. 'ha add-secondary' whose setup file was never used)."""
    stored = load_settings(server.data_dir, env={})
    write_settings(stored.model_copy(update={
        "server": stored.server.model_copy(update={"role": ServerRole.PRIMARY}),
        "ha": stored.ha.model_copy(update={"cluster_id": str(uuid.uuid4())})}))
    before = (server.data_dir / "safehold.toml").read_text()

    refused = _answer(server, "n")
    assert refused.returncode == 1 and "aborted; nothing was changed" in refused.stderr
    assert "Tear it down?" in refused.stdout and "writing the settings" in refused.stdout  # the plan, listed
    assert (server.data_dir / "safehold.toml").read_text() == before

    agreed = _answer(server, "y")
    assert agreed.returncode == 0, agreed.stdout + agreed.stderr
    assert load_settings(server.data_dir).server.role == ServerRole.STANDALONE
    assert load_settings(server.data_dir).ha.cluster_id is None
