"""``safehold alerts …``: the cluster's alert channels (stored in the database, the same for every
server): show them, set or remove one, send test alerts."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from safehold.errors import SafeholdError

if TYPE_CHECKING:
    from safehold.runtime import Runtime

alerts_app = typer.Typer(help="Alert channels (email, syslog, SNMP, webhook) and the event script, for the whole "
                              "cluster.", no_args_is_help=True)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

DataDir = Annotated[Path, typer.Option("--data-dir", "-d", help="The server's data directory.",
                                       envvar="SAFEHOLD_DATA_DIR")]
#: Fields holding a list, given comma-separated on the command line.
LIST_FIELDS = {("email", "to")}


class ChannelChoice(StrEnum):
    email = "email"
    syslog = "syslog"
    snmp = "snmp"
    webhook = "webhook"
    script = "script"
    all = "all"


class SettableChoice(StrEnum):
    email = "email"
    syslog = "syslog"
    snmp = "snmp"
    webhook = "webhook"
    script = "script"
    retry = "retry"


def _fail(message: str, hint: str | None = None) -> None:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    if hint:
        err.print(f"  hint: {escape(hint)}", highlight=False)
    raise typer.Exit(1)


def _run(data_dir: Path, fn: Any) -> Any:
    from safehold.cli.context import with_runtime

    try:
        return with_runtime(data_dir, fn)
    except SafeholdError as exc:
        _fail(exc.message, exc.hint)


def parse_assignments(channel: str, assignments: list[str]) -> tuple[dict[str, Any], Path | None]:
    """``KEY=VALUE`` arguments as changes (an empty VALUE: back to the default) and, for the field that
    names the channel's secret file (``password_file`` ...), that file (read now, never stored)."""
    from safehold.alerts.settings import SECRET_FIELDS

    changes: dict[str, Any] = {}
    secret_file: Path | None = None
    for a in assignments:
        key, sep, value = a.partition("=")
        key = key.strip()
        if not sep or not key:
            raise typer.BadParameter(f"{a!r}: expected KEY=VALUE (for example port=587)")
        if channel in SECRET_FIELDS and key == SECRET_FIELDS[channel][0]:
            secret_file = Path(value.strip()).absolute()
            continue
        value = value.strip()
        if not value:
            changes[key] = None
        elif (channel, key) in LIST_FIELDS:
            changes[key] = [v.strip() for v in value.split(",") if v.strip()]
        else:
            changes[key] = value
    return changes, secret_file


@alerts_app.command()
def show(data_dir: DataDir, as_json: Annotated[bool, typer.Option(
        "--json", help="Print the channels as JSON (the keys of GET /api/v1/ha/alerts, without delivery "
                       "status).")] = False) -> None:
    """The cluster's alert channels and where they send to (no secrets)."""
    from safehold.alerts.dispatch import build_channels
    from safehold.cli.layout import print_json, print_rows
    from safehold.services.cluster_settings import InForce, alerts_in_force
    from safehold.web.api.alerts import channel_view

    async def go(rt: Runtime) -> tuple[InForce[Any], dict[str, Any]]:
        in_force = await alerts_in_force(rt)
        return in_force, build_channels(rt.settings, in_force.value)

    in_force, channels = _run(data_dir, go)
    config = in_force.value
    if as_json:
        print_json({"channels": [{"name": name, "target": ch.target(), "settings": channel_view(config, name)}
                                 for name, ch in channels.items()],
                    "retry": config.section.retry.model_dump(), "source": in_force.source,
                    "version": in_force.version, "updated_at": in_force.updated_at, "updated_by": in_force.updated_by})
        return
    out.print(f"alert settings: {in_force.describe()}", highlight=False, markup=False)
    if not channels:
        hint = "add one with 'safehold alerts set CHANNEL KEY=VALUE ...' (CHANNEL: email, syslog, snmp, webhook or script)"
        if in_force.version is None:  # the database holds none: a section of safehold.toml would be imported
            hint += (", or add an [alerts.email], [alerts.syslog], [alerts.snmp], [alerts.webhook] or [alerts.script] "
                     "section to safehold.toml (imported into the database at the next start of a writable server)")
        out.print(f"no alert channel is configured; {hint}", highlight=False, markup=False)
        return
    print_rows(out, "Alert channels", ("channel", "target", "secret"),
               [(name, ch.target(), (channel_view(config, name) or {}).get("secret", "-"))
                for name, ch in channels.items()])
    r = config.section.retry
    out.print(f"retries: {r.attempts} tries, waiting {r.initial_delay:g} s × {r.multiplier:g} each time "
              f"(at most {r.max_delay:g} s)", highlight=False, markup=False)


