"""``safehold ha failover``: the cluster's automatic failover policy, which every read-only server follows
(stored in the database; registered on ha_app at the end of cli/ha.py; self-contained so that importing
it first works too)."""

from __future__ import annotations

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


def _engine_managed(data_dir: Path) -> bool:
    from safehold.config import load_settings
    from safehold.runtime import engine_managed

    return engine_managed(load_settings(data_dir))


def _fail(messages: list[str], code: int) -> None:
    """Print the messages and exit with ``code`` (nothing when there are none)."""
    if not messages:
        return
    for m in messages:
        err.print(f"[bold red]error:[/] {escape(m)}", highlight=False)
    err.print("[dim]nothing was changed[/]", highlight=False)
    raise typer.Exit(code)


def describe(settings: Settings, section: FailoverSection, default_gateway: str | None) -> list[str]:
    from safehold.ha.probe import parse_target

    def kind(text: str) -> str:
        try:
            return "TCP connect" if parse_target(text).port is not None else "ICMP ping"
        except ValueError:
            return "invalid"

    n, every = section.ping_iterations, section.ping_interval
    db = (f"{settings.ha.primary_db_host}:{settings.ha.primary_db_port}" if settings.ha.primary_db_host
          else "(as each read-only server knows it)")
    witnesses = ", ".join(f"{w} ({kind(w)})" for w in section.witness_targets) or "none"
    if section.gateway is not None:
        gw = f"{section.gateway} ({kind(section.gateway)}, configured)"
    else:
        gw = f"{default_gateway} (the default route's)" if default_gateway else "none known"
    return [
        f"automatic failover: {'enabled' if section.enabled else 'disabled'} (on every read-only server)",
        f"  ping the primary database {db} every {every:g} s",
        f"  {'promote' if section.may_promote else 'raise an alarm (may not promote)'} after {n} failed pings "
        f"in a row (about {n * every:g} s)",
        f"  lag guard: promote only within {section.max_lag_bytes} bytes of the primary's WAL",
        f"  witness targets: {witnesses}",
        f"  gateway: {gw}",
    ]


def failover(
    data_dir: DataDir,
    enable: Annotated[bool | None, typer.Option("--enable/--disable", help="Turn automatic failover on or off "
                                                "(for every read-only server).")] = None,
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
                                                     help="Whether a read-only server may promote itself.")] = None,
    max_lag_bytes: Annotated[int | None, typer.Option(help="The lag guard: promote only if the replica had "
                                                      "received all but at most this many bytes.")] = None,
) -> None:
    """Show or change the cluster's automatic failover policy.

    Every read-only server pings the primary database every --ping-interval seconds and promotes itself
    after --ping-iterations consecutive failures, unless its gateway and every witness target are
    unreachable too (then the fault is on its own side: it raises an alarm instead). The policy is
    stored in the database: change it on a writable server (the primary or a secondary); every server,
    a promoted one included, follows it within a few seconds. Without options it shows the policy;
    invalid values are refused and nothing is changed."""
    from safehold.cli.context import cli_actor, with_runtime
    from safehold.errors import InvalidInput, SafeholdError
    from safehold.ha.failover import range_errors
    from safehold.ha.probe import default_gateway
    from safehold.runtime import ReadOnlyMode
    from safehold.services.cluster_settings import (
        Actor,
        InForce,
        failover_in_force,
        failover_warnings,
        update_failover,
    )

    _fail(range_errors({"ping_interval": ping_interval, "ping_iterations": ping_iterations}), 2)
    if enable and _engine_managed(data_dir):
        _fail(["the database's HA engine owns failover here: Safehold never promotes a server on it "
               "(docs/SCALE-OUT.md)"], 2)

    def changes_to(fo: FailoverSection) -> dict[str, Any]:
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
        if max_lag_bytes is not None:
            changes["max_lag_bytes"] = max_lag_bytes
        return changes

    async def go(rt: Any) -> tuple[Settings, InForce[FailoverSection], list[str], bool]:
        current = await failover_in_force(rt)
        changes = changes_to(current.value)
        if changes:
            current = await update_failover(rt, Actor(cli_actor()), changes)
        return rt.settings, current, await failover_warnings(rt, current.value), bool(changes)

    try:
        settings, in_force, warnings, changed = with_runtime(data_dir, go)
    except InvalidInput as exc:
        _fail([exc.message], 2)
        return
    except ReadOnlyMode:
        _fail(["this is a read-only server: the failover policy is the cluster's, stored in the database; change "
               "it on the primary (or a secondary) and this server follows it"], 1)
        return
    except SafeholdError as exc:
        _fail([exc.message], 1)
        return
    if changed:
        out.print(f"[green]✓[/] saved for the whole cluster (failover policy version {in_force.version}); every "
                  "read-only server follows it within a few seconds", highlight=False)
    out.print(f"policy: {escape(in_force.describe())}", highlight=False)
    for line in describe(settings, in_force.value, default_gateway()):
        out.print(escape(line), highlight=False)
    for w in warnings:
        err.print(f"[yellow]warning:[/] {escape(w)}", highlight=False)
