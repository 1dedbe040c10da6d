"""``safehold audit sinks``: where audit records are streamed, how far behind each sink is, its last error, and
whether it makes this server refuse audited actions (docs/AUDIT-STREAMING.md)."""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

out = Console(soft_wrap=True)

DataDir = Annotated[Path, typer.Option("--data-dir", "-d", help="The server's data directory.",
                                       envvar="SAFEHOLD_DATA_DIR")]
Json = Annotated[bool, typer.Option("--json", help="Print the sinks as JSON (stable keys: name, kind, target, "
                                                   "fail_closed, started, lag, last_error, delivered_at, refusing, "
                                                   "chains …).")]


def sinks(data_dir: DataDir, as_json: Json = False) -> None:
    """The audit sinks: target, records not delivered yet (lag), last delivery, last error; exit 1 when a
    fail-closed sink makes this server refuse audited actions."""
    from safehold.cli.context import with_runtime
    from safehold.errors import SafeholdError
    from safehold.services.audit_sinks import sink_status

    try:
        status = with_runtime(data_dir, sink_status)
    except SafeholdError as exc:
        Console(stderr=True).print(Text.assemble(("error: ", "bold red"), str(exc)))
        raise typer.Exit(1) from None
    if as_json:
        sys.stdout.write(json.dumps({"sinks": [s.as_json() for s in status]}, indent=2) + "\n")
    elif not status:
        out.print("No audit sink is configured ([[audit.sinks]] in safehold.toml; see docs/AUDIT-STREAMING.md).",
                  markup=False, highlight=False)
    else:
        table = Table("name", "kind", "target", "fail closed", "lag", "delivered", "last delivery", "last error",
                      title="Audit sinks")
        for s in status:
            error = Text(s.last_error or "-", "red" if s.last_error else "")
            table.add_row(Text(s.name), Text(s.kind), Text(s.target or "(not configured on this server)"),
                          Text("yes" if s.fail_closed else "no"), Text(str(s.lag) if s.started else "not started"),
                          Text(str(s.delivered)),
                          Text(s.delivered_at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
                               if s.delivered_at else "never"),
                          error)
        out.print(table)
        for s in status:
            if s.refusing:
                out.print(Text.assemble(("REFUSING", "bold red"), f" {s.refusing}"))
    if any(s.refusing for s in status):
        raise typer.Exit(1)
