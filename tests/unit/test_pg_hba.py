"""pg_hba.conf edits: Safehold's base lines first, added lines kept in order, a reload when running.

No PostgreSQL here: `pg_ctl` is a script that records how it was called, and a
copy of `sleep` named `postgres` working in the data directory is what /proc
shows of a running postmaster.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from safehold.pg import ClusterSpec, PgError
from safehold.pg.binaries import Binaries
from safehold.pg.hba import Hba
from safehold.pg.process import Postmaster
from safehold.pg.tools import ToolRunner

A = "hostssl replication repl_a 10.0.0.1/32 scram-sha-256"
B = "hostssl replication repl_b 10.0.0.2/32 scram-sha-256"
C = "hostssl all app_c 10.0.0.3/32 cert"
BASE = ["hostssl all all 127.0.0.1/32 scram-sha-256", "hostssl all all ::1/128 scram-sha-256"]


class Cluster:
    def __init__(self, root: Path) -> None:
        self.data_dir = root / "pg"
        self.data_dir.mkdir(mode=0o700)
        bin_dir = root / "bin"
        bin_dir.mkdir()
        self.calls = root / "pg_ctl.calls"
        pg_ctl = bin_dir / "pg_ctl"
        pg_ctl.write_text(f'#!/bin/sh\necho "$@" >> {self.calls}\n')
        pg_ctl.chmod(0o755)
        spec = ClusterSpec(data_dir=self.data_dir, port=5432)
        tools = ToolRunner(spec, Binaries(bin_dir=bin_dir, major=17, ssl=True), service_user=None)
        self.hba = Hba(tools, Postmaster(tools))
        self.hba.write([])

    def rules(self) -> list[str]:
        text = (self.data_dir / "pg_hba.conf").read_text()
        return [line for line in text.splitlines() if line and not line.startswith("#")]

    def reloads(self) -> list[str]:
        return self.calls.read_text().splitlines() if self.calls.exists() else []


@pytest.fixture
def cluster(tmp_path: Path) -> Cluster:
    return Cluster(tmp_path)


@pytest.fixture
def running(cluster: Cluster, tmp_path: Path) -> Iterator[Cluster]:
    """The same cluster with a (fake) postmaster working in its data directory."""
    program = tmp_path / "fake" / "postgres"
    program.parent.mkdir()
    shutil.copy(shutil.which("sleep") or "/bin/sleep", program)
    proc = subprocess.Popen([str(program), "300"], cwd=cluster.data_dir)
    (cluster.data_dir / "postmaster.pid").write_text(f"{proc.pid}\n{cluster.data_dir}\n0\n5432\n")
    try:
        yield cluster
    finally:
        proc.kill()
        proc.wait()


# (lines there, edit, its lines) -> (what add returns, the extra lines afterwards)
EDITS: list[tuple[str, list[str], str, list[str], list[str] | None, list[str]]] = [
    ("adds in order", [], "add", [A, B], [A, B], [A, B]),
    ("adds each line once", [A], "add", [B, A, B], [B], [A, B]),
    ("adding what is there changes nothing", [A, B], "add", [A], [], [A, B]),
    ("removes exactly the lines named", [A, B, C], "remove", [B], None, [A, C]),
    ("removing what is not there keeps the rest", [A], "remove", [C], None, [A]),
    ("removing nothing keeps everything", [A, C], "remove", [], None, [A, C]),
]


@pytest.mark.parametrize(("story", "before", "edit", "lines", "added", "after"), EDITS, ids=[e[0] for e in EDITS])
def test_edits(
    cluster: Cluster,
    story: str,
    before: list[str],
    edit: str,
    lines: list[str],
    added: list[str] | None,
    after: list[str],
) -> None:
    cluster.hba.write(before)
    result = cluster.hba.add(lines) if edit == "add" else cluster.hba.remove(lines)
    assert result == added, story
    assert cluster.hba.extra_lines() == after, story
    assert cluster.rules() == [*BASE, *after], story  # the base lines always come first
    assert cluster.reloads() == []  # nothing runs: no reload


@pytest.mark.parametrize(
    "line",
    [
        "host all all 10.0.0.1/32 scram-sha-256",  # not TLS
        "hostssl all all 0.0.0.0/0 trust",
        "local all all scram-sha-256",
        f"{A}\nhost all all 0.0.0.0/0 trust",
    ],
)
def test_refused_lines_leave_the_file_alone(cluster: Cluster, line: str) -> None:
    cluster.hba.add([A])
    before = (cluster.data_dir / "pg_hba.conf").read_bytes()
    with pytest.raises(PgError):
        cluster.hba.add([line])
    assert (cluster.data_dir / "pg_hba.conf").read_bytes() == before


def test_a_running_server_is_reloaded_after_each_change(running: Cluster) -> None:
    reload = f"reload -D {running.data_dir} -s"
    assert running.hba.add([A]) == [A]
    assert running.reloads() == [reload]
    assert running.hba.add([A]) == []  # no change: no reload
    assert running.reloads() == [reload]
    running.hba.remove([A])
    assert running.reloads() == [reload, reload]
    assert running.hba.extra_lines() == []


def test_concurrent_edits_lose_no_line(tmp_path: Path) -> None:
    """Two editors (say, a pack and an add-secondary) each add their lines at the same time."""
    first = Cluster(tmp_path)
    second = Hba(*_parts_of(first))
    mine = [f"hostssl replication repl_{i} 10.0.1.{i}/32 scram-sha-256" for i in range(1, 30)]
    theirs = [f"hostssl replication repl_{i} 10.0.2.{i}/32 scram-sha-256" for i in range(1, 30)]
    threads = [
        threading.Thread(target=lambda: [first.hba.add([line]) for line in mine]),
        threading.Thread(target=lambda: [second.add([line]) for line in theirs]),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(first.hba.extra_lines()) == sorted(mine + theirs)
    assert [line for line in first.hba.extra_lines() if line in mine] == mine  # each editor's order kept


def _parts_of(cluster: Cluster) -> tuple[ToolRunner, Postmaster]:
    """A second, independent editor of the same data directory (its own objects, same files)."""
    spec = ClusterSpec(data_dir=cluster.data_dir, port=5432)
    tools = ToolRunner(
        spec, Binaries(bin_dir=cluster.data_dir.parent / "bin", major=17, ssl=True), service_user=None
    )
    return tools, Postmaster(tools)
