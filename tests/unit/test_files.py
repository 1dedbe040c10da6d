"""The one private-file writer (safehold.files) on a real file system: modes whatever the umask, links
replaced and never followed, nothing overwritten that must not be, and a failed write (a file larger than
the process may write, as on a full disk) leaving the old file whole and no temporary file behind."""

from __future__ import annotations

import os
import resource
import signal
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from safehold.files import nearest_existing, write_atomic, write_private


def test_a_private_file_is_new_with_its_mode_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        write_private(tmp_path / "tls" / "server.crt", b"cert", 0o644)
        write_private(tmp_path / "tls" / "server.key", b"key")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "tls" / "server.crt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "tls" / "server.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "tls").stat().st_mode) == 0o700
    with pytest.raises(FileExistsError):  # never reused
        write_private(tmp_path / "tls" / "server.key", b"other")
    assert (tmp_path / "tls" / "server.key").read_bytes() == b"key"


def test_a_private_file_never_follows_a_planted_link(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_bytes(b"keep")
    (tmp_path / "server.key").symlink_to(target)
    with pytest.raises(FileExistsError):
        write_private(tmp_path / "server.key", b"secret")
    write_private(tmp_path / "server.key", b"secret", replace=True)  # the link is replaced, not followed
    assert target.read_bytes() == b"keep"
    assert not (tmp_path / "server.key").is_symlink()
    assert (tmp_path / "server.key").read_bytes() == b"secret"
    assert stat.S_IMODE((tmp_path / "server.key").stat().st_mode) == 0o600


def test_a_new_only_file_refuses_a_dangling_link_too(tmp_path: Path) -> None:
    (tmp_path / "key").symlink_to(tmp_path / "missing")
    with pytest.raises(FileExistsError):
        write_private(tmp_path / "key", b"secret")
    assert not (tmp_path / "missing").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["key"]  # no temporary file left


@contextmanager
def _file_size_limit(limit: int) -> Iterator[None]:
    """Writes beyond ``limit`` bytes fail (EFBIG) in this process, as writes on a full disk fail."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "safehold.toml"
    write_atomic(path, b"old settings", mode=0o600)
    with _file_size_limit(1024), pytest.raises(OSError):
        write_atomic(path, b"x" * 1_000_000, mode=0o600)
    assert path.read_bytes() == b"old settings"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["safehold.toml"]
    write_atomic(path, b"new settings", mode=0o640)  # and the next write works
    assert path.read_bytes() == b"new settings"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_a_leftover_temporary_file_does_not_stop_the_next_write(tmp_path: Path) -> None:
    (tmp_path / ".server.key.safehold-tmp").write_bytes(b"half")
    write_private(tmp_path / "server.key", b"whole")
    assert (tmp_path / "server.key").read_bytes() == b"whole"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["server.key"]


def test_nearest_existing(tmp_path: Path) -> None:
    assert nearest_existing(tmp_path / "a" / "b" / "c") == tmp_path
    assert nearest_existing(tmp_path) == tmp_path
    os.mkdir(tmp_path / "a")
    assert nearest_existing(tmp_path / "a" / "b") == tmp_path / "a"
