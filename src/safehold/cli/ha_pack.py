"""``safehold ha pack``: on the primary, the setup pack of a new read-only server (registered on ha_app)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from safehold.cli.common import DataDir, ha_app, out, passphrase_for_new_file, show_passphrase


@ha_app.command()
def pack(
    data_dir: DataDir,
    readonly_host: Annotated[str, typer.Option(help="IP address (or resolvable DNS name) of the new read-only "
                                               "server, as this primary's database sees it.")],
    out_file: Annotated[Path, typer.Option("--out", "-o", help="The setup pack to write (must not exist).")],
    passphrase_file: Annotated[Path | None, typer.Option(help="Seal the pack with the passphrase in this file "
                                                         "(else a new one is printed once).")] = None,
    name: Annotated[str | None, typer.Option(help="Display name of the read-only server "
                                             "(default: its host name at join).")] = None,
    db_host: Annotated[str | None, typer.Option(help="Address of this primary's database as the read-only "
                                                "server reaches it (default: database.host).")] = None,
) -> None:
    """Write a setup pack for a new read-only server, while this primary keeps serving.

    It makes a replication role and slot for that server, lets it stream (pg_hba.conf), takes an online base backup and seals it with the TLS trust, the connection settings and the cluster identity into one file: never the master key file. Join it on the read-only host with 'safehold ha join PACK --data-dir DIR --key-file K --passphrase-file P'."""
    from safehold.cli.context import load
    from safehold.errors import ConfigError
    from safehold.ha.pack import create_pack
    from safehold.runtime import database

    settings, master = load(data_dir)
    passphrase, generated = passphrase_for_new_file(passphrase_file)
    with database.database_running(settings) as pg:
        if pg is None:
            raise ConfigError("'safehold ha pack' needs the bundled database: a read-only server replicates it",
                              hint="on a database an HA engine runs, put a read-only server on one of its "
                                   "replicas: 'safehold join --readonly --database-url URL --key-file K' "
                                   "(docs/SCALE-OUT.md)")
        columns = (TextColumn("{task.description:<12}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                   TimeRemainingColumn())
        with Progress(*columns, console=out) as bars:
            tasks: dict[str, TaskID] = {}

            def progress(phase: str, done: int, total: int) -> None:
                if phase not in tasks:
                    tasks[phase] = bars.add_task("base backup" if phase == "backup" else "sealing", total=None)
                bars.update(tasks[phase], completed=done, total=max(total, done))

            result = create_pack(settings, master, pg, readonly_host=readonly_host, out=out_file,
                                 passphrase=passphrase, name=name, primary_db_host=db_host,
                                 say=lambda m: bars.console.print(f"• {m}", highlight=False), progress=progress)
    if generated:
        show_passphrase(passphrase, result.out)
    else:
        out.print(f"[green]✓[/] wrote {result.out} (sealed with the passphrase in {passphrase_file})",
                  highlight=False)
    out.print(f"  {result.size:,} bytes; the read-only server at {result.readonly_host} (id {result.server_id}) streams "
              f"from {result.primary_db_host}:{result.primary_db_port} as {result.replication_role} through slot "
              f"{result.slot}", highlight=False)
    out.print(f"  this server is now the primary of cluster {result.cluster_id} (its role shows at its next start)",
              highlight=False)
    out.print("  on the read-only host: safehold ha join PACK --data-dir DIR --key-file KEY --passphrase-file P",
              highlight=False)
