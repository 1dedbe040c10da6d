"""Short-lived database access for the commands that set servers up ('ha pack', 'ha add-secondary',
'ha join'): they run outside a server, so each opens an engine of one connection, runs a few storage
functions on it and closes it again.

A failing statement or connection raises :class:`StatementFailed` (a DatabaseError naming the driver's
last line, never a password), so callers above storage need not know the driver.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from safehold.errors import DatabaseError
from safehold.storage.db import DbTarget, make_engine

T = TypeVar("T")
Statement = Callable[[AsyncConnection], Awaitable[T]]


class StatementFailed(DatabaseError):
    """A statement (or the connection for it) failed; ``kind`` is the error's type name and ``cause``
    the driver's last line."""

    def __init__(self, target: DbTarget, exc: SQLAlchemyError) -> None:
        self.kind = type(exc).__name__
        lines = str(getattr(exc, "orig", None) or self.kind).strip().splitlines()
        self.cause = lines[-1] if lines else self.kind
        super().__init__(f"the database at {target.host}:{target.port} failed for {target.user} ({self.cause})")


class OneConnection:
    """An engine of one connection to `target`; :meth:`run` runs one storage function on it."""

    def __init__(self, target: DbTarget) -> None:
        self.target = target
        self._engine: AsyncEngine = make_engine(target, pool_size=1)

    async def run(self, statement: Statement[T], *, write: bool = False) -> T:
        """Run `statement` in a transaction of its own (committed when `write`, else rolled back)."""
        try:
            async with (self._engine.begin() if write else self._engine.connect()) as conn:
                return await statement(conn)
        except SQLAlchemyError as exc:
            raise StatementFailed(self.target, exc) from None

    async def close(self) -> None:
        await self._engine.dispose()


@asynccontextmanager
async def one_connection(target: DbTarget) -> AsyncIterator[OneConnection]:
    db = OneConnection(target)
    try:
        yield db
    finally:
        await db.close()


def run_once(target: DbTarget, statement: Statement[T], *, write: bool = False) -> T:
    """Run one storage function on a connection of its own (from synchronous code)."""

    async def once() -> T:
        async with one_connection(target) as db:
            return await db.run(statement, write=write)

    return asyncio.run(once())
