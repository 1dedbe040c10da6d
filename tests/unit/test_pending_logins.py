"""The sign-in's pending ticket (between the password and the TOTP step): sealed, so any worker or server of
the cluster can open it and nobody else can read or forge it; it runs out."""

from __future__ import annotations

import time

import pytest

from safehold.web.ui.core import PendingLogins

KEY = bytes(range(32))


def test_any_process_with_the_key_opens_it() -> None:
    ticket = PendingLogins(KEY).put("alice", "Correct-Horse-4711")
    assert "Correct-Horse-4711" not in ticket and "alice" not in ticket
    assert PendingLogins(KEY).take(ticket) == ("alice", "Correct-Horse-4711")  # another worker's store
    assert PendingLogins(KEY).peek(ticket) == "alice"


@pytest.mark.parametrize("ticket", ["", "x", "not-base64-%%%", "A" * 200])
def test_a_damaged_or_made_up_ticket_opens_nothing(ticket: str) -> None:
    assert PendingLogins(KEY).take(ticket) is None and PendingLogins(KEY).peek(ticket) is None


def test_a_changed_ticket_or_another_key_opens_nothing() -> None:
    ticket = PendingLogins(KEY).put("alice", "pw")
    flipped = ticket[:10] + ("A" if ticket[10] != "A" else "B") + ticket[11:]
    assert PendingLogins(KEY).take(flipped) is None
    assert PendingLogins(bytes(32)).take(ticket) is None


def test_it_runs_out(monkeypatch: pytest.MonkeyPatch) -> None:
    ticket = PendingLogins(KEY).put("alice", "pw")
    later = time.time() + PendingLogins.TTL + 1
    monkeypatch.setattr(time, "time", lambda: later)
    assert PendingLogins(KEY).take(ticket) is None
