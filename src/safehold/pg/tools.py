"""Run PostgreSQL's tools, and write files in its data directory, as the service user.

The bottom of the `safehold.pg` package: the postmaster, the bootstrap, the
pg_hba edits and the replica operations all run their tools through a
`ToolRunner`. Passwords never reach a command line: they go in private files
(`private_files`) or the environment.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from safehold.pg import conf
from safehold.pg.binaries import Binaries
from safehold.pg.errors import PgError
from safehold.pg.runas import (
    ServiceUser,
    check_tree_usable,
    ensure_traversable,
    resolve_service_user,
    user_can_read,
    write_file,
)
from safehold.pg.spec import ClusterSpec

log = logging.getLogger(__name__)

LOG_TAIL_LINES = 20
FILE_MODE = 0o600
DIR_MODE = 0o700
#: libpq environment variables naming files the tool must read.
_FILE_VARIABLES = (
    "PGSSLROOTCERT",
    "PGSSLCERT",
    "PGSSLKEY",
    "PGSSLCRL",
    "PGPASSFILE",
    "PGSERVICEFILE",
)


class _Unresolved:
    pass


_UNRESOLVED = _Unresolved()


class ToolRunner:
    """How one cluster's tools run and its files are written: as the service user.

    When the process runs as root, every PostgreSQL tool runs as an unprivileged
    service user (see `safehold.pg.runas`); otherwise as the current user.
    Construction has no side effects: the user is resolved (and created) on
    first use.
    """

    def __init__(
        self, spec: ClusterSpec, binaries: Binaries, *, service_user: str | None = "auto"
    ) -> None:
        self.spec = spec
        self.binaries = binaries
        self._service_user_setting = service_user
        self._user: ServiceUser | None | _Unresolved = _UNRESOLVED
        self._tree_checked = False

    @property
    def data_dir(self) -> Path:
        return Path(self.spec.data_dir)

    @property
    def service_user(self) -> ServiceUser | None:
        """The user PostgreSQL runs as; None when it is this process's own user."""
        if isinstance(self._user, _Unresolved):
            self._user = resolve_service_user(self._service_user_setting)
        return self._user

    def ensure_access(self) -> None:
        """Let the service user reach the binaries and the data directory.

        Re-checked before every tool run (a few stat calls): something else,
        e.g. pytest resetting its temp root to 0700, may take the bit away again.
        """
        user = self.service_user
        if user is None:
            return
        bin_dir = self.binaries.bin_dir
        ensure_traversable(bin_dir, user)
        ensure_traversable(self.data_dir.parent, user)
        if not self._tree_checked:
            install = bin_dir.parent
            roots = [bin_dir]
            if (install / "share" / "postgres.bki").exists():  # a self-contained install
                roots += [p for p in (install / "lib", install / "share") if p.is_dir()]
            for root in roots:
                check_tree_usable(root, user)
            self._tree_checked = True

    def _env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """A clean environment: no PG* variables of the caller leak into the tools."""
        env = {
            "PATH": f"{self.binaries.bin_dir}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": str(self.data_dir),
            "LC_ALL": "C",
            "LANG": "C",
        }
        if "TZ" in os.environ:
            env["TZ"] = os.environ["TZ"]
        icu = self.binaries.bin_dir.parent / "share" / "icu"
        if icu.is_dir():  # musl builds read ICU data from a file
            env["ICU_DATA"] = str(icu)
        if extra:
            env.update(extra)
        return env

    def _spawn_kwargs(self, *, env: dict[str, str] | None, cwd: Path | None) -> dict[str, Any]:
        """subprocess arguments shared by every tool run: environment, directory, user."""
        self.ensure_access()
        user = self.service_user
        if cwd is None:
            cwd = self.data_dir if self.data_dir.is_dir() else Path("/")
        return {
            "env": self._env(env),
            "cwd": cwd,
            **(user.popen_kwargs() if user is not None else {}),
        }

    def run(
        self,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        input: bytes | None = None,
        timeout: float | None = None,
        cwd: Path | None = None,
        new_session: bool = False,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run `argv` as the service user and return it whatever its exit code."""
        kwargs = self._spawn_kwargs(env=env, cwd=cwd)
        log.debug("running %s in %s", Path(argv[0]).name, self.data_dir)
        return subprocess.run(
            argv,
            input=input,
            stdin=subprocess.DEVNULL if input is None else None,
            capture_output=True,
            timeout=timeout,
            check=False,
            start_new_session=new_session,
            **kwargs,
        )

    def run_streaming(
        self,
        name: str,
        args: list[str],
        *,
        env: dict[str, str],
        timeout: float | None,
        on_line: Callable[[str], None],
    ) -> None:
        """Run a tool as `run_tool` does, handing each stderr line to `on_line` as it comes.

        The tool runs in its own process group, killed as a whole on timeout or
        when `on_line` raises (pg_basebackup forks a WAL streaming child).
        """
        argv = [str(self.binaries.tool(name)), *args]
        kwargs = self._spawn_kwargs(env=env, cwd=None)
        log.debug("running %s in %s", name, self.data_dir)
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
            **kwargs,
        )
        timed_out = threading.Event()

        def expire() -> None:
            timed_out.set()
            _kill_group(proc.pid)

        timer = threading.Timer(timeout, expire) if timeout is not None else None
        if timer is not None:
            timer.daemon = True
            timer.start()
        tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
        try:
            assert proc.stderr is not None
            with proc.stderr:
                for raw in proc.stderr:
                    for line in raw.decode(errors="replace").replace("\r", "\n").splitlines():
                        if line.strip():
                            tail.append(line)
                            on_line(line)
            code = proc.wait()
        except BaseException:
            _kill_group(proc.pid)
            proc.wait()
            raise
        finally:
            if timer is not None:
                timer.cancel()
        if timed_out.is_set():
            raise PgError(f"{name} did not finish within {timeout:g}s")
        if code != 0:
            raise PgError(
                f"{name} failed (exit {code}): " + ("\n".join(tail) or "(no output)"),
                hint=self._unreadable_hint(name, env),
            )

    def run_tool(
        self,
        name: str,
        args: list[str],
        *,
        env: dict[str, str] | None = None,
        input: bytes | None = None,
        timeout: float | None = None,
        cwd: Path | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run a bundled tool (pg_dump, psql, pg_basebackup, pg_rewind…) as the service user.

        Passwords go in `env` (PGPASSWORD), never in `args`. Raises PgError with
        the tail of stderr on a non-zero exit.
        """
        argv = [str(self.binaries.tool(name)), *args]
        try:
            proc = self.run(argv, env=env, input=input, timeout=timeout, cwd=cwd)
        except subprocess.TimeoutExpired as exc:
            raise PgError(f"{name} did not finish within {timeout:g}s") from exc
        if proc.returncode != 0:
            raise PgError(
                f"{name} failed (exit {proc.returncode}): {stderr_tail(proc)}",
                hint=self._unreadable_hint(name, env or {}),
            )
        return proc

    def _unreadable_hint(self, tool: str, env: dict[str, str]) -> str | None:
        """A hint naming the files in `env` the service user cannot read, if any."""
        user = self.service_user
        if user is None:
            return None
        unreadable = [
            f"{var}={env[var]}"
            for var in _FILE_VARIABLES
            if var in env and not user_can_read(Path(env[var]), user)
        ]
        if not unreadable:
            return None
        return (
            f"{tool} runs as {user.name!r}, which cannot read {', '.join(unreadable)}; "
            f"for TLS verification use the CA copy {self.tool_sslrootcert()}"
        )

    def path(self, name: str) -> Path:
        """`name` inside the data directory."""
        return self.data_dir / name

    def write(self, name: str, data: bytes) -> None:
        """Write `name` in the data directory (0600, owned by the service user)."""
        write_file(self.path(name), data, mode=FILE_MODE, owner=self.service_user)

    @contextlib.contextmanager
    def password_file(self, password: str) -> Iterator[Path]:
        """A file holding the password, readable only by the service user, removed after."""
        with self.private_files({"pwfile": password.encode() + b"\n"}) as tmp:
            yield tmp / "pwfile"

    @contextlib.contextmanager
    def private_files(self, files: Mapping[str, bytes]) -> Iterator[Path]:
        """A fresh directory holding `files` (0600), readable only by the service user
        (or this process's user); removed with its content afterwards."""
        tmp = Path(tempfile.mkdtemp(prefix="safehold-pg-"))
        try:
            user = self.service_user
            if user is not None:
                os.chown(tmp, user.uid, user.gid)
                ensure_traversable(tmp.parent, user)
            for name, data in files.items():
                write_file(tmp / name, data, mode=FILE_MODE, owner=user)
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def tool_sslrootcert(self) -> Path:
        """The CA (or self-signed certificate) copy inside PGDATA, readable by the service user.

        Give it to tools run through `run_tool` (PGSSLROOTCERT) instead of the
        spec's path, which the service user may not be able to read.
        """
        return self.path(conf.ROOT_CERT if self.spec.tls_ca is not None else conf.SERVER_CERT)


def _kill_group(pid: int) -> None:
    """SIGKILL the process group led by `pid` (a tool started in its own session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def stderr_tail(proc: subprocess.CompletedProcess[bytes], lines: int = LOG_TAIL_LINES) -> str:
    """The last lines a finished tool wrote (stderr, else stdout)."""
    text = (proc.stderr or b"").decode(errors="replace").strip()
    if not text:
        text = (proc.stdout or b"").decode(errors="replace").strip()
    return "\n".join(text.splitlines()[-lines:]) or "(no output)"
