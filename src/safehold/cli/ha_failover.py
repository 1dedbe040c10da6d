"""``safehold ha failover``: the automatic failover policy of a read-only server (registered on ha_app
at the end of cli/ha.py; self-contained so that importing it first works too)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from safehold.config import FailoverSection, Settings

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

DataDir = Annotated[Path, typer.Option("--data-dir", "-d", help="The server's data directory.",
                                       envvar="SAFEHOLD_DATA_DIR")]


def _fail(messages: list[str], code: int) -> None:
    """Print the messages and exit with ``code`` (nothing when there are none)."""
    if not messages:
        return
    for m in messages:
        err.print(f"[bold red]error:[/] {escape(m)}", highlight=False)
    err.print("[dim]nothing was changed[/]", highlight=False)
    raise typer.Exit(code)


def _registry(data_dir: Path) -> tuple[list[Any], str | None]:
    """The registered servers, from this server's database if it runs (nothing is started)."""
    from safehold.config import load_settings
    from safehold.ha.readiness import read_database

    try:
        return asyncio.run(read_database(load_settings(data_dir))).servers, None
    except Exception as exc:  # noqa: BLE001 - reported as a warning
        return [], f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")


def describe(settings: Settings, section: FailoverSection, default_gateway: str | None) -> list[str]:
    from safehold.ha.probe import parse_target

    def kind(text: str) -> str:
        try:
            return "TCP connect" if parse_target(text).port is not None else "ICMP ping"
        except ValueError:
            return "invalid"

    n, every = section.ping_iterations, section.ping_interval
    db = (f"{settings.ha.primary_db_host}:{settings.ha.primary_db_port}" if settings.ha.primary_db_host
          else "unknown (not joined as a read-only server)")
    witnesses = ", ".join(f"{w} ({kind(w)})" for w in section.witness_targets) or "none"
    if section.gateway is not None:
        gw = f"{section.gateway} ({kind(section.gateway)}, configured)"
    else:
        gw = f"{default_gateway} (the default route's)" if default_gateway else "none known"
    return [
        f"automatic failover: {'enabled' if section.enabled else 'disabled'}",
        f"  ping the primary database {db} every {every:g} s",
        f"  {'promote' if section.may_promote else 'raise an alarm (may not promote)'} after {n} failed pings "
        f"in a row (about {n * every:g} s)",
        f"  witness targets: {witnesses}",
        f"  gateway: {gw}",
    ]


def failover(
    data_dir: DataDir,
    enable: Annotated[bool | None, typer.Option("--enable/--disable", help="Turn automatic failover on or off "
                                                "(on: a read-only server only).")] = None,
    ping_interval: Annotated[float | None, typer.Option(help="Seconds between two pings of the primary "
                                                        "(1 to 3600; default 15).")] = None,
    ping_iterations: Annotated[int | None, typer.Option(help="Consecutive failed pings before promoting "
                                                        "(2 to 20; default 12).")] = None,
    witness: Annotated[list[str] | None, typer.Option(
        "--witness", metavar="TARGET",
        help="A witness target: 'host' (ICMP ping) or 'host:port' (TCP connect), outside the cluster; "
             "repeatable, at most 3 in all; added to the configured ones.")] = None,
    clear_witnesses: Annotated[bool, typer.Option("--clear-witnesses", help="Remove the configured witness "
                                                  "targets first.")] = False,
    gateway: Annotated[str | None, typer.Option(help="The gateway to check ('host' or 'host:port'); 'default' "
                                                "for the default route's.")] = None,
    may_promote: Annotated[bool | None, typer.Option("--may-promote/--no-may-promote",
                                                     help="Whether this server may promote itself.")] = None,
) -> None:
    """Show or change the automatic failover policy of this read-only server.

    It pings the primary database every --ping-interval seconds and promotes this server after
    --ping-iterations consecutive failures, unless its gateway and every witness target are
    unreachable too (then the fault is on its own side: it raises an alarm instead). Without options
    it shows the policy; invalid values are refused and nothing is changed."""
    from safehold.config import load_settings, write_settings
    from safehold.domain import ServerRole
    from safehold.ha.failover import (
        range_errors,
        role_problems,
        validate_policy,
        warnings_for,
        witness_addresses,
        witnesses_checkable,
    )
    from safehold.ha.probe import default_gateway, ping_program

    current = load_settings(data_dir, env={})  # the file itself: no environment override is written into it
    _fail(range_errors({"ping_interval": ping_interval, "ping_iterations": ping_iterations}), 2)
    fo = current.ha.failover
    changes: dict[str, Any] = {}
    if enable is not None:
        changes["enabled"] = enable
    if ping_interval is not None:
        changes["ping_interval"] = float(ping_interval)
    if ping_iterations is not None:
        changes["ping_iterations"] = ping_iterations
    if witness or clear_witnesses:
        changes["witness_targets"] = [*([] if clear_witnesses else fo.witness_targets),
                                      *(w.strip() for w in witness or [])]
    if gateway is not None:
        changes["gateway"] = None if gateway.strip().lower() in ("default", "") else gateway.strip()
    if may_promote is not None:
        changes["may_promote"] = may_promote
    candidate = fo.model_copy(update=changes)  # validated below, with clear messages
    own: dict[str, str] = {}
    resolved: dict[str, set[str]] = {}
    if changes and witnesses_checkable(candidate):
        servers, problem = _registry(data_dir)
        if problem is not None:
            err.print(f"[yellow]warning:[/] could not read the server registry ({escape(problem)}): the witness "
                      "targets were checked against this server's own settings only", highlight=False)
        own, resolved = witness_addresses(current, candidate, servers)
    _fail(validate_policy(candidate, own, resolved), 2)
    _fail([m for _, m in role_problems(current, bool(enable))], 1)
    role = current.server.role
    gw = default_gateway()
    section = FailoverSection.model_validate(candidate.model_dump())
    if changes:
        path = write_settings(current.model_copy(update={"ha": current.ha.model_copy(update={"failover": section})}))
        out.print(f"[green]✓[/] wrote {escape(str(path))}", highlight=False)
    for line in describe(current, section, gw):
        out.print(escape(line), highlight=False)
    for w in warnings_for(section, default_gateway=gw, ping_available=ping_program() is not None):
        err.print(f"[yellow]warning:[/] {escape(w)}", highlight=False)
    if section.enabled and role != ServerRole.READONLY:
        err.print(f"[yellow]warning:[/] enabled on a {role} server: it has no replica to promote, so it does "
                  "not watch anything", highlight=False)
    if changes:
        from safehold.cli.context import server_pid

        if server_pid(current) is not None:
            out.print("  the running server reads it at its next start: restart it to apply the change",
                      highlight=False)
