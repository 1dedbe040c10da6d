"""A promotion interrupted halfway: the read-only server's replica was promoted, but the promotion was never
recorded in the cluster.  The server says so at once, raises PromotionIncomplete once it lasts longer than
a promotion takes (it never silently serves as a read-only server on a writable database), and running
'safehold ha promote' again finishes it: the server takes over and the alarm is cleared."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest

from tests.support import Server, run_cli, running_pair, superuser_connect, wait_until

FAST = {"SAFEHOLD_HA__CHECK_INTERVAL": "0.5", "SAFEHOLD_HA__PEER_TIMEOUT": "0.5", "SAFEHOLD_LOG_LEVEL": "INFO"}


def local(server: Server) -> dict[str, Any]:
    with server.client() as c:
        return dict(c.get("/ha/local").json())


def alarm_of(server: Server) -> str | None:
    alarm = local(server).get("alarm")
    return alarm["condition"] if alarm else None


def test_an_interrupted_promotion_is_reported_and_finished_by_promoting_again(
        server_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in FAST.items():
        monkeypatch.setenv(k, v)
    with running_pair(Path(tempfile.mkdtemp(dir=server_root))) as (_primary, readonly):
        # the replica is promoted, and nothing else happens (as if 'safehold ha promote' died right after it)
        with superuser_connect(readonly) as conn:
            assert conn.execute("SELECT pg_promote()").fetchone()[0] is True
        wait_until(lambda: "its replica was promoted but the promotion is not recorded in the cluster" in readonly.log(),
                   timeout=30, what="the read-only server to say so")
        assert local(readonly)["mode"] != "read-write"
        wait_until(lambda: alarm_of(readonly) == "PromotionIncomplete", timeout=60, what="the alarm")
        assert "run 'safehold ha promote' on this server again" in local(readonly)["alarm"]["message"]
        assert readonly.log().count("HA event RaiseAlarm: a promotion of this server was interrupted") == 1

        promoted = run_cli("ha", "promote", "--data-dir", str(readonly.data_dir))
        assert "acting primary (generation 2)" in promoted.stdout, promoted.stdout
        wait_until(lambda: local(readonly)["mode"] == "read-write", timeout=30, what="the take-over")
        assert alarm_of(readonly) is None
        # (told by the first worker, which may take over a check interval after the worker that answered)
        wait_until(lambda: "HA event ClearAlarm: the promotion of this server is complete" in readonly.log(),
                   timeout=30, what="the alarm's clearing to be told")
