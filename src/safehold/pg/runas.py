"""Running PostgreSQL as an unprivileged user when Safehold itself runs as root.

PostgreSQL refuses to run as root.  When Safehold is started as root it runs
every PostgreSQL tool as a system user (``safehold`` unless SAFEHOLD_PG_USER
says otherwise), owns the data directory by it, and makes sure that user can
reach the binaries and the data directory (search bit on the ancestors only).
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import stat
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safehold.files import write_atomic
from safehold.pg.errors import PgError

log = logging.getLogger(__name__)

DEFAULT_SERVICE_USER = "safehold"
SERVICE_USER_ENV = "SAFEHOLD_PG_USER"

_lock = threading.Lock()
_granted: set[Path] = set()  # directories whose search bit we added (logged once)
_checked_trees: set[tuple[Path, int]] = set()


@dataclass(frozen=True)
class ServiceUser:
    """The account PostgreSQL processes run as, when it is not the current one."""

    name: str
    uid: int
    gid: int

    def popen_kwargs(self) -> dict[str, Any]:
        """subprocess arguments that drop to this user with no supplementary groups."""
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


def resolve_service_user(setting: str | None) -> ServiceUser | None:
    """Which user to run PostgreSQL as; None means the current process's user.

    "auto": the system user named by SAFEHOLD_PG_USER (default "safehold") when
    running as root, created if missing; the current user otherwise.
    """
    if setting is None:
        return None
    is_root = os.geteuid() == 0
    if setting == "auto":
        if not is_root:
            return None
        name = os.environ.get(SERVICE_USER_ENV) or DEFAULT_SERVICE_USER
    else:
        name = setting
        if not is_root:
            if name == pwd.getpwuid(os.geteuid()).pw_name:
                return None
            raise PgError(
                f"cannot run PostgreSQL as {name!r}: Safehold is not running as root",
                hint="start Safehold as that user, or as root",
            )
    if name == "root":
        raise PgError(
            "PostgreSQL refuses to run as root",
            hint=f"set {SERVICE_USER_ENV} to an unprivileged user (default {DEFAULT_SERVICE_USER})",
        )
    return ensure_system_user(name)


def ensure_system_user(name: str) -> ServiceUser:
    """The system user `name`, created (with its own group, no home, no shell) if missing."""
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        _create_system_user(name)
        pw = pwd.getpwnam(name)
    if pw.pw_uid == 0:
        raise PgError(f"service user {name!r} has uid 0; PostgreSQL refuses to run as root")
    return ServiceUser(name=pw.pw_name, uid=pw.pw_uid, gid=pw.pw_gid)


def _create_system_user(name: str) -> None:
    useradd = shutil.which("useradd") or next(
        (p for p in ("/usr/sbin/useradd", "/sbin/useradd") if os.path.exists(p)), None
    )
    if useradd is None:
        raise PgError(
            f"system user {name!r} does not exist and useradd is not available",
            hint=f"create an unprivileged system user {name!r}, or set {SERVICE_USER_ENV}",
        )
    shell = next(
        (s for s in ("/usr/sbin/nologin", "/sbin/nologin", "/bin/false") if os.path.exists(s)),
        "/bin/false",
    )
    argv = [useradd, "--system", "--user-group", "--no-create-home", "--shell", shell, name]
    proc = subprocess.run(argv, capture_output=True, timeout=60, check=False)
    if proc.returncode != 0:
        try:  # another process may have created it at the same moment
            pwd.getpwnam(name)
            return
        except KeyError:
            pass
        err = proc.stderr.decode(errors="replace").strip()[-300:]
        raise PgError(
            f"could not create system user {name!r}: {err}",
            hint=f"create it by hand, or set {SERVICE_USER_ENV} to an existing unprivileged user",
        )
    log.info("created system user %r to run PostgreSQL", name)


# --- reaching files ---------------------------------------------------------------


def _can(st: os.stat_result, user: ServiceUser, bits: tuple[int, int, int]) -> bool:
    """Whether `user` (primary group only) has the permission bits (u, g, o) on `st`."""
    if st.st_uid == user.uid:
        return bool(st.st_mode & bits[0])
    if st.st_gid == user.gid:
        return bool(st.st_mode & bits[1])
    return bool(st.st_mode & bits[2])


_SEARCH = (stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH)
_READ = (stat.S_IRUSR, stat.S_IRGRP, stat.S_IROTH)


def _chain(path: Path) -> Iterator[Path]:
    """Every directory from / down to `path`, as written and as resolved."""
    seen: set[Path] = set()
    for p in (Path(os.path.abspath(path)), path.resolve()):
        for d in [*reversed(p.parents), p]:
            if d not in seen:
                seen.add(d)
                yield d


def ensure_traversable(path: Path, user: ServiceUser) -> None:
    """Let `user` reach `path`: add only the search bit where it lacks it.

    Walks `path` and its ancestors; for each directory the user cannot search,
    adds the execute bit of the class (owner, group, other) the user falls in
    (for a foreign directory that is o+x). Nothing becomes listable or readable.
    """
    for d in _chain(path):
        try:
            st = d.stat()
        except FileNotFoundError:
            continue
        if not stat.S_ISDIR(st.st_mode) or _can(st, user, _SEARCH):
            continue
        if st.st_uid == user.uid:
            bit = stat.S_IXUSR
        elif st.st_gid == user.gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        os.chmod(d, stat.S_IMODE(st.st_mode) | bit)
        with _lock:
            first = d not in _granted
            _granted.add(d)
        if first:
            log.info("granted search permission (+x) on %s so %s can reach it", d, user.name)


def user_can_read(path: Path, user: ServiceUser) -> bool:
    """Whether `user` can reach and read `path`, judging by mode bits (ACLs ignored)."""
    try:
        for d in _chain(path.parent):
            if not _can(d.stat(), user, _SEARCH):
                return False
        return _can(path.stat(), user, _READ)
    except OSError:
        return False


def check_tree_usable(root: Path, user: ServiceUser) -> None:
    """Verify `user` can read every file under `root` and run its executables.

    The wheel installs PostgreSQL world-readable (755/644); an install made
    under a restrictive umask is not, and PostgreSQL would fail obscurely.
    """
    key = (root, user.uid)
    with _lock:
        if key in _checked_trees:
            return
    problems: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            p = Path(dirpath) / name
            try:
                st = p.stat()
            except OSError:
                continue  # dangling symlink: nothing will use it
            needs_x = stat.S_ISDIR(st.st_mode) or bool(st.st_mode & stat.S_IXUSR)
            if not _can(st, user, _READ) or (needs_x and not _can(st, user, _SEARCH)):
                problems.append(str(p))
    if problems:
        shown = ", ".join(problems[:5]) + (" …" if len(problems) > 5 else "")
        raise PgError(
            f"user {user.name!r} cannot read or run the PostgreSQL files under {root}: {shown}",
            hint=f"make them world-readable: chmod -R o+rX {root}",
        )
    with _lock:
        _checked_trees.add(key)


# --- files inside PGDATA ------------------------------------------------------------


def write_file(path: Path, data: bytes, *, mode: int, owner: ServiceUser | None) -> None:
    """Atomically replace `path` with `data`, owned by `owner` (None: this process): see
    :func:`safehold.files.write_atomic` (a symlink planted at `path` is replaced, never followed)."""
    write_atomic(path, data, mode=mode, owner=None if owner is None else (owner.uid, owner.gid))


def make_dir(path: Path, *, mode: int, owner: ServiceUser | None) -> None:
    """Create `path` (and parents) if missing; give it `mode` and `owner`."""
    path.mkdir(parents=True, exist_ok=True)
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise PgError(f"{path} is not a directory")
    if owner is not None and (st.st_uid, st.st_gid) != (owner.uid, owner.gid):
        os.chown(path, owner.uid, owner.gid, follow_symlinks=False)
    if stat.S_IMODE(st.st_mode) != mode:
        os.chmod(path, mode)


def chown_tree(root: Path, owner: ServiceUser) -> int:
    """Give every entry under `root` to `owner` (symlinks themselves, not targets).

    Returns how many entries changed.
    """
    changed = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for p in [Path(dirpath), *(Path(dirpath) / n for n in [*dirnames, *filenames])]:
            st = p.lstat()
            if (st.st_uid, st.st_gid) != (owner.uid, owner.gid):
                os.chown(p, owner.uid, owner.gid, follow_symlinks=False)
                changed += 1
    return changed


def read_tail(path: Path, *, start: int = 0, max_bytes: int = 64 * 1024) -> str:
    """The end of a log file from byte `start` on (symlinks not followed); '' if absent."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return ""
    with os.fdopen(fd, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if start > size:  # rotated or truncated since: read it all
            start = 0
        f.seek(max(start, size - max_bytes))
        return f.read().decode(errors="replace")
