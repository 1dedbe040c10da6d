"""What a read-only server keeps outside its database is shared by its worker processes: a session made on
one is known to the others, failed logins count across them, a TOTP step is accepted once."""

from __future__ import annotations

import datetime as dt
import multiprocessing
from pathlib import Path

from safehold.domain import Principal, UserRole
from safehold.ha.fencing import ConfirmedLeases
from safehold.runtime import local_state
from safehold.runtime.local_state import LocalState
from safehold.runtime.shared import SharedCounter
from safehold.runtime.writelease import clock

NOW = dt.datetime(2026, 12, 5, 12, 0, tzinfo=dt.UTC)
IDLE = dt.timedelta(minutes=30)
ALICE = Principal("u1", "alice", UserRole.USER, "t1", "session", "127.0.0.1", "csrf-1")


def _in_child(fn, *args):  # type: ignore[no-untyped-def]
    """``fn(*args)`` in a forked process (as a worker is); returns what it returned."""
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        return pool.apply(fn, args)


def _child_session(path: Path) -> str | None:
    p = LocalState(path).session(b"k1", NOW, IDLE)
    return None if p is None else f"{p.username}:{p.role.value}:{p.csrf_token}"


def _child_claim(path: Path, step: int) -> bool:
    return LocalState(path).claim_totp_step("u1", step, 0)


def _child_fail(path: Path) -> int:
    return LocalState(path).add_failure("u1", 0)


def test_a_session_made_in_one_process_is_known_to_another_until_it_ends(tmp_path: Path) -> None:
    path = tmp_path / local_state.FILE
    state = LocalState(path)
    state.add_session(b"k1", ALICE, NOW + IDLE)
    assert _in_child(_child_session, path) == "alice:user:csrf-1"
    state.end_sessions("t1")  # signed out on this worker: on every worker
    assert _in_child(_child_session, path) is None
    assert (path.stat().st_mode & 0o777) == 0o600


def test_a_session_expires_after_its_idle_time_and_is_renewed_by_use(tmp_path: Path) -> None:
    state = LocalState(tmp_path / "s.db")
    state.add_session(b"k", ALICE, NOW + IDLE)
    assert state.session(b"k", NOW + IDLE - dt.timedelta(seconds=1), IDLE) == ALICE  # used: 30 more minutes
    assert state.session(b"k", NOW + IDLE + dt.timedelta(minutes=10), IDLE) == ALICE
    assert state.session(b"k", NOW + 3 * IDLE, IDLE) is None
    assert state.session_count() == 0
    state.add_session(b"k2", ALICE, NOW)
    state.purge(NOW)
    assert state.session_count() == 0


def test_a_totp_step_is_accepted_once_whichever_process_sees_it(tmp_path: Path) -> None:
    path = tmp_path / local_state.FILE
    state = LocalState(path)
    assert state.claim_totp_step("u1", 100, 0) is True
    assert _in_child(_child_claim, path, 100) is False  # replayed on another worker
    assert _in_child(_child_claim, path, 101) is True
    assert state.claim_totp_step("u1", 101, 0) is False
    assert state.claim_totp_step("u2", 50, 60) is False  # the database knows a later one was used


def test_failed_logins_count_across_processes_and_a_lock_out_resets_them(tmp_path: Path) -> None:
    path = tmp_path / local_state.FILE
    state = LocalState(path)
    assert state.add_failure("u1", 2) == 3  # counts on from what the database holds
    assert _in_child(_child_fail, path) == 4
    state.lock_out("u1", NOW + IDLE)
    assert state.locked_until("u1") == NOW + IDLE
    assert state.add_failure("u1", 2) == 1
    state.clear_failures("u1")
    assert state.add_failure("u1", 0) == 1
    state.clear()
    assert state.locked_until("u1") is None


def test_a_server_start_forgets_the_last_run(tmp_path: Path) -> None:
    state = LocalState(tmp_path / local_state.FILE)
    state.add_session(b"k", ALICE, NOW + IDLE)
    state.close()
    local_state.reset(tmp_path)
    assert LocalState(tmp_path / local_state.FILE).session(b"k", NOW, IDLE) is None


def _child_answer(path: Path) -> None:
    ConfirmedLeases(2.0, SharedCounter(path)).answer(False)


def test_a_lease_answer_of_any_worker_counts_for_the_promotion_wait(tmp_path: Path) -> None:
    path = tmp_path / "lease-answers"
    promoting_worker = ConfirmedLeases(2.0, SharedCounter(path))
    assert promoting_worker.wait(clock()) == 0.0
    _in_child(_child_answer, path)  # another worker answered a writer
    answered = clock()
    assert 2.0 < promoting_worker.wait(answered) <= 2.5
    assert promoting_worker.wait(answered + 2.5) == 0.0


def test_a_state_file_that_cannot_be_written_refuses_clearly(tmp_path: Path) -> None:
    import pytest

    from safehold.errors import Unavailable

    blocked = tmp_path / "run"
    blocked.write_text("a file where the directory should be")
    with pytest.raises(Unavailable, match="cannot keep its sign-in state") as refused:
        LocalState(blocked / "local.sqlite3").add_session(b"k", ALICE, NOW + IDLE)
    assert "Error" not in refused.value.message
