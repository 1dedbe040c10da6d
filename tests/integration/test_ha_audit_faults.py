"""Audit records under faults, each server its own process on 127.0.0.1: a read-only server whose spool is
on a full disk, and a server that goes through promote -> switchover back -> promote.  Every acknowledged
audit record ends up in the database exactly once, in its server's chain, and the chain verifies."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from safehold.audit.chain import GENESIS, AuditEvent, ChainConflict, extend
from safehold.config import load_settings
from safehold.storage import audit as audit_store
from safehold.storage.db import app_target, make_engine
from tests.integration.test_ha_failover import kill_app, kill_database, local
from tests.support import (
    Server,
    accounts_in,
    app_connect,
    run_cli,
    running_pair,
    seed_account,
    serves_users_itself,
    wait_until,
)

# --- the shipper stores a record once, and only the same record -------------------------------------------


def test_a_shipped_record_that_is_stored_counts_only_if_it_is_the_same_record(shared_server: Server) -> None:
    server_id = str(uuid.uuid4())
    chain = extend(b"k" * 32, server_id, "readonly", 0, GENESIS,
                   [AuditEvent(actor="u", action="login", result="success") for _ in range(3)])
    fork = extend(b"k" * 32, server_id, "readonly", 1, chain[0].mac,
                  [AuditEvent(actor="other", action="login", result="success")])[0]
    unlinked = extend(b"k" * 32, server_id, "readonly", 1, b"x" * 32,
                      [AuditEvent(actor="u", action="login", result="success")])[0]

    async def go() -> None:
        engine = make_engine(app_target(load_settings(shared_server.data_dir)), pool_size=1)
        try:
            for case, batches, conflict_at in [
                ("the same batch twice", [chain, chain], None),
                ("an overlapping batch", [chain[:2], chain[1:]], None),
                ("another record at a stored seq", [chain[:2], [fork]], 2),
                ("a record that does not link to the stored one before it", [chain[:1], [unlinked]], 2),
            ]:
                async with engine.connect() as conn:
                    tx = await conn.begin()  # rolled back: the shared server's log is left as it was
                    try:
                        if conflict_at is None:
                            for b in batches:
                                await audit_store.insert_shipped(conn, b)
                            assert await audit_store.head(conn, server_id) == (3, chain[2].mac), case
                            rows = await audit_store.chain_page(conn, server_id, 0, 10)
                            assert [s.record.mac for s in rows] == [r.mac for r in chain], case
                        else:
                            await audit_store.insert_shipped(conn, batches[0])
                            with pytest.raises(ChainConflict, match=f"diverged at seq {conflict_at}"):
                                await audit_store.insert_shipped(conn, batches[1])
                    finally:
                        await tx.rollback()
        finally:
            await engine.dispose()

    asyncio.run(go())


@pytest.mark.parametrize("n", [1, 3, 256])
def test_appended_records_and_their_head_move_together(shared_server: Server, n: int) -> None:
    """Appending n records (256: the audit writer's largest group commit): every record stored in order,
    linked to the one before, and the head at the last; a second append links to the first's head."""
    server_id = str(uuid.uuid4())
    key = b"k" * 32

    async def go() -> None:
        engine = make_engine(app_target(load_settings(shared_server.data_dir)), pool_size=1)
        try:
            async with engine.connect() as conn:
                tx = await conn.begin()  # rolled back: the shared server's log is left as it was
                try:
                    first = await audit_store.append(conn, key, server_id, "primary",
                                                     [AuditEvent(actor="u", action="login", result="success")
                                                      for _ in range(n)])
                    assert await audit_store.head(conn, server_id) == (n, first[-1].mac)
                    second = await audit_store.append(conn, key, server_id, "primary",
                                                      [AuditEvent(actor="v", action="logout", result="success")])
                    assert second[0].seq == n + 1 and second[0].prev_mac == first[-1].mac
                    rows = await audit_store.chain_page(conn, server_id, 0, n + 10)
                    assert [s.record.mac for s in rows] == [r.mac for r in [*first, *second]]
                finally:
                    await tx.rollback()
        finally:
            await engine.dispose()

    asyncio.run(go())


# --- story A: a read-only server in emergency mode whose spool disk fills up ------------------------------


@contextlib.contextmanager
def full_tmpfs(at: Path, size: str = "256k") -> Iterator[Path]:
    """A small tmpfs mounted at ``at`` (root only); unmounted afterwards whatever happens."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    at.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(at)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield at
    finally:
        subprocess.run(["umount", "-l", str(at)], capture_output=True)


def fill(directory: Path) -> Path:
    """Fill the file system of ``directory`` up to the last byte; returns the filler file."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for chunk in (65536, 4096, 1):
            while True:
                try:
                    if os.write(fd, b"\0" * chunk) < chunk:
                        break
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
                    break
    finally:
        os.close(fd)
    return filler


def retrieve(server: Server, token: str, account_id: str) -> tuple[int, str]:
    with server.client(token) as c:
        r = c.get(f"/accounts/{account_id}/password")
    return r.status_code, r.text


def chain_of(data_dir: Path, server_id: str) -> list[tuple[int, str]]:
    """(seq, action) of a server's audit records in a database, by seq."""
    with app_connect(data_dir) as conn:
        return [(int(seq), str(action)) for seq, action in conn.execute(
            "SELECT seq, action FROM audit_log WHERE server_id = %s ORDER BY seq", (server_id,))]


def assert_exactly_once(data_dir: Path, server_id: str, retrievals: int) -> None:
    records = chain_of(data_dir, server_id)
    seqs = [seq for seq, _ in records]
    assert seqs == list(range(1, len(seqs) + 1)), f"each record once, none missing: {seqs}"
    got = Counter(action for _, action in records)["password_retrieved"]
    assert got == retrievals, f"{retrievals} acknowledged retrievals, {got} in the audit log"


def test_a_full_spool_disk_refuses_retrievals_and_loses_no_acknowledged_record(server_root: Path) -> None:
    base = Path(tempfile.mkdtemp(dir=server_root))
    spool_dir = base / "readonly" / "spool"
    with contextlib.ExitStack() as stack, running_pair(
            base, before_start=lambda ro: stack.enter_context(full_tmpfs(spool_dir))) as (primary, readonly):
        _, aid = seed_account(primary, primary.login(), "spool-secret-1")
        ro_id = local(readonly)["server_id"]

        # the primary's app dies (its database stays): the read-only server serves in emergency mode
        kill_app(primary)
        wait_until(lambda: local(readonly)["mode"] == "read-only-emergency" and serves_users_itself(readonly),
                   timeout=30, what="read-only emergency mode")
        wait_until(lambda: aid in accounts_in(readonly.data_dir), what="the replica to have the account")
        token = readonly.login()
        acked = 0
        status, body = retrieve(readonly, token, aid)
        assert status == 200 and "spool-secret-1" in body, body
        acked += 1

        # the spool's disk fills up: retrievals go on while the record fits in the file's last page ...
        filler = fill(spool_dir)
        refused = None
        for _ in range(40):
            status, body = retrieve(readonly, token, aid)
            if status != 200:
                refused = (status, body)
                break
            acked += 1
        # ... then the one whose record cannot be written whole is refused, and no password is shown
        assert refused is not None, "the disk never filled up"
        status, body = refused
        assert status == 503 and '"audit_unavailable"' in body, body
        assert "spool-secret-1" not in body and "Traceback" not in body and "Error" not in body, body
        assert retrieve(readonly, token, aid)[0] == 503  # still full: still refused
        assert "no space left" in (local(readonly)["audit_backlog"]["error"] or "").lower()

        # space is freed: retrievals work again, the alarm clears
        filler.unlink()
        status, body = retrieve(readonly, token, aid)
        assert status == 200 and "spool-secret-1" in body
        acked += 1
        assert local(readonly)["audit_backlog"]["error"] is None

        # the read-only server restarts fine on its spool (nothing torn in it)
        readonly.stop()
        readonly.start()
        status, _ = retrieve(readonly, readonly.login(), aid)
        assert status == 200
        acked += 1

        # the primary is back: every acknowledged record is shipped, each exactly once, and verifies
        primary.start()
        wait_until(lambda: local(readonly)["audit_backlog"]["pending"] == 0, timeout=60,
                   what="the spool to be shipped")
        assert_exactly_once(primary.data_dir, ro_id, acked)
        out = primary.cli("audit", "verify")
        assert "audit chain intact" in out.stdout, out.stdout + out.stderr


# --- story B: promote -> switchover back -> promote, with retrievals in between ---------------------------


def test_audit_sequences_survive_promote_switchover_back_and_promote(server_root: Path) -> None:
    with running_pair(Path(tempfile.mkdtemp(dir=server_root))) as (primary, readonly):
        _, aid = seed_account(primary, primary.login(), "cycle-secret-1")
        ro_id = local(readonly)["server_id"]
        on_readonly = 0  # retrievals acknowledged by the server that goes through every role

        def retrieve_on_readonly() -> None:
            nonlocal on_readonly
            status, body = retrieve(readonly, readonly.login(), aid)
            assert status == 200 and "cycle-secret-1" in body, body
            on_readonly += 1

        def spooled_in_emergency(retrievals: int) -> None:
            """The primary's app dies (its database stays): the read-only server serves in emergency mode and
            spools what it audits, shipped to the primary database; then the primary's app comes back."""
            kill_app(primary)
            wait_until(lambda: serves_users_itself(readonly), timeout=30, what="read-only emergency mode")
            wait_until(lambda: aid in accounts_in(readonly.data_dir), what="the replica to have it")
            for _ in range(retrievals):
                retrieve_on_readonly()
            wait_until(lambda: local(readonly)["audit_backlog"]["pending"] == 0, timeout=30, what="shipping")
            primary.start()

        def switch(to: Server, away: Server) -> None:
            out = run_cli("ha", "switchover", "--data-dir", str(away.data_dir), "--to", to.data_dir.name)
            assert "is the primary" in out.stdout, out.stdout + out.stderr
            wait_until(lambda: local(to)["role"] == "primary", timeout=30, what=f"{to.data_dir.name} as primary")
            wait_until(lambda: local(away)["role"] == "readonly", timeout=30, what=f"{away.data_dir.name} to follow")
            # once one worker says so, every worker does: none answers as a writer on a database that is a replica
            # (each look is a new connection, so both workers answer some)
            assert [local(away)["role"] for _ in range(8)] == ["readonly"] * 8

        spooled_in_emergency(1)
        switch(readonly, primary)  # promoted: its own chain goes on in its database
        retrieve_on_readonly()
        retrieve_on_readonly()
        switch(primary, readonly)  # switchover back: read-only again, it spools again
        spooled_in_emergency(2)
        switch(readonly, primary)  # promoted again
        retrieve_on_readonly()

        # every record of its chain exactly once, whatever role it was in, and the chain verifies
        assert_exactly_once(readonly.data_dir, ro_id, on_readonly)
        out = readonly.cli("audit", "verify")
        assert "audit chain intact" in out.stdout, out.stdout + out.stderr


# --- story C: a read-only server stopped in the middle of its promotion -----------------------------------


def test_a_server_stopped_during_its_promotion_ships_its_spool_before_writing(server_root: Path) -> None:
    with running_pair(Path(tempfile.mkdtemp(dir=server_root))) as (primary, readonly):
        _, aid = seed_account(primary, primary.login(), "stopped-secret-1")
        ro_id = local(readonly)["server_id"]
        wait_until(lambda: aid in accounts_in(readonly.data_dir), what="the replica to have the account")

        # the primary dies, database and all: the read-only server spools what it audits, nothing is shipped
        kill_database(primary)
        kill_app(primary)
        wait_until(lambda: serves_users_itself(readonly), timeout=30, what="read-only emergency mode")
        token = readonly.login()
        for _ in range(3):
            assert retrieve(readonly, token, aid)[0] == 200
        assert local(readonly)["audit_backlog"]["pending"] >= 4

        # the operator promotes it while its app hangs; the app dies before it noticed the promotion
        assert readonly.proc is not None
        readonly.proc.send_signal(signal.SIGSTOP)
        try:
            # --force: with the primary's database dead this long, its replica's data may look too old
            out = run_cli("ha", "promote", "--data-dir", str(readonly.data_dir), "--force")
            assert "the running server takes over by itself" in out.stdout, out.stdout + out.stderr
        finally:
            readonly.proc.kill()
            readonly.proc.wait()
            readonly.proc = None

        # it starts as the primary: its spooled records go into its database before it writes new ones
        readonly.start()
        assert local(readonly)["role"] == "primary"
        status, _ = retrieve(readonly, readonly.login(), aid)
        assert status == 200
        assert_exactly_once(readonly.data_dir, ro_id, 4)
        assert "shipped" in readonly.log() and "left in the spool" in readonly.log()
        out = readonly.cli("audit", "verify")
        assert "audit chain intact" in out.stdout, out.stdout + out.stderr
