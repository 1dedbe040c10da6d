"""``safehold ha …``: set up and watch the high-availability topology."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from safehold.cli.common import DataDir, err, ha_app, out, read_passphrase  # noqa: F401 - re-exported
from safehold.ha.setupfile import peek_kind


@ha_app.command()
def status(data_dir: DataDir) -> None:
    """The cluster as this server sees it: servers, databases, HA and replication status."""
    from rich.table import Table

    from safehold.cli.context import with_runtime
    from safehold.ha.status import cluster_status

    st = with_runtime(data_dir, lambda rt: cluster_status(rt, ask_self=True))
    fence = st.get("fence")
    if fence:
        err.print(f"[red bold]FENCED[/]: {fence['acting_primary_name']} ({fence['acting_primary_url']}) is the acting "
                  f"primary since generation {fence['generation']}; this server refuses every change. Rejoin it: "
                  f"safehold ha rejoin --data-dir {data_dir} --from {fence['acting_primary_url']}", highlight=False)
    out.print(f"Cluster {st['cluster_id']}, generation {st['generation']}", highlight=False)
    t = Table("name", "role", "status", "url", "sessions", "last seen", "id", title="Servers")
    for s in st["servers"]:
        colour = "green" if s["status"] == "active" else "red"
        t.add_row(s["name"], s["role"], f"[{colour}]{s['status']}[/]", s["url"], str(s["sessions"]),
                  s["last_seen"] or "-", s["id"])
    out.print(t)
    d = Table("host", "port", "role", "servers configured", "servers active", title="Databases")
    for db in st["databases"]:
        d.add_row(str(db["host"]), str(db["port"]), db["role"], str(db["servers_configured"]),
                  str(db["servers_active"]))
    out.print(d)
    engine = st.get("engine")
    if engine and not engine["reachable"]:
        err.print(f"[red bold]HA engine unreachable[/]: {engine['error']}", highlight=False)
    elif engine:
        e = Table("name", "role", "state", "host:port", "timeline", "lag (bytes)",
                  title=f"Engine members (Patroni, scope {engine['scope'] or '?'})")
        for m in engine["members"]:
            colour = "green" if m["state"] in ("running", "streaming") else "red"
            e.add_row(m["name"], m["role"], f"[{colour}]{m['state']}[/]", f"{m['host']}:{m['port'] or '?'}",
                      "-" if m["timeline"] is None else str(m["timeline"]), "-" if m["lag"] is None else str(m["lag"]))
        out.print(e)
    out.print(f"HA status: {st['ha_status'] or 'n/a (no read-only server)'}   "
              f"Replication status: {st['replication_status'] or 'n/a'}   "
              f"lag: {st['replication_lag_bytes']} bytes, {st['replication_lag_seconds']} s   "
              f"audit backlog: {st['audit_backlog']['pending']} pending, {st['audit_backlog']['shipped']} shipped")
    for alarm in st.get("alarms", []):
        out.print(f"[red bold]ALARM[/] {alarm['condition']} on {alarm['server']}: {alarm['message']}", highlight=False)


@ha_app.command()
def join(
    setup_file: Annotated[Path, typer.Argument(help="A setup file ('ha add-secondary') or setup pack ('ha pack').")],
    data_dir: DataDir,
    key_file: Annotated[Path, typer.Option(help="This cluster's master key file (copied from the primary).")],
    passphrase_file: Annotated[Path | None, typer.Option(help="File holding the passphrase printed by the "
                                                         "primary (else it is asked for).")] = None,
    port: Annotated[int | None, typer.Option(help="HTTPS port of this server.", min=1, max=65535)] = None,
    db_port: Annotated[int | None, typer.Option(help="Port of this read-only server's replica.",
                                                min=1, max=65535)] = None,
    name: Annotated[str | None, typer.Option(help="Display name of this server.")] = None,
) -> None:
    """Configure this host as a secondary or read-only server from what the primary wrote.
    A damaged file, a wrong passphrase, a wrong key file or a file of another cluster is refused
    and nothing is changed on disk."""
    passphrase = read_passphrase(passphrase_file)
    manifest = peek_kind(setup_file, passphrase)
    say = lambda m: out.print(f"• {m}")  # noqa: E731
    if manifest.kind == "readonly":
        from safehold.ha.join_readonly import join_readonly

        settings = join_readonly(setup_file, passphrase, data_dir=data_dir, key_file=key_file, port=port,
                                 db_port=db_port, name=name, say=say)
    else:
        from safehold.ha.join_secondary import join_secondary

        settings = join_secondary(setup_file, passphrase, data_dir=data_dir, key_file=key_file, port=port,
                                  name=name, say=say)
    out.print(f"[green]✓[/] {settings.server.name} joined as {settings.server.role}; "
              f"start it with: safehold serve --data-dir {settings.data_dir}", highlight=False)

from safehold.cli.ha_sync import sync  # noqa: E402

ha_app.command()(sync)

from safehold.cli.ha_teardown import teardown  # noqa: E402

ha_app.command()(teardown)


from safehold.cli.ha_ops import override_lease, promote, rejoin, switchover  # noqa: E402

ha_app.command()(promote)
ha_app.command()(rejoin)
ha_app.command()(switchover)
ha_app.command("override-lease")(override_lease)

from safehold.cli.ha_check import check  # noqa: E402
from safehold.cli.ha_failover import failover  # noqa: E402

ha_app.command()(failover)
ha_app.command()(check)
