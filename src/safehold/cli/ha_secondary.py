"""``safehold ha`` commands run on the primary for a new secondary server (registered on ha_app)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from safehold.cli.common import DataDir, ha_app, out, passphrase_for_new_file, show_passphrase


@ha_app.command("add-secondary")
def add_secondary(
    data_dir: DataDir,
    host: Annotated[str, typer.Option(help="The secondary's host (IP address or DNS name), as the primary "
                                      "database sees it; its HTTPS certificate is made for it.")],
    out_file: Annotated[Path, typer.Option("--out", "-o", help="The setup file to write.")],
    passphrase_file: Annotated[Path | None, typer.Option(help="Seal the file with the passphrase in this file "
                                                         "(else one is made and printed once).")] = None,
    db_host: Annotated[str | None, typer.Option(help="The address the secondary reaches the primary database "
                                                "at (default: database.host of this server).")] = None,
    name: Annotated[str | None, typer.Option(help="Display name of the secondary (default: its hostname; "
                                             "'ha join --name' overrides it).")] = None,
) -> None:
    """On the primary: give a new secondary server a database login of its own, let it in, issue its
    certificate and write one setup file for 'safehold ha join' (never the master key).
    A standalone server becomes the primary of its cluster."""
    from safehold.cli.context import load
    from safehold.ha.add_secondary import add_secondary as add
    from safehold.runtime import database

    passphrase, generated = passphrase_for_new_file(passphrase_file)
    settings, master = load(data_dir)
    say = lambda m: out.print(f"• {m}", highlight=False)  # noqa: E731
    with database.database_running(settings) as pg:
        if pg is None:
            raise typer.BadParameter("this server has no bundled database to add a secondary to "
                                     f"(database.mode is {settings.database.mode!r})")
        added = add(settings, master, pg, host=host, out=out_file, passphrase=passphrase, db_host=db_host,
                    name=name, say=say)
    out.print(f"  secondary server id {added.server_id}, database login {added.db_role}", highlight=False)
    if generated:
        show_passphrase(passphrase, added.out)
    else:
        out.print(f"[green]✓[/] wrote {added.out}, sealed with the passphrase from {passphrase_file}",
                  highlight=False)
    out.print(f"  on the secondary: safehold ha join {added.out.name} --data-dir DIR --key-file KEY "
              "[--port N]", highlight=False)
