"""Private files (keys, passwords, settings, TLS keys, exports): written one way, hardened, durable.

Every such file is written through a fresh temporary file beside it (``O_EXCL``, ``O_NOFOLLOW``), given
its mode with ``fchmod`` whatever the umask, fsynced, then moved into place; the directory is fsynced
too, so the file survives a power cut once the call returns.  A link planted at the path is replaced,
never followed; a file that must not be overwritten is linked into place (``link`` fails when the path
exists, with no window between a check and the write).  A write that fails (a full disk) leaves the
old file as it was and no temporary file behind.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def write_atomic(path: Path, data: bytes, *, mode: int, owner: tuple[int, int] | None = None,
                 replace: bool = True) -> None:
    """Write ``data`` to ``path`` with ``mode`` (and ``owner``'s uid and gid), all or nothing.

    ``replace=True``: whatever is at the path is atomically replaced; ``replace=False``: FileExistsError
    when anything (even a dangling link) is there already."""
    tmp = path.with_name(f".{path.name}.safehold-tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, flags, mode)
    try:
        try:
            if owner is not None:
                os.fchown(fd, *owner)
            os.fchmod(fd, mode)
            with os.fdopen(fd, "wb", closefd=False) as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        finally:
            os.close(fd)
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path, follow_symlinks=False)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    sync_dir(path.parent)


def write_private(path: Path, data: bytes, mode: int = 0o600, *, replace: bool = False) -> None:
    """:func:`write_atomic` for this process, making the missing directories (mode 0700).

    ``replace=False``: nothing may be at the path yet (FileExistsError otherwise)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomic(path, data, mode=mode, replace=replace)


def sync_dir(directory: Path) -> None:
    """fsync a directory, so the names created or renamed in it are durable (best effort)."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def nearest_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists (where a scratch directory for a new one can go)."""
    while not path.exists():
        path = path.parent
    return path
