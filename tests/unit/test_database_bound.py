"""The bound on every database call (Runtime._bounded): a call with no answer within the operation timeout
is a DatabaseError and replaces the pool; a longer bound may be asked for; a timeout raised inside the
call by something else is not taken for the bound's; the bound stretches to try every host of the URL."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest

from safehold.config import DatabaseSection, ServerSection, Settings
from safehold.domain import ServerRole
from safehold.errors import DatabaseError
from safehold.runtime import Runtime, ServerIdentity
from safehold.storage.db import DbTarget, make_engine

URL = "postgresql://u:pw@127.0.0.1:1,127.0.0.1:2,127.0.0.1:3/x?target_session_attrs=read-write"


def _runtime(tmp_path: Path, url: str = URL, **db: Any) -> Runtime:
    settings = Settings(server=ServerSection(id=str(uuid.uuid4()), name="t"),
                        database=DatabaseSection(mode="external", url=url, **db), data_dir=tmp_path)
    engine = make_engine(DbTarget("", 0, "", "", "", None, url=url), pool_size=2)  # never connects here
    return Runtime(settings=settings, engine=engine, keys=None,  # type: ignore[arg-type]
                   identity=ServerIdentity(settings.server.id, "t", ServerRole.STANDALONE), cluster_id="c")


def test_a_call_with_no_answer_is_a_database_error_and_the_pool_is_replaced(tmp_path: Path) -> None:
    rt = _runtime(tmp_path, operation_timeout=1, connect_timeout=1)

    async def go() -> None:
        before = rt.engine.sync_engine.pool
        with pytest.raises(DatabaseError, match="did not answer within 4 s"):  # 3 hosts x 1 s + 1 s
            async with rt._bounded():
                await asyncio.sleep(60)
        assert rt.engine.sync_engine.pool is not before

    asyncio.run(go())


def test_a_longer_bound_and_a_timeout_that_is_not_the_bounds(tmp_path: Path) -> None:
    rt = _runtime(tmp_path, "postgresql://u:pw@127.0.0.1:1/x", operation_timeout=1, connect_timeout=1)

    async def go() -> None:
        async with rt._bounded(3):  # a long call by nature: not cut at 2 s (1 host x 1 s + 1 s)
            await asyncio.sleep(2.5)
        pool = rt.engine.sync_engine.pool
        with pytest.raises(TimeoutError):  # raised inside, by something else: passed on as it is
            async with rt._bounded():
                await asyncio.wait_for(asyncio.sleep(60), 0.1)
        assert rt.engine.sync_engine.pool is pool

    asyncio.run(go())
