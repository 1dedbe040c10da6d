"""The type of a result row: columns are read by name (``row.username``)."""

from typing import Any

from sqlalchemy.engine import Row

AnyRow = Row[*tuple[Any, ...]]


def present(row: AnyRow | None) -> AnyRow:
    """A row the caller knows exists (it was just written in the same transaction)."""
    if row is None:
        raise LookupError("row vanished inside its own transaction")
    return row
