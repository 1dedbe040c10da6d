"""A real Patroni cluster on a real etcd, for the stories of Safehold on an external HA engine (issue 11).

    with running_cluster(n=2) as cluster:                # etcd + 2 Patroni members + a Safehold database
        psycopg.connect(cluster.url())                   # libpq multi-host URL, target_session_attrs=read-write
        old = cluster.kill_leader()                      # kill -9 the leader's Patroni and its postmaster
        new = cluster.wait_leader(exclude={old})         # Patroni fails over (after its ttl: 20 s at least)
        cluster.start_member(old)                        # the old leader comes back ...
        cluster.wait_replicas_streaming()                # ... and streams from the new one

or, in a test module, a module-scoped fixture: ``patroni_cluster = cluster_fixture(n=2)`` (or ``n=3``,
``synchronous_mode=True``; a fixture of the module's own, so no import shadows the test's argument).

- **etcd** is Debian's ``/usr/bin/etcd`` (``scripts/test`` installs ``etcd-server`` when run as root),
  one member; **Patroni** is the ``patroni`` script of this venv (the test extra pins it), its DCS
  ``etcd3``; **PostgreSQL** is the bundled one (:func:`safehold.pg.binaries.find_binaries`), Patroni's
  ``bin_dir``.  Without etcd or Patroni the tests are skipped, unless the environment variable CI is set:
  CI must run them, so they fail there.
- Everything listens on 127.0.0.1 on free ports: etcd's client and peer ports, and each member's REST
  and PostgreSQL ports.  Passwords are random per cluster; ``pg_hba`` asks for SCRAM from 127.0.0.1
  (replication and every database), and for local socket connections too.
- As root, PostgreSQL refuses to start: every Patroni process then runs as Safehold's service user
  (:func:`safehold.pg.runas.resolve_service_user`), which is given the search bit on the way to the
  binaries and the venv, as Safehold does for itself.  The temporary directories are our own under /tmp
  (pytest's are 0700 under a root-only parent), each member's owned by that user, and removed on exit.
- Every process starts in a process group of its own (PostgreSQL: Patroni puts the postmaster in a
  session of its own), and on exit every one is killed and waited for, even when the test failed:
  Patroni by its group, PostgreSQL by an immediate shutdown (SIGQUIT, so that it frees its shared
  memory) and then its group, and a last sweep for any process whose command line names our temporary
  directory or whose title is one of our cluster's PostgreSQL processes.
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self
from urllib.parse import quote, urlencode

import httpx
import pytest
import yaml

from safehold.pg.binaries import find_binaries
from safehold.pg.runas import (
    ServiceUser,
    check_tree_usable,
    ensure_traversable,
    resolve_service_user,
)
from tests.support import free_port, wait_until

ETCD = Path("/usr/bin/etcd")
PATRONI = Path(sys.executable).parent / "patroni"
HOST = "127.0.0.1"
# Patroni refuses a ttl below 20 s and wants loop_wait + 2 * retry_timeout <= ttl.  A killed leader's
# key lives out its ttl, so a failover takes 20 s and a bit; loop_wait 1 lets the replicas notice at
# once; retry_timeout 5 (not the minimum 3) keeps a busy 2-core machine from demoting a healthy leader.
TTL, LOOP_WAIT, RETRY_TIMEOUT = 20, 1, 5
SUPERUSER, REPLICATION_USER, REWIND_USER = "postgres", "replicator", "rewinder"
APP_USER = APP_DATABASE = "safehold"
REPLICA_ROLES = frozenset({"replica", "sync_standby", "quorum_standby"})
URL_FORMS = ("hosts", "query", "sqlalchemy")


def require_patroni() -> None:
    """Skip the calling test when etcd or Patroni is missing here; fail it instead when CI is set."""
    missing = [str(p) for p in (ETCD, PATRONI) if not os.access(p, os.X_OK)]
    if not missing:
        return
    reason = (f"{' and '.join(missing)} missing: install Debian's etcd-server (scripts/test does it when run "
              "as root) and the test extra (scripts/setup test brings Patroni)")
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the Patroni tests, but {reason}", pytrace=False)
    pytest.skip(reason)


# --- processes -------------------------------------------------------------------------------------


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, process group) of a live process; None when it is gone (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else (fields[0], int(fields[2]))


def _pids() -> Iterator[int]:
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            yield int(entry)


def _in_group(pgid: int) -> list[int]:
    return [pid for pid in _pids() if (st := _stat(pid)) is not None and st[1] == pgid]


def _naming(markers: Collection[str]) -> list[int]:
    """Live processes whose command line (or PostgreSQL's process title) holds one of `markers`."""
    found = []
    for pid in _pids():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(m in cmdline for m in markers) and _stat(pid) is not None:
            found.append(pid)
    return found


def _kill_all(find: Callable[[], list[int]], what: str, *, grace: float = 0, timeout: float = 15) -> None:
    """Give what `find` finds `grace` seconds to go by itself, then SIGKILL it until nothing is left
    (AssertionError if something survives)."""
    deadline = time.monotonic() + grace
    while find() and time.monotonic() < deadline:
        time.sleep(0.05)
    deadline = time.monotonic() + timeout
    while left := find():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: processes {left} survive SIGKILL")
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


def _stop_popen(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGKILL a process we started in its own group, the whole group, and reap it."""
    if proc is None:
        return
    if proc.pid != os.getpgrp():  # started with start_new_session: its pid is its group's id
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    _kill_all(lambda: _in_group(proc.pid), f"process group {proc.pid}")


def _temp_root(prefix: str) -> Path:
    """A fresh directory of ours under /tmp (0700): not pytest's tmp_path, whose root-only parents the
    service user cannot cross, and which another pytest session may reset under us."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _http() -> httpx.Client:
    return httpx.Client(timeout=2.0, trust_env=False)  # trust_env=False: never through a proxy


# --- etcd ------------------------------------------------------------------------------------------


class _StartedOnEntry:
    """A context manager that starts on entry and closes on exit, or at once when starting fails."""

    def start(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Etcd(_StartedOnEntry):
    """One etcd member (Debian's /usr/bin/etcd) on free loopback ports, its data in a temporary directory."""

    def __init__(self) -> None:
        self.base = _temp_root("safehold-etcd-")
        self.client_port = free_port()
        self.peer_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.client_port}"

    @property
    def log_path(self) -> Path:
        return self.base / "etcd.log"

    def start(self, timeout: float = 30) -> None:
        peer = f"http://{HOST}:{self.peer_port}"
        argv = [str(ETCD), "--name", "etcd0", "--data-dir", str(self.base / "data"),
                "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"etcd0={peer}", "--initial-cluster-state", "new",
                "--initial-cluster-token", self.base.name, "--logger", "zap", "--log-outputs", "stderr"]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=self.base, env={"PATH": "/usr/bin:/bin", "HOME": str(self.base)},
                                         start_new_session=True)
        wait_until(self._healthy, timeout=timeout, interval=0.1, what=f"etcd on {self.url} to be healthy")

    def _healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"etcd exited with {self.proc.returncode}:\n{_tail(self.log_path)}")
        with _http() as c:
            r = c.get(f"{self.url}/health")
        return r.status_code == 200 and r.json().get("health") == "true"

    def close(self) -> None:
        try:
            _stop_popen(self.proc)
            self.proc = None
            _kill_all(lambda: _naming([str(self.base)]), "etcd")
        finally:
            shutil.rmtree(self.base, ignore_errors=True)


