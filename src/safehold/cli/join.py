"""``safehold join``: another server on a cluster whose database an HA engine (Patroni …) runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from safehold.cli.common import DataDir, steps

out = Console(soft_wrap=True, highlight=False)


def join(
    data_dir: DataDir,
    database_url: Annotated[str, typer.Option(
        help="The cluster's database: every member of the engine, e.g. postgresql://safehold:PW@db1:5432,db2:5432"
             "/safehold?target_session_attrs=read-write (for --readonly: a replica, target_session_attrs=standby, "
             "or the engine's read-only service).", envvar="SAFEHOLD_DATABASE_URL")],
    key_file: Annotated[Path, typer.Option(help="The cluster's master key file (a copy of the first server's).")],
    name: Annotated[str | None, typer.Option(help="Display name of this server (default: the hostname).")] = None,
    port: Annotated[int, typer.Option(help="HTTPS port.", min=1, max=65535)] = 8443,
    listen: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0 for all).")] = "127.0.0.1",
    hostname: Annotated[list[str] | None, typer.Option("--hostname", help="Extra DNS name or IP for the "
                                                       "certificate (repeatable).")] = None,
    readonly: Annotated[bool, typer.Option("--readonly", help="An emergency read-only server on a replica: it "
                                           "redirects users while an app server is up, and serves passwords "
                                           "itself when none is.")] = False,
    primary_url: Annotated[str | None, typer.Option(
        help="With --readonly: the writable database, where the audit records it keeps meanwhile are shipped "
             "(default: --database-url asking for target_session_attrs=read-write).",
        envvar="SAFEHOLD_PRIMARY_DATABASE_URL")] = None,
) -> None:
    """Add a server to a cluster whose database is already there, run by an HA engine that owns its failover
    (Patroni, CloudNativePG, a cloud service). App servers all read and write; see docs/SCALE-OUT.md."""
    from safehold.services.join import JoinOptions
    from safehold.services.join import join as join_cluster

    opts = JoinOptions(data_dir=data_dir, database_url=database_url, key_file=key_file, name=name, listen=listen,
                       port=port, hostnames=tuple(hostname or ()), readonly=readonly, primary_url=primary_url)
    with steps(out, "joining…") as say:
        joined = join_cluster(opts, say=say)
    s = joined.settings
    kind = "read-only server" if readonly else "app server"
    out.print(f"[green]✓[/] {kind} [bold]{s.server.name}[/] joined cluster {joined.cluster_id} in {s.data_dir}")
    out.print(f"  server id  {s.server.id}\n  URL        https://{s.http.listen}:{s.http.port}")
    out.print(f"Start it with: safehold serve --data-dir {s.data_dir}")
