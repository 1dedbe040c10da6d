"""``safehold ha sync``: synchronous mode on the primary (registered on ha_app at the end of cli/ha.py)."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from safehold.cli.common import DataDir, out

MIN_DEGRADE, MAX_DEGRADE = 1.0, 86400.0


def sync(
    data_dir: DataDir,
    on: Annotated[bool, typer.Option("--on", help="Commits wait until a read-only replica has them too.")] = False,
    off: Annotated[bool, typer.Option("--off", help="Asynchronous replication (the default).")] = False,
    degrade_after: Annotated[float | None, typer.Option(
        "--degrade-after", metavar="SECONDS",
        help=f"With no synchronous standby connected for this long ({MIN_DEGRADE:g} to {MAX_DEGRADE:g} s), "
             "the primary degrades to asynchronous replication and raises an alarm (default: keep the "
             "configured value, 30 s unless changed).")] = None,
) -> None:
    """On the primary: turn synchronous mode on or off.  On: a commit is acknowledged only once a
    read-only replica has flushed it too, so a failover loses no acknowledged write; without a
    synchronous standby for --degrade-after seconds the primary replicates asynchronously until one
    is back (RaiseAlarm / ClearAlarm events).  Written to the server's configuration and applied at once
    when its database runs; the server's HA agent keeps it up to date from then on."""
    from safehold.config import load_settings, write_settings
    from safehold.domain import ServerRole
    from safehold.errors import SafeholdError
    from safehold.ha.syncrep import apply_now, guard_runs_on
    from safehold.runtime import database

    if on == off:
        raise typer.BadParameter("give exactly one of --on and --off")
    if degrade_after is not None and not MIN_DEGRADE <= degrade_after <= MAX_DEGRADE:
        raise typer.BadParameter(f"--degrade-after must be between {MIN_DEGRADE:g} and {MAX_DEGRADE:g} seconds "
                                 f"(24 hours), not {degrade_after:g}")
    current = load_settings(data_dir, env={})  # the file itself: no environment override is written into it
    if not guard_runs_on(current):
        if current.server.role in (ServerRole.SECONDARY, ServerRole.READONLY):
            raise typer.BadParameter(f"this is a {current.server.role} server; run 'safehold ha sync' on the "
                                     "primary, whose database the read-only replicas stream from")
        raise typer.BadParameter("synchronous mode is for the bundled database (database.mode is "
                                 f"{current.database.mode!r}); on a database an HA engine runs, turn it on "
                                 "there (Patroni: synchronous_mode: true)")
    changes: dict[str, object] = {"synchronous": on}
    if degrade_after is not None:
        changes["sync_degrade_after"] = degrade_after
    updated = current.model_copy(update={"ha": current.ha.model_copy(update=changes)})
    path = write_settings(updated)
    limit = updated.ha.sync_degrade_after
    out.print(f"[green]✓[/] synchronous mode {'on' if on else 'off'} in {path}"
              + (f" (degrade to asynchronous after {limit:g} s without a synchronous standby)" if on else ""),
              highlight=False)

    settings = load_settings(data_dir)
    if not database.manager(settings).status().running:
        out.print("  the database is not running: the server's HA agent applies it when the server starts",
                  highlight=False)
        return
    try:
        view, applied = asyncio.run(apply_now(settings, on))
    except SafeholdError:
        raise
    except Exception as exc:  # noqa: BLE001 - the configuration is written; the agent applies it
        out.print(f"  [yellow]could not apply it now ({type(exc).__name__})[/]: the server's HA agent applies it "
                  "within one ha.check_interval while it runs", highlight=False)
        return
    if applied is not None:
        out.print(f"  applied: synchronous_standby_names = {applied!r}" if applied
                  else "  applied: synchronous_standby_names reset (asynchronous)", highlight=False)
    elif on and not view.standbys:
        out.print("  no read-only server is registered yet: add one with 'safehold ha pack'; until then "
                  "the primary replicates asynchronously", highlight=False)
    elif on and not view.streaming & frozenset(view.standbys):
        out.print("  no read-only replica is streaming now: the server's HA agent names them as soon as one "
                  "does", highlight=False)
    else:
        out.print("  already in effect", highlight=False)
    out.print("  the running server's HA agent keeps it up to date (every ha.check_interval)", highlight=False)