# --- Patroni ---------------------------------------------------------------------------------------


@dataclass
class Member:
    """One Patroni member: its REST and PostgreSQL ports, its directory (config, log, PGDATA)."""

    name: str
    dir: Path
    rest_port: int = field(default_factory=free_port)
    pg_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    @property
    def config_path(self) -> Path:
        return self.dir / "patroni.yml"

    @property
    def log_path(self) -> Path:
        return self.dir / "patroni.log"

    @property
    def rest_url(self) -> str:
        return f"http://{HOST}:{self.rest_port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def postmaster_pid(self) -> int | None:
        """The live postmaster of this member's data directory (postmaster.pid, first line), if any."""
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if _stat(pid) is not None else None

    def log(self, lines: int = 40) -> str:
        return _tail(self.log_path, lines)


class PatroniCluster(_StartedOnEntry):
    """``n`` Patroni members on one :class:`Etcd`, the bundled PostgreSQL, a Safehold role and database.

    Members are named m0, m1, ...; any may become the leader.  :meth:`start` returns once a leader
    accepts writes, the role ``safehold`` (random password) owns the database ``safehold`` and every
    other member streams from the leader (in synchronous mode: one of them is the synchronous standby).
    """

    def __init__(self, etcd: Etcd, n: int = 2, *, synchronous_mode: bool = False) -> None:
        if n < 1:
            raise ValueError("a cluster needs at least one member")
        self.etcd = etcd
        self.synchronous_mode = synchronous_mode
        self.scope = f"safehold-{secrets.token_hex(4)}"
        self.base = _temp_root("safehold-patroni-")
        self.service_user: ServiceUser | None = resolve_service_user("auto")
        self.bin_dir = find_binaries().bin_dir
        self.superuser_password = secrets.token_urlsafe(24)
        self.app_user, self.app_password, self.dbname = APP_USER, secrets.token_urlsafe(24), APP_DATABASE
        self._replication_password = secrets.token_urlsafe(24)
        self._rewind_password = secrets.token_urlsafe(24)
        self._members = {f"m{i}": Member(f"m{i}", self.base / f"m{i}") for i in range(n)}
        self.started_in: float | None = None  # seconds from the first Patroni started to start() done

    # -- the members ------------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return list(self._members)

    def member(self, name: str) -> Member:
        return self._members[name]

    @property
    def rest_urls(self) -> list[str]:
        """Every member's Patroni REST address (what ``ha.patroni_url`` takes)."""
        return [m.rest_url for m in self._members.values()]

    @property
    def ports(self) -> list[int]:
        """Every member's PostgreSQL port, in member order (m0, m1, ...)."""
        return [m.pg_port for m in self._members.values()]

    # -- starting and stopping --------------------------------------------------------------------

    def start(self, timeout: float = 180) -> None:
        began = time.monotonic()
        self._prepare_access()
        for name in self._members:
            self.start_member(name)
        leader = self.wait_leader(timeout=timeout)
        self._create_app_database(leader)
        self.wait_replicas_streaming(timeout=timeout)
        self.started_in = time.monotonic() - began

    def start_member(self, name: str) -> None:
        """Start (or, after :meth:`kill_member`, restart) one member's Patroni on its own configuration:
        it starts PostgreSQL itself, as a replica of the leader if there is one (pg_rewind if need be)."""
        m = self._members[name]
        if m.running:
            raise AssertionError(f"Patroni {name} is already running")
        self._write_config(m)
        user = self.service_user
        with open(m.log_path, "ab") as log:
            m.proc = subprocess.Popen([str(PATRONI), str(m.config_path)], stdout=log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, cwd=m.dir, env=self._env(m),
                                      start_new_session=True, **(user.popen_kwargs() if user else {}))

    def kill_member(self, name: str) -> None:
        """kill -9 one member: its Patroni (the whole process group) and its postmaster, then wait until
        every PostgreSQL process of it has died (the backends follow their postmaster by themselves)."""
        m = self._members[name]
        postmaster = m.postmaster_pid()
        pgid = st[1] if postmaster is not None and (st := _stat(postmaster)) is not None else None
        _stop_popen(m.proc)  # first, so that Patroni cannot restart PostgreSQL
        if postmaster is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(postmaster, signal.SIGKILL)
        if pgid is not None:
            _kill_all(lambda: _in_group(pgid), f"PostgreSQL of {name}", grace=30)

    def kill_leader(self) -> str:
        """kill -9 the leader (Patroni and postmaster); returns its name."""
        name = self.wait_leader()
        self.kill_member(name)
        return name

    def close(self) -> None:
        """Kill every process of the cluster and wait for them; remove the temporary directory."""
        try:
            groups = []
            for m in self._members.values():
                postmaster = m.postmaster_pid()
                with contextlib.suppress(Exception):
                    _stop_popen(m.proc)
                m.proc = None
                if postmaster is not None and (st := _stat(postmaster)) is not None:
                    groups.append(st[1])
                    with contextlib.suppress(ProcessLookupError):
                        # immediate shutdown: no checkpoint, but PostgreSQL frees its shared memory
                        os.kill(postmaster, signal.SIGQUIT)
            for pgid in groups:
                _kill_all(functools.partial(_in_group, pgid), f"PostgreSQL of {self.scope}", grace=15)
            _kill_all(lambda: _naming([str(self.base), f"postgres: {self.scope}: "]), f"Patroni cluster {self.scope}")
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    # -- Patroni's view ---------------------------------------------------------------------------

    def members(self) -> list[dict[str, Any]]:
        """The members as Patroni's REST ``GET /cluster`` shows them (from the first running member that
        answers): name, role (leader, replica, sync_standby), state (running, streaming), lag, timeline..."""
        problems = []
        with _http() as c:
            for m in self._members.values():
                if not m.running:
                    continue
                try:
                    r = c.get(f"{m.rest_url}/cluster")
                    if r.status_code == 200:
                        return list(r.json().get("members", []))
                    problems.append(f"{m.name}: HTTP {r.status_code}")
                except httpx.HTTPError as exc:
                    problems.append(f"{m.name}: {exc}")
        raise AssertionError(f"no Patroni member answers GET /cluster ({'; '.join(problems) or 'none running'})")

    def leader(self) -> str | None:
        """The name of the member Patroni calls the leader (it may be dead, until its key expires)."""
        return next((m["name"] for m in self.members() if m.get("role") == "leader"), None)

    def wait_leader(self, *, exclude: Collection[str] = (), timeout: float = 120) -> str:
        """Poll until a member outside `exclude` leads and its PostgreSQL is a primary (Patroni's
        ``GET /primary`` says 200); returns its name."""
        def primary() -> str | None:
            name = self.leader()
            if name is None or name in exclude or not self._members[name].running:
                return None
            with _http() as c:
                return name if c.get(f"{self._members[name].rest_url}/primary").status_code == 200 else None

        return str(self._wait(primary, timeout, f"a Patroni leader (not {sorted(exclude)})"))

    def wait_replicas_streaming(self, names: Collection[str] | None = None, *, timeout: float = 120) -> None:
        """Poll until every running member but the leader (or just `names`) streams from the leader; in
        synchronous mode, until one of them is also the synchronous standby."""
        def streaming() -> bool:
            members = self.members()
            leader = next((m["name"] for m in members if m.get("role") == "leader"), None)
            wanted = set(names) if names is not None else {
                n for n, m in self._members.items() if m.running and n != leader}
            ok = {m["name"] for m in members if m.get("role") in REPLICA_ROLES and m.get("state") == "streaming"}
            sync = not self.synchronous_mode or any(m.get("role") == "sync_standby" for m in members)
            return leader is not None and wanted <= ok and sync

        self._wait(streaming, timeout, "the replicas to stream from the leader")

    def _wait(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        try:
            return wait_until(predicate, timeout=timeout, interval=0.2, what=what)
        except AssertionError as exc:
            logs = "\n".join(f"--- {m.name} ({'running' if m.running else 'stopped'}) ---\n{m.log()}"
                             for m in self._members.values())
            raise AssertionError(f"{exc}\n{logs}\n--- etcd ---\n{_tail(self.etcd.log_path)}") from None

    # -- URLs -------------------------------------------------------------------------------------

    def url(self, target_session_attrs: str | None = "read-write", *, user: str | None = None,
            password: str | None = None, dbname: str | None = None, form: str = "hosts", **params: str) -> str:
        """A multi-host URL naming every member (as the app login and database unless told otherwise).

        form "hosts":      postgresql://u:p@127.0.0.1:p1,127.0.0.1:p2/safehold?target_session_attrs=...
        form "query":      postgresql://u:p@/safehold?host=127.0.0.1,127.0.0.1&port=p1,p2&... (libpq's)
        form "sqlalchemy": postgresql://u:p@/safehold?host=127.0.0.1:p1&host=127.0.0.1:p2&... (only
                           Safehold's URL reader takes it: libpq keeps the last host= it sees)
        """
        if form not in URL_FORMS:
            raise ValueError(f"form must be one of {URL_FORMS}")
        user = user or self.app_user
        if password is None and user == self.app_user:
            password = self.app_password
        cred = quote(user, safe="") + (f":{quote(password, safe='')}" if password is not None else "")
        query: list[tuple[str, str]] = []
        if form == "query":
            query += [("host", ",".join(HOST for _ in self.ports)), ("port", ",".join(map(str, self.ports)))]
        elif form == "sqlalchemy":
            query += [("host", f"{HOST}:{p}") for p in self.ports]
        if target_session_attrs is not None:
            query.append(("target_session_attrs", target_session_attrs))
        query += list(params.items())
        netloc = ",".join(f"{HOST}:{p}" for p in self.ports) if form == "hosts" else ""
        qs = urlencode(query, safe=",:")
        return f"postgresql://{cred}@{netloc}/{quote(dbname or self.dbname)}" + (f"?{qs}" if qs else "")

    def superuser_url(self, member: str | None = None, dbname: str = "postgres") -> str:
        """The superuser's URL for one member (by default the leader)."""
        m = self._members[member or self.wait_leader()]
        return f"postgresql://{SUPERUSER}:{quote(self.superuser_password, safe='')}@{HOST}:{m.pg_port}/{dbname}"

    # -- setting up -------------------------------------------------------------------------------

    def _prepare_access(self) -> None:
        """Member directories owned by the service user; the search bit on the way to them, to the
        PostgreSQL binaries and to this venv's patroni script and Python (Safehold's own ensure_access)."""
        user = self.service_user
        for m in self._members.values():
            m.dir.mkdir(mode=0o700)
            if user is not None:
                os.chown(m.dir, user.uid, user.gid)
        if user is None:
            return
        ensure_traversable(self.base, user)
        for path in (self.bin_dir, PATRONI.parent, Path(os.path.realpath(sys.executable)).parent):
            ensure_traversable(path, user)
        install = self.bin_dir.parent
        roots = [self.bin_dir]
        if (install / "share" / "postgres.bki").exists():
            roots += [p for p in (install / "lib", install / "share") if p.is_dir()]
        for root in roots:
            check_tree_usable(root, user)

    def _env(self, m: Member) -> dict[str, str]:
        """A clean environment: no PG*, PATRONI_* or proxy variables of ours reach Patroni."""
        env = {"PATH": f"{self.bin_dir}{os.pathsep}/usr/bin:/bin", "HOME": str(m.dir), "LC_ALL": "C",
               "LANG": "C", "PYTHONUNBUFFERED": "1"}
        icu = self.bin_dir.parent / "share" / "icu"
        if icu.is_dir():  # musl builds read ICU data from a file
            env["ICU_DATA"] = str(icu)
        return env

    def _write_config(self, m: Member) -> None:
        def address(port: int) -> str:
            return f"{HOST}:{port}"

        scram = "scram-sha-256"
        config = {
            "scope": self.scope,
            "name": m.name,
            "log": {"level": "INFO"},
            "restapi": {"listen": address(m.rest_port), "connect_address": address(m.rest_port)},
            "etcd3": {"hosts": [address(self.etcd.client_port)], "protocol": "http"},
            "bootstrap": {
                "dcs": {
                    "ttl": TTL, "loop_wait": LOOP_WAIT, "retry_timeout": RETRY_TIMEOUT,
                    "synchronous_mode": self.synchronous_mode, "synchronous_mode_strict": False,
                    "postgresql": {
                        "use_pg_rewind": True,
                        "use_slots": True,
                        "parameters": {"wal_log_hints": "on", "password_encryption": scram,
                                       "max_connections": 100, "shared_buffers": "32MB"},
                    },
                },
                "initdb": [{"encoding": "UTF8"}, {"locale": "C"}, "data-checksums",
                           {"auth-host": scram}, {"auth-local": scram}],
            },
            "postgresql": {
                "listen": address(m.pg_port),
                "connect_address": address(m.pg_port),
                "data_dir": str(m.data_dir),
                "bin_dir": str(self.bin_dir),
                "pgpass": str(m.dir / "pgpass"),
                "authentication": {
                    "superuser": {"username": SUPERUSER, "password": self.superuser_password},
                    "replication": {"username": REPLICATION_USER, "password": self._replication_password},
                    "rewind": {"username": REWIND_USER, "password": self._rewind_password},
                },
                "pg_hba": [
                    f"local all all {scram}",
                    f"host replication {REPLICATION_USER} {HOST}/32 {scram}",
                    f"host all all {HOST}/32 {scram}",
                ],
                "parameters": {"unix_socket_directories": str(m.dir)},
                # a replica's pg_basebackup asks for an immediate checkpoint, not a spread one (that took
                # 90 s when it followed CREATE DATABASE)
                "basebackup": [{"checkpoint": "fast"}],
                # a killed leader comes back as a replica whatever happened to its timeline
                "remove_data_directory_on_rewind_failure": True,
                "remove_data_directory_on_diverged_timelines": True,
            },
        }
        m.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        os.chmod(m.config_path, 0o600)  # passwords
        if self.service_user is not None:
            os.chown(m.config_path, self.service_user.uid, self.service_user.gid)

    def _create_app_database(self, leader: str) -> None:
        """The login role and database a Safehold cluster uses (``safehold init --database-url``)."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.superuser_url(leader), autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(self.app_user), sql.Literal(self.app_password)))
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(self.dbname), sql.Identifier(self.app_user)))


@contextlib.contextmanager
def running_cluster(n: int = 2, *, synchronous_mode: bool = False) -> Iterator[PatroniCluster]:
    """An etcd and a Patroni cluster on it, both gone (every process, every file) on exit."""
    with Etcd() as etcd, PatroniCluster(etcd, n, synchronous_mode=synchronous_mode) as cluster:
        yield cluster


def cluster_fixture(*, n: int = 2, synchronous_mode: bool = False, name: str = "patroni_cluster") -> Any:
    """A module-scoped pytest fixture `name` giving a running cluster (skipped without etcd or Patroni,
    failed instead when CI is set).  In a test module: ``patroni_cluster = cluster_fixture(n=3)``."""

    @pytest.fixture(scope="module", name=name)
    def _cluster() -> Iterator[PatroniCluster]:
        require_patroni()
        with running_cluster(n, synchronous_mode=synchronous_mode) as cluster:
            yield cluster

    return _cluster

