"""Rows one database holds that another lacks or holds differently (a rejoining server's changes
that never replicated), compared table by table through a digest of every row."""

from __future__ import annotations

from collections.abc import Collection, Iterator
from typing import Any, NamedTuple

import psycopg
from psycopg import sql

from safehold.storage.db import DbTarget, connect


class DivergentRow(NamedTuple):
    table: str
    key: str  # the primary key, as text
    status: str  # "only-here" (the other database lacks it) or "differs"
    row: Any  # the local row as JSON (ciphertext, never a clear password)


def _key(pk: list[str]) -> sql.Composable:
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in pk)
    return columns if len(pk) == 1 else sql.SQL("ROW({})").format(columns)


def _row_digests(conn: psycopg.Connection[Any], table: str, pk: list[str]) -> dict[str, str]:
    q = sql.SQL("SELECT ({pk})::text, md5(t::text) FROM {t} AS t").format(pk=_key(pk), t=sql.Identifier(table))
    return {str(k): str(v) for k, v in conn.execute(q).fetchall()}


def _tables(conn: psycopg.Connection[Any]) -> dict[str, list[str]]:
    rows = conn.execute("""
        SELECT c.relname, array_agg(a.attname ORDER BY array_position(i.indkey, a.attnum))
        FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY(i.indkey)
        WHERE i.indisprimary AND n.nspname = 'public' GROUP BY c.relname ORDER BY c.relname""").fetchall()
    return {str(name): list(cols) for name, cols in rows}


def divergent_rows(local: DbTarget, source: DbTarget, *, skip: Collection[str] = ()) -> Iterator[DivergentRow]:
    """Every row of ``local``'s tables (those with a primary key, but ``skip``) that ``source`` lacks or
    holds differently, table by table."""
    with connect(local) as lc, connect(source) as sc:
        for table, pk in _tables(lc).items():
            if table in skip:
                continue
            mine, theirs = _row_digests(lc, table, pk), _row_digests(sc, table, pk)
            diff = {k: ("only-here" if k not in theirs else "differs") for k, d in mine.items() if theirs.get(k) != d}
            if not diff:
                continue
            q = sql.SQL("SELECT ({pk})::text, to_jsonb(t) FROM {t} AS t").format(pk=_key(pk),
                                                                              t=sql.Identifier(table))
            for key, row in lc.execute(q):
                if str(key) in diff:
                    yield DivergentRow(table, str(key), diff[str(key)], row)
