"""Private files a server is given (its TLS key, its database passwords): written one way, hardened.

Every such file goes through :func:`safehold.pg.runas.write_file`: a fresh temporary file (``O_EXCL``,
``O_NOFOLLOW``) given its mode with ``fchmod`` whatever the umask, fsynced and renamed into place, so a
link planted at the path is replaced, never followed.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from safehold.pg.runas import write_file


def write_private(path: Path, data: bytes, mode: int = 0o600, *, replace: bool = False) -> None:
    """Write ``data`` to ``path`` with ``mode``, making its missing directories (mode 0700).

    ``replace=False``: nothing may be at the path yet, not even a link (FileExistsError otherwise);
    ``replace=True``: whatever is there is atomically replaced."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not replace and os.path.lexists(path):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path))
    write_file(path, data, mode=mode, owner=None)


def nearest_existing(path: Path) -> Path:
    """`path` or its nearest ancestor that exists (where a scratch directory for a new one can go)."""
    while not path.exists():
        path = path.parent
    return path
