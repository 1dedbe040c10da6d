"""The commands' tables (``cli/layout.py``) and ``ha status``'s status lines, rendered on consoles of a given
width: a cell is never cut nor read as markup, and nothing is shown as "None"."""

from __future__ import annotations

from typing import Any

import pytest
from rich.console import Console

from safehold.cli.ha import status_lines
from safehold.cli.layout import print_rows, when

ID = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
URL = "https://replica-in-the-other-room.example.internal:8443"
COLUMNS = ("name", "role", "status", "url", "sessions", "last seen", "id")
ROWS = [("[bold]primary[/] (rack 4)", "primary", "active", URL, "1", when("2026-01-01T08:24:32.5+00:00"), ID)]


def rendered(width: int, rows: Any = ROWS) -> str:
    console = Console(width=width, soft_wrap=True, record=True, color_system=None, force_terminal=False)
    with console.capture() as captured:
        print_rows(console, "Servers", COLUMNS, rows)
    return captured.get()


@pytest.mark.parametrize("width", [40, 80, 120, 250])
def test_an_id_or_url_is_never_cut(width: int) -> None:
    text = rendered(width)
    assert ID in text and URL in text and "…" not in text
    assert "[bold]primary[/] (rack 4)" in text  # a name is shown as typed, never read as markup
    assert "2026-01-01 08:24:32 UTC" in text


def test_a_table_when_it_fits_else_a_list() -> None:
    assert "┃ name" in rendered(250)
    narrow = rendered(80)
    assert "┃" not in narrow
    assert f"    id:        {ID}" in narrow.splitlines()


def standalone(**extra: Any) -> dict[str, Any]:
    return {"ha_status": None, "replication_status": None, "replication_lag_bytes": None,
            "replication_lag_seconds": None, "confirmed": None,
            "audit_backlog": {"pending": 0, "shipped": 0, "oldest_pending": None}, **extra}


@pytest.mark.parametrize(("status", "expected"), [
    pytest.param(standalone(), ["HA status: n/a (no read-only server)", "Replication status: n/a (no read-only server)",
                                "Replication lag: no replica", "Audit backlog: none pending"],
                 id="a standalone server"),
    pytest.param(standalone(ha_status="Failed", replication_status="Failed", replication_lag_bytes=0,
                            replication_lag_seconds=None,
                            confirmed={"ha_status": "Alive", "replication_status": "Failed", "confirm_checks": 3}),
                 ["HA status: Alive, latest check Failed (a change counts after 3 checks in a row)",
                  "Replication status: Failed", "Replication lag: 0 bytes", "Audit backlog: none pending"],
                 id="a failure seen, not confirmed yet; a lag known in bytes only"),
])
def test_status_lines(status: dict[str, Any], expected: list[str]) -> None:
    lines = [line.plain for line in status_lines(status)]
    assert lines == expected
    assert not any("None" in line for line in lines)


def test_a_backlog_that_is_not_known_is_not_shown_as_zero() -> None:
    backlog = {"pending": 2, "shipped": 7, "oldest_pending": "2026-01-01T08:24:32+00:00", "servers": [
        {"id": "a", "name": "ro-a", "reported": True, "pending": 2, "shipped": 7,
         "oldest_pending": "2026-01-01T08:24:32+00:00", "error": None},
        {"id": "b", "name": "ro-b", "reported": False, "pending": None, "shipped": None, "oldest_pending": None,
         "error": None}]}
    lines = [line.plain for line in status_lines(standalone(audit_backlog=backlog))]
    assert lines[-1] == ("Audit backlog: 2 record(s) not yet in the primary database (oldest 2026-01-01 08:24:32 UTC); "
                         "unknown for ro-b (not answering)")
