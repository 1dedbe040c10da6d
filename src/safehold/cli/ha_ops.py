"""``safehold ha promote | rejoin | switchover``: getting through a server loss, and planned swaps."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from safehold.cli.common import DataDir, out


def _say(message: str) -> None:
    out.print(f"• {message}", highlight=False)


def promote(
    data_dir: DataDir,
    force: Annotated[bool, typer.Option("--force", help="Promote even if the replica's data is older than "
                                                        "the limit.")] = False,
    max_data_age: Annotated[float | None, typer.Option(help="Refuse when the replica last heard from its primary "
                                                            "longer ago than this many seconds (default: "
                                                            "ha.promote_max_data_age).")] = None,
) -> None:
    """Promote this read-only server: its replica becomes the primary database and the server the acting
    primary (the cluster's generation goes up, so an old primary that comes back is fenced)."""
    from safehold.cli.context import load, server_pid
    from safehold.ha.promote import promote_here

    settings, master = load(data_dir)
    running = server_pid(settings) is not None
    p = promote_here(settings, master, force=force, max_data_age=max_data_age, server_running=running, say=_say)
    out.print(f"[green]✓[/] {settings.server.name} is the acting primary (generation {p.generation})"
              + (f", replacing {p.old_primary}" if p.old_primary else ""), highlight=False)
    out.print("  the running server takes over by itself" if running else
              f"  start it with: safehold serve --data-dir {settings.data_dir}", highlight=False)
    out.print("  an old primary that comes back is fenced; rejoin it with: safehold ha rejoin --data-dir OLD "
              "--from " + _url(settings), highlight=False)


def _url(settings: object) -> str:
    from safehold.runtime import public_url

    return public_url(settings)  # type: ignore[arg-type]


def rejoin(
    data_dir: DataDir,
    source: Annotated[str, typer.Option("--from", help="The acting primary's URL (https://host:port), or a setup "
                                                       "pack it wrote ('safehold ha pack').")],
    passphrase_file: Annotated[Path | None, typer.Option(help="With a pack: the file holding its passphrase "
                                                              "(else it is asked for).")] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Turn this server (a fenced old primary, or any lost server) into a read-only server of the acting
    primary: pg_rewind where possible, a fresh base backup otherwise.  Changes only this server had are
    exported to a file first."""
    import sys

    from safehold.cli.common import read_passphrase
    from safehold.cli.context import load, refuse_if_serving
    from safehold.ha.rejoin import rejoin as from_url
    from safehold.ha.rejoin import rejoin_from_pack

    pack = Path(source).expanduser()
    if not pack.exists() and not source.startswith("https://"):
        raise typer.BadParameter("--from must be the acting primary's https:// URL or an existing setup pack")
    settings, master = load(data_dir)
    refuse_if_serving(settings, "rejoining it; start it again afterwards")
    passphrase = read_passphrase(passphrase_file) if pack.exists() else ""
    if not yes:
        if not sys.stdin.isatty():
            raise typer.BadParameter("no terminal to confirm on: add --yes")
        typer.confirm(f"{settings.server.name}'s database will become a replica of the acting primary; changes "
                      "only it has are exported first. Go on?", abort=True)
    if settings.database.mode == "remote" and not pack.exists():  # a secondary: it has no database of its own
        from safehold.ha.rejoin import rejoin_secondary

        rejoin_secondary(settings, master, source, say=_say)
        out.print(f"[green]✓[/] {settings.server.name} rejoined as a secondary of the acting primary; start it "
                  f"with: safehold serve --data-dir {settings.data_dir}", highlight=False)
        return
    if pack.exists():
        r = rejoin_from_pack(settings, master, pack.resolve(), passphrase, say=_say)
    else:
        r = from_url(settings, master, source, say=_say)
    out.print(f"[green]✓[/] {settings.server.name} rejoined as a read-only server ({r.method}); start it with: "
              f"safehold serve --data-dir {settings.data_dir}", highlight=False)
    if r.divergence_file is not None:
        out.print(f"[yellow]![/] {sum(r.divergent.values())} row(s) only this server had are in {r.divergence_file}",
                  highlight=False)


def switchover(
    data_dir: DataDir,
    to: Annotated[str, typer.Option("--to", help="Name or id of the read-only server to hand the primary role to.")],
) -> None:
    """Planned role swap, run on the primary: writes stop, the target catches up to the last byte and is
    promoted, and this server becomes its replica.  No acknowledged write is lost."""
    from safehold.cli.context import load
    from safehold.ha.switchover import switchover as do_switchover

    settings, master = load(data_dir)
    r = do_switchover(settings, master, to, say=_say)
    out.print(f"[green]✓[/] {r.target.name} is the primary (generation {r.generation}); writes were unavailable "
              f"for {r.write_unavailable_seconds:.1f} s; {settings.server.name} is its read-only replica",
              highlight=False)


def override_lease(
    data_dir: DataDir,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Let a running primary or secondary write again although no peer of its cluster confirmed that it is
    still the writer (after a stall or a restart while every peer was unreachable).  Only if you are sure no
    other server took over: otherwise its changes are lost when it is rejoined."""
    import sys

    from safehold.cli.context import load, server_pid
    from safehold.ha.fencing import OVERRIDE_TTL, request_override

    settings, _ = load(data_dir)
    if server_pid(settings) is None:
        raise typer.BadParameter("this server is not running: the override is for a running server (a server that "
                                 "starts asks its peers again)", param_hint="--data-dir")
    if not yes:
        if not sys.stdin.isatty():
            raise typer.BadParameter("no terminal to confirm on: add --yes")
        typer.confirm("No other server took over this cluster, and this server may write again?", abort=True)
    request_override(settings)
    out.print(f"[green]✓[/] override requested: {settings.server.name} renews its write lease at its next heartbeat "
              f"(the request expires after {OVERRIDE_TTL:g} s if the server does not pick it up)", highlight=False)
