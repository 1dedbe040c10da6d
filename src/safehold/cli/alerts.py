"""``safehold alerts …``: show the alert channels and send test alerts."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from safehold.config import load_settings
from safehold.errors import SafeholdError

alerts_app = typer.Typer(help="Alert channels (email, syslog, SNMP, webhook) and the event script.",
                         no_args_is_help=True)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

DataDir = Annotated[Path, typer.Option("--data-dir", "-d", help="The server's data directory.",
                                       envvar="SAFEHOLD_DATA_DIR")]


class ChannelChoice(StrEnum):
    email = "email"
    syslog = "syslog"
    snmp = "snmp"
    webhook = "webhook"
    script = "script"
    all = "all"


def _fail(message: str) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(1)


@alerts_app.command()
def show(data_dir: DataDir) -> None:
    """The configured alert channels and where they send to (no secrets)."""
    from safehold.alerts.dispatch import build_channels

    try:
        settings = load_settings(data_dir)
    except SafeholdError as exc:
        _fail(str(exc))
        return
    channels = build_channels(settings)
    if not channels:
        out.print("no alert channel is configured (add [alerts.email], [alerts.syslog], [alerts.snmp], "
                  "[alerts.webhook] or [alerts.script] to safehold.toml)")
        return
    t = Table("channel", "target", title="Alert channels")
    for name, ch in channels.items():
        t.add_row(name, ch.target())
    out.print(t)
    r = settings.alerts.retry
    out.print(f"retries: {r.attempts} tries, waiting {r.initial_delay:g} s × {r.multiplier:g} each time "
              f"(at most {r.max_delay:g} s)", highlight=False)


@alerts_app.command()
def test(
    data_dir: DataDir,
    channel: Annotated[ChannelChoice, typer.Option(help="The channel to test, or all configured ones.")] =
    ChannelChoice.all,
) -> None:
    """Send one test alert now on a channel (or on each configured one); exit 1 if any fails."""
    from safehold.alerts.dispatch import send_test

    try:
        settings = load_settings(data_dir)
    except SafeholdError as exc:
        _fail(str(exc))
        return
    names = settings.alerts.configured() if channel is ChannelChoice.all else [channel.value]
    if not names:
        _fail("no alert channel is configured; see 'safehold alerts show'")
    failed = False
    for name in names:
        try:
            result = send_test(settings, name)
        except SafeholdError as exc:
            failed = True
            out.print(f"[red]✗[/] {name}: {exc.message}", highlight=False)
            if exc.hint:
                out.print(f"    hint: {exc.hint}", highlight=False)
        else:
            out.print(f"[green]✓[/] {name}: {result}", highlight=False)
    if failed:
        raise typer.Exit(1)
