from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import Server, running_server


@pytest.fixture(scope="session")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the tests that do not change its configuration or stop it."""
    with running_server(tmp_path_factory.mktemp("shared") / "data") as server:
        yield server


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[Server]:
    """A fresh server of the test's own (for tests that stop, restart or break it)."""
    with running_server(tmp_path / "data") as s:
        yield s


@pytest.fixture(scope="session")
def admin_token(shared_server: Server) -> str:
    return shared_server.login()
