"""``safehold ha teardown``: return a server (run on the primary: the whole cluster) to standalone."""

from __future__ import annotations

import ssl
import sys
from typing import TYPE_CHECKING, Annotated

import typer

from safehold.cli.common import DataDir, err, out
from safehold.errors import SafeholdError

if TYPE_CHECKING:
    from safehold.config import Settings
    from safehold.ha import teardown as td


def _say(message: str) -> None:
    out.print(f"• {message}", highlight=False)


def _app_running(settings: Settings) -> bool:
    """Whether this server's app ('safehold serve') runs: its pid file, else its own health endpoint."""
    from safehold.cli.context import server_pid
    from safehold.ha.peers import SyncPeerClient

    if server_pid(settings) is not None:
        return True
    listen = settings.http.listen
    host = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(listen, f"[{listen}]" if ":" in listen else listen)  # noqa: S104
    if not settings.path(settings.http.tls_ca).is_file():
        return False
    try:
        with SyncPeerClient(settings, timeout=2) as client:
            return client.health(f"https://{host}:{settings.http.port}").server_id == settings.server.id
    except (OSError, ssl.SSLError):  # the CA file cannot be read
        return False


def _show_plan(plan: td.Plan, settings: Settings, *, steps: bool) -> None:
    """What the teardown will do (its steps only when it asks first: they are shown as they run)."""
    from safehold.ha import teardown as td

    name = settings.server.name
    if plan.kind == td.Kind.PRIMARY:
        out.print(f"This makes the primary '{name}' a standalone server and dissolves its cluster.",
                  highlight=False)
    elif plan.kind == td.Kind.READONLY:
        out.print(f"This detaches the read-only server '{name}' from its primary and makes it a standalone "
                  "server with a separate copy of the data (a new cluster id).", highlight=False)
    else:
        out.print(f"This takes the secondary '{name}' out of its cluster.", highlight=False)
    for step in plan.steps if steps else ():
        out.print(f"  - {step.message}", highlight=False)
    if plan.detached:
        out.print("These servers will no longer be part of a cluster with this one:")
        for line in td.describe(plan.detached):
            out.print(f"  - {line}", highlight=False)
    for note in plan.notes:
        out.print(f"  [yellow]note:[/] {note}", highlight=False)


def _confirm(yes: bool) -> None:
    if yes:
        return
    if not typer.confirm("Tear it down?", default=False):
        err.print("aborted; nothing was changed")
        raise typer.Exit(1)


def _report(outcome: td.Outcome, settings: Settings, app_running: bool) -> None:
    from safehold.ha import teardown as td

    if outcome.left_at_primary:
        out.print("[yellow]Left at the primary's database[/] (run there as its superuser, or run "
                  "'safehold ha teardown' on the primary, which removes them all):", highlight=False)
        for line in outcome.left_at_primary:
            out.print(f"    {line}", highlight=False)
    d = settings.data_dir
    if outcome.kind == td.Kind.PRIMARY:
        out.print(f"[green]✓[/] '{settings.server.name}' is a standalone server now", highlight=False)
        if outcome.detached:
            out.print("Detached (their replicas stop streaming, their logins are gone): tear each read-only "
                      "server down with 'safehold ha teardown' on its host (it keeps a separate copy) or "
                      "re-initialise it; a secondary cannot reach the database any more: remove its data "
                      "directory or 'safehold init' it anew:")
            for line in td.describe(outcome.detached):
                out.print(f"  - {line}", highlight=False)
        if app_running:
            out.print("[yellow]The server is running:[/] the role change takes effect at its next start "
                      f"(restart 'safehold serve --data-dir {d}')", highlight=False)
    elif outcome.kind == td.Kind.READONLY:
        out.print(f"[green]✓[/] '{settings.server.name}' is a standalone server now (cluster "
                  f"{outcome.new_cluster_id or 'id renewed earlier'})", highlight=False)
        out.print("[bold yellow]warning:[/] this server now holds a SEPARATE COPY of the data as of now. "
                  "Changes made here are not seen by the old cluster and changes there are not seen here; "
                  "never point users of the old cluster at it.", highlight=False)
        out.print(f"Start it with: safehold serve --data-dir {d}", highlight=False)
    else:
        out.print(f"[green]✓[/] '{settings.server.name}' has left its cluster", highlight=False)
        out.print(f"  its database login {td.login_name(settings.server.id)} and its pg_hba.conf line stay at the "
                  "primary until 'safehold ha teardown' runs there (which removes them all)", highlight=False)
        out.print("  A secondary has no database of its own, so it cannot become a standalone server: do not "
                  f"start it again; remove {d} once it is no longer needed, and make a new standalone server "
                  "with 'safehold init --data-dir NEW_DIR' in a fresh directory.", highlight=False)


def teardown(
    data_dir: DataDir,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Return this server to standalone: run on the primary, the whole cluster.

    On the primary: drops every replication slot and role, every secondary's login, the extra
    pg_hba.conf lines and every other server's registry row. On a read-only server: leaves the
    primary, promotes its replica and gives the copy a new cluster id (a separate copy of the data).
    On a secondary: leaves the cluster (it has no database of its own). Running it twice is fine."""
    from safehold.ha import teardown as td
    from safehold.runtime import database

    settings = td.load_server_settings(data_dir)
    kind = td.kind_of(settings)
    if kind == td.Kind.NOTHING:
        out.print(f"• {settings.server.name} is a standalone server: nothing to tear down", highlight=False)
        return
    if not yes and not sys.stdin.isatty():
        raise SafeholdError("there is no terminal to confirm the teardown on",
                            hint="run it in a terminal, or pass --yes to tear down without asking")
    running = _app_running(settings)
    if running and kind != td.Kind.PRIMARY:
        raise SafeholdError(f"the {kind.value} server {settings.server.name} is running; stop it before "
                            "tearing it down", hint=f"stop 'safehold serve --data-dir {settings.data_dir}'")
    if kind == td.Kind.SECONDARY:
        plan = td.prepare(settings, None)
        _show_plan(plan, settings, steps=not yes)
        _confirm(yes)
        outcome = td.execute(settings, None, plan, _say)
    else:
        if database.is_bundled(settings) and not database.manager(settings).status().running:
            _say("starting this server's database")
        with database.database_running(settings) as pg:
            plan = td.prepare(settings, pg)
            _show_plan(plan, settings, steps=not yes)
            _confirm(yes)
            outcome = td.execute(settings, pg, plan, _say)
    _report(outcome, settings, running)
