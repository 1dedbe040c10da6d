"""The type of a result row: columns are read by name (``row.username``); a row's version."""

from typing import Any

from sqlalchemy import ColumnElement, Table, Text, cast, func, literal_column
from sqlalchemy.engine import Row

AnyRow = Row[*tuple[Any, ...]]


def present(row: AnyRow | None) -> AnyRow:
    """A row the caller knows exists (it was just written in the same transaction)."""
    if row is None:
        raise LookupError("row vanished inside its own transaction")
    return row


def row_version(table: Table) -> ColumnElement[str]:
    """A row's version as text (``row.version``): PostgreSQL's ``xmin``, the id of the transaction that
    wrote this version of the row.  Every UPDATE writes a new version with a new ``xmin``, a row lock
    does not, and every server of the cluster reads the same value (one database, physical replicas)."""
    return cast(literal_column(f"{table.name}.xmin"), Text).label("version")


def changed_at() -> ColumnElement[Any]:
    """The time of a change: the clock when the statement runs, i.e. after the row lock was granted
    (``now()`` is the start of the transaction, before any lock wait)."""
    return func.clock_timestamp()
