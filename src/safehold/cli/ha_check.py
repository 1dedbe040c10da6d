"""``safehold ha check``: could this server take over right now? (registered on ha_app at the end of
cli/ha.py; self-contained so that importing it first works too)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

out = Console(soft_wrap=True)

DataDir = Annotated[Path, typer.Option("--data-dir", "-d", help="The server's data directory.",
                                       envvar="SAFEHOLD_DATA_DIR")]


def check(data_dir: DataDir, as_json: Annotated[bool, typer.Option(
        "--json", help="Print the checks as JSON (the keys of GET /api/v1/ha/checks, with each check's state).")]
        = False) -> None:
    """Readiness: the key file matches the database, the audit spool is writable, there is disk space,
    the replica streams within the lag thresholds, no peer reports a newer generation, and the peers
    answer. One line per check; the exit code is 1 if any failed. Nothing is started or changed."""
    from safehold.cli.layout import print_json
    from safehold.config import load_settings
    from safehold.ha.readiness import run_checks

    settings = load_settings(data_dir)
    checks = asyncio.run(run_checks(settings))
    if as_json:
        print_json({"ok": all(c.ok for c in checks),
                    "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail, "state": c.state} for c in checks]})
        if not all(c.ok for c in checks):
            raise typer.Exit(1)
        return
    width = max(len(c.name) for c in checks)
    for c in checks:
        mark = "[green]✓[/]" if c.ok else "[bold red]✗[/]"
        out.print(f"{mark} {escape(c.name.ljust(width))}  {escape(c.detail)}", highlight=False)
    failed = [c.name for c in checks if not c.ok]
    if failed:
        out.print(f"[bold red]not ready:[/] {len(failed)} of {len(checks)} checks failed ({escape(', '.join(failed))})",
                  highlight=False)
        raise typer.Exit(1)
    out.print(f"[green]ready:[/] all {len(checks)} checks passed", highlight=False)
