"""What the ``safehold`` commands share: the ``ha`` command group, the consoles, the ``--data-dir`` option and
the passphrase prompts (a module of its own, so that the command modules never import each other)."""

from __future__ import annotations

import getpass
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

ha_app = typer.Typer(help="High availability: secondaries, read-only servers, status.", no_args_is_help=True)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

DataDir = Annotated[Path, typer.Option("--data-dir", "-d", help="The server's data directory.",
                                       envvar="SAFEHOLD_DATA_DIR")]


@contextmanager
def steps(console: Console, label: str) -> Iterator[Callable[[str], None]]:
    """A spinner for a long command, and ``say(step)``: each step is shown on it and kept as a line."""
    with console.status(label) as status:
        def say(message: str) -> None:
            status.update(message)
            console.print(f"• {message}", highlight=False)

        yield say


def read_passphrase(passphrase_file: Path | None) -> str:
    """From the file if given, else asked for on the terminal (never from a command-line argument)."""
    if passphrase_file is not None:
        try:
            value = passphrase_file.read_text().strip()
        except OSError as exc:
            raise typer.BadParameter(f"cannot read {passphrase_file}: {exc.strerror or 'the system refused it'}") from None
        except UnicodeDecodeError:
            raise typer.BadParameter(f"{passphrase_file} is not text (UTF-8): it must hold the passphrase on one "
                                     "line") from None
        if not value:
            raise typer.BadParameter(f"{passphrase_file} is empty")
        return value
    if not sys.stdin.isatty():
        raise typer.BadParameter("no terminal to ask for the passphrase: use --passphrase-file")
    return getpass.getpass("Passphrase of the setup file: ").strip()


#: A passphrase the operator chose (--passphrase-file) must be at least this long: the file holds
#: database logins (and, for a pack, the whole database in ciphertext).
MIN_PASSPHRASE = 12


def passphrase_for_new_file(passphrase_file: Path | None) -> tuple[str, bool]:
    """(passphrase, generated): from --passphrase-file (long enough), else a new one to print once."""
    from safehold.ha.setupfile import new_passphrase

    if passphrase_file is None:
        return new_passphrase(), True
    passphrase = read_passphrase(passphrase_file)
    if len(passphrase) < MIN_PASSPHRASE:
        raise typer.BadParameter(f"the passphrase in {passphrase_file} is shorter than {MIN_PASSPHRASE} characters")
    return passphrase, False


def show_passphrase(passphrase: str, out_file: Path) -> None:
    out.print(f"[green]✓[/] wrote {out_file}")
    out.print(f"  passphrase (shown once; give it to the operator of the new server by another channel): "
              f"[bold]{passphrase}[/]", highlight=False)
