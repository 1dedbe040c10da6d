from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import Server, running_pair, running_server


@pytest.fixture(scope="session")
def server_root() -> Iterator[Path]:
    """Where the servers' data directories live: a directory of this session's own in /tmp rather
    than pytest's tmp_path, because any other pytest session that starts on the machine resets
    /tmp/pytest-of-<user> to 0700 and would cut the PostgreSQL service user off mid-run."""
    root = Path(tempfile.mkdtemp(prefix="safehold-tests-"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def shared_server(server_root: Path) -> Iterator[Server]:
    """One server for the tests that do not change its configuration or stop it."""
    with running_server(Path(tempfile.mkdtemp(dir=server_root)) / "data") as server:
        yield server


@pytest.fixture()
def server(server_root: Path) -> Iterator[Server]:
    """A fresh server of the test's own (for tests that stop, restart or break it)."""
    with running_server(Path(tempfile.mkdtemp(dir=server_root)) / "data") as s:
        yield s


@pytest.fixture(scope="session")
def admin_token(shared_server: Server) -> str:
    return shared_server.login()


@pytest.fixture()
def primary_and_readonly(server_root: Path) -> Iterator[tuple[Server, Server]]:
    """A primary and a read-only server, both serving, each its own process (see support.running_pair)."""
    with running_pair(Path(tempfile.mkdtemp(dir=server_root))) as pair:
        yield pair
