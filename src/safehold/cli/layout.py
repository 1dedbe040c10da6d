"""Tables for the commands' output that never cut a cell: an id or a URL that does not fit is useless.

:func:`print_rows` prints a Rich table when every cell fits the console's width whole (a pipe counts as
80 columns unless ``COLUMNS`` says otherwise), else the same rows as a list, one block per row with a
``column: value`` line per cell, printed without wrapping.  Cells are :class:`rich.text.Text`, or plain
strings taken literally (never read as markup: a server name may hold ``[``)."""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

Cell = Text | str
UNBOUNDED = 100_000


def _text(cell: Cell) -> Text:
    return cell if isinstance(cell, Text) else Text(cell)


def fits(console: Console, table: Table) -> bool:
    """Whether the table, as wide as its widest cells need, fits the console (measured on an unbounded line:
    a measurement within the console's width is clamped to it)."""
    return Measurement.get(console, console.options.update_width(UNBOUNDED), table).maximum <= console.width


def print_rows(console: Console, title: str, columns: Sequence[str], rows: Sequence[Sequence[Cell]]) -> None:
    """``rows`` under ``columns``: a table if it fits whole, else a list (the first column heads each block)."""
    table = Table(*columns, title=title)
    for row in rows:
        table.add_row(*(_text(c) for c in row))
    if fits(console, table):
        console.print(table)
        return
    console.print(Text(title, style="italic"))
    label = max((len(c) for c in columns[1:]), default=0) + 1
    for row in rows:
        console.print(Text.assemble("• ", _text(row[0])), soft_wrap=True)
        for column, cell in zip(columns[1:], row[1:], strict=True):
            console.print(Text.assemble(f"    {column + ':':<{label}} ", _text(cell)), soft_wrap=True)


def when(iso: str | None, never: str = "never") -> str:
    """An ISO 8601 time as a reader wants it: UTC to the second."""
    if not iso:
        return never
    try:
        at = dt.datetime.fromisoformat(iso)
    except ValueError:
        return iso
    if at.tzinfo is not None:
        at = at.astimezone(dt.UTC)
    return at.strftime("%Y-%m-%d %H:%M:%S UTC")


def print_json(data: Any) -> None:
    """Machine-readable output: the JSON alone on stdout, keys as the API names them (stable)."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