@alerts_app.command("set")
def set_(
    data_dir: DataDir,
    channel: Annotated[SettableChoice, typer.Argument(help="The channel to add or change (or 'retry').")],
    assignments: Annotated[list[str] | None, typer.Argument(
        metavar="KEY=VALUE...", help="Fields as in docs/ALERTS.md (port=587, to=a@example.com,b@example.com); "
                                     "KEY= sets one back to its default.")] = None,
    secret_file: Annotated[Path | None, typer.Option(
        "--secret-file", help="A file holding the channel's secret (SMTP password, SNMP community, webhook "
                              "secret): read now, stored sealed in the database; the file is not kept.")] = None,
    replace: Annotated[bool, typer.Option("--replace", help="Start from the defaults instead of the saved "
                                                             "fields.")] = False,
) -> None:
    """Add or change an alert channel for every server of the cluster (on a writable server)."""
    from safehold.alerts.settings import SECRET_FIELDS, read_secret, set_channel
    from safehold.cli.context import cli_actor
    from safehold.services.cluster_settings import Actor, change_alerts

    changes, named_file = parse_assignments(channel.value, assignments or [])
    path = secret_file or named_file
    secret = None
    if path is not None:
        if channel.value not in SECRET_FIELDS:
            _fail(f"the {channel.value} channel has no secret")
        try:
            secret = read_secret(path.absolute(), SECRET_FIELDS[channel.value][1])
        except ValueError as exc:
            _fail(str(exc))

    async def go(rt: Runtime) -> int:
        return await change_alerts(rt, Actor(cli_actor()), lambda c: set_channel(
            c, channel.value, changes, secret=secret, replace=replace))

    version = _run(data_dir, go)
    out.print(f"[green]✓[/] {channel.value} saved for the whole cluster (alert settings version {version}); "
              "every server follows it within a few seconds", highlight=False)


@alerts_app.command()
def remove(
    data_dir: DataDir,
    channel: Annotated[ChannelChoice, typer.Argument(help="The channel to remove.")],
) -> None:
    """Remove an alert channel (and its secret) for every server of the cluster."""
    from safehold.alerts.settings import remove_channel
    from safehold.cli.context import cli_actor
    from safehold.services.cluster_settings import Actor, change_alerts

    if channel is ChannelChoice.all:
        _fail("name one channel to remove")

    async def go(rt: Runtime) -> int:
        return await change_alerts(rt, Actor(cli_actor()), lambda c: remove_channel(c, channel.value))

    version = _run(data_dir, go)
    out.print(f"[green]✓[/] {channel.value} removed (alert settings version {version})", highlight=False)


@alerts_app.command()
def test(
    data_dir: DataDir,
    channel: Annotated[ChannelChoice, typer.Option(help="The channel to test, or all configured ones.")] =
    ChannelChoice.all,
) -> None:
    """Send one test alert now on a channel (or on each configured one), from this server; exit 1 if any
    fails."""
    from safehold.alerts.dispatch import send_test
    from safehold.alerts.settings import AlertConfig
    from safehold.services.cluster_settings import effective_alerts

    async def go(rt: Runtime) -> tuple[Any, AlertConfig]:
        return rt.settings, await effective_alerts(rt)

    settings, config = _run(data_dir, go)
    names = config.section.configured() if channel is ChannelChoice.all else [channel.value]
    if not names:
        _fail("no alert channel is configured; see 'safehold alerts show'")
    failed = False
    for name in names:
        try:
            result = send_test(settings, name, config)
        except SafeholdError as exc:
            failed = True
            out.print(f"[red]✗[/] {name}: {escape(exc.message)}", highlight=False)
            if exc.hint:
                out.print(f"    hint: {escape(exc.hint)}", highlight=False)
        else:
            out.print(f"[green]✓[/] {name}: {escape(result)}", highlight=False)
    if failed:
        raise typer.Exit(1)
