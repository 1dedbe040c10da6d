"""Whether PostgreSQL runs on a data directory, judged from its pid file and /proc.

No PostgreSQL here: a copy of `sleep` named `postgres`, started in a directory,
is what /proc shows of a postmaster working there. Each story writes the pid
file a crash or a reused pid would leave and checks what the postmaster side
concludes (status, the stale-file cleanup before a start, a crash by SIGKILL).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from safehold.pg import ClusterSpec, PortInUse, port_in_use
from safehold.pg.binaries import Binaries
from safehold.pg.process import Postmaster
from safehold.pg.tools import ToolRunner

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _postmaster(data_dir: Path, port: int = 0) -> Postmaster:
    spec = ClusterSpec(data_dir=data_dir, port=port or _free_port())
    binaries = Binaries(bin_dir=data_dir.parent / "bin", major=17, ssl=True)
    return Postmaster(ToolRunner(spec, binaries, service_user=None))


def _pid_file(data_dir: Path, pid: int, port: int) -> None:
    # postmaster.pid: pid, data directory, start time, port, socket dir, listen address, shmem key, status
    lines = [str(pid), str(data_dir), "1700000000", str(port), "", "127.0.0.1", "0 0", "ready"]
    (data_dir / "postmaster.pid").write_text("\n".join(lines) + "\n")


@pytest.fixture
def fake_postgres(tmp_path: Path) -> Iterator[Callable[[Path], int]]:
    """Start a process /proc names `postgres` in a given directory; all killed afterwards."""
    program = tmp_path / "fake" / "postgres"
    program.parent.mkdir()
    shutil.copy(shutil.which("sleep") or "/bin/sleep", program)
    started: list[subprocess.Popen[bytes]] = []

    def start(cwd: Path) -> int:
        proc = subprocess.Popen([str(program), "300"], cwd=cwd)
        started.append(proc)
        return proc.pid

    yield start
    for proc in started:
        proc.kill()
        proc.wait()


def _gone_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_port_in_use_sees_a_listening_socket() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = int(sock.getsockname()[1])
        assert port_in_use("127.0.0.1", port) is True
    assert port_in_use("127.0.0.1", port) is False


# (who holds the pid in postmaster.pid) -> (status says running, the file survives prepare_to_start)
STALE_PID_FILES = [
    ("a postgres process working in this data directory", "here", True, True),
    ("a postgres process of another cluster (PostgreSQL decides)", "elsewhere", False, True),
    ("another program that reused the pid", "self", False, False),
    ("nobody: the postmaster crashed", "gone", False, False),
]


@pytest.mark.parametrize(("story", "holder", "running", "kept"), STALE_PID_FILES, ids=[s[0] for s in STALE_PID_FILES])
def test_pid_file_holder_decides_running_and_cleanup(
    tmp_path: Path,
    fake_postgres: Callable[[Path], int],
    story: str,
    holder: str,
    running: bool,
    kept: bool,
) -> None:
    data_dir = tmp_path / "pg"
    data_dir.mkdir(mode=0o700)
    elsewhere = tmp_path / "other-cluster"
    elsewhere.mkdir()
    pid = {
        "here": lambda: fake_postgres(data_dir),
        "elsewhere": lambda: fake_postgres(elsewhere),
        "self": os.getpid,
        "gone": _gone_pid,
    }[holder]()
    port = _free_port()
    postmaster = _postmaster(data_dir, port)
    _pid_file(data_dir, pid, port)

    status = postmaster.status()
    assert status.running is running, story
    assert status.pid == (pid if running else None)
    assert status.port == (port if running else None)
    assert postmaster.alive_pid() == (pid if running else None)

    postmaster.prepare_to_start()
    assert (data_dir / "postmaster.pid").exists() is kept, story
    assert (data_dir / "log").is_dir()


def test_prepare_to_start_refuses_a_port_in_use(tmp_path: Path) -> None:
    data_dir = tmp_path / "pg"
    data_dir.mkdir(mode=0o700)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        postmaster = _postmaster(data_dir, port=int(sock.getsockname()[1]))
        with pytest.raises(PortInUse):
            postmaster.prepare_to_start()


def test_kill_takes_the_postmaster_down_as_a_crash(
    tmp_path: Path, fake_postgres: Callable[[Path], int]
) -> None:
    data_dir = tmp_path / "pg"
    data_dir.mkdir(mode=0o700)
    pid = fake_postgres(data_dir)
    postmaster = _postmaster(data_dir)
    _pid_file(data_dir, pid, 5432)
    assert postmaster.status().running

    postmaster.kill()

    assert postmaster.status().running is False
    assert (data_dir / "postmaster.pid").exists()  # a crash leaves the pid file behind
    postmaster.kill()  # nothing left to kill: no error
    assert postmaster.stop() is False  # not running: nothing to stop
