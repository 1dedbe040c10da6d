"""The operator's event script: run on every event as ``script EVENT ARGS...``.

It runs as the service user: when Safehold runs as root, the unprivileged system user that runs
PostgreSQL (see :mod:`safehold.pg.runas`); otherwise the current user.  To rule out a root-owned
surprise, the script must be a regular file (not a symbolic link), executable, owned by that user
and writable by nobody else, in directories only root or that user can change.  This is checked at
validation/test time and again before each run.

The script gets a small environment of its own (never Safehold's): PATH, LANG, HOME and
``SAFEHOLD_EVENT``, ``SAFEHOLD_EVENT_MESSAGE``, ``SAFEHOLD_EVENT_SUBJECT``, ``SAFEHOLD_EVENT_TIME``,
``SAFEHOLD_EVENT_ID``, ``SAFEHOLD_SERVER``, ``SAFEHOLD_SERVER_ID``, ``SAFEHOLD_CLUSTER_ID``.  It is
killed (with everything it started in its session) after ``timeout`` seconds.
"""

from __future__ import annotations

import errno
import logging
import os
import pwd
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from safehold.alerts.base import AlertError
from safehold.alerts.events import AlertEvent
from safehold.alerts.settings import ScriptSection
from safehold.errors import SafeholdError
from safehold.pg.runas import ServiceUser, resolve_service_user

log = logging.getLogger(__name__)
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class RunAs:
    """Who the script runs as; ``drop`` holds the subprocess arguments that switch to that user
    (None: the current user, nothing to switch)."""

    uid: int
    name: str
    drop: ServiceUser | None = None


def run_as() -> RunAs:
    """The service user when running as root, else the current user."""
    try:
        user = resolve_service_user("auto")
    except SafeholdError as exc:
        raise AlertError(f"event script: no user to run it as: {exc.message}", hint=exc.hint,
                         transient=False) from None
    if user is not None:
        return RunAs(user.uid, user.name, user)
    uid = os.geteuid()
    return RunAs(uid, _user_name(uid))


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def check_script(path: Path, owner: RunAs) -> None:
    """Refuse (AlertError, not retried) a script that is not a regular executable file owned by
    ``owner`` and writable by nobody else, or that sits in a directory others can change."""
    hint_owner = f"chown {owner.name} {path} && chmod 0755 {path}"
    if not path.is_absolute():
        raise AlertError(f"event script {path}: the path must be absolute", transient=False)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise AlertError(f"event script {path} does not exist", transient=False) from None
    except OSError as exc:
        raise AlertError(f"event script {path} cannot be examined: {exc.strerror}", transient=False) from None
    if stat.S_ISLNK(st.st_mode):
        raise AlertError(f"event script {path} is a symbolic link; refused",
                         hint="configure the path of the file itself", transient=False)
    if not stat.S_ISREG(st.st_mode):
        raise AlertError(f"event script {path} is not a regular file; refused", transient=False)
    if st.st_uid != owner.uid:
        raise AlertError(f"event script {path} is owned by {_user_name(st.st_uid)}, not by {owner.name} "
                         f"(the user it runs as); refused", hint=hint_owner, transient=False)
    mode = stat.S_IMODE(st.st_mode)
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise AlertError(f"event script {path} is writable by group or others (mode {mode:04o}); refused",
                         hint=f"chmod go-w {path}", transient=False)
    if not mode & stat.S_IXUSR:
        raise AlertError(f"event script {path} is not executable (mode {mode:04o}); refused",
                         hint=f"chmod u+x {path}", transient=False)
    for d in dict.fromkeys([*path.parents, *path.resolve().parents]):
        dst = d.stat()
        changeable = dst.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not dst.st_mode & stat.S_ISVTX
        if dst.st_uid not in (0, owner.uid) or changeable:
            raise AlertError(f"event script {path}: its directory {d} can be changed by another user "
                             f"({_user_name(dst.st_uid)}, mode {stat.S_IMODE(dst.st_mode):04o}), who could "
                             f"replace the script; refused",
                             hint="keep the script in a directory owned by root or the service user, "
                                  "not writable by group or others", transient=False)


def script_env(event: AlertEvent, owner: RunAs) -> dict[str, str]:
    home = "/"
    try:
        home = pwd.getpwuid(owner.uid).pw_dir or "/"
    except KeyError:
        pass
    return {"PATH": SAFE_PATH, "LANG": "C.UTF-8", "HOME": home, "USER": owner.name, "LOGNAME": owner.name,
            "SAFEHOLD_EVENT": event.kind, "SAFEHOLD_EVENT_MESSAGE": event.message,
            "SAFEHOLD_EVENT_SUBJECT": event.subject, "SAFEHOLD_EVENT_TIME": event.at_text(),
            "SAFEHOLD_EVENT_ID": "" if event.id is None else str(event.id),
            "SAFEHOLD_SERVER": event.server_name, "SAFEHOLD_SERVER_ID": event.server_id,
            "SAFEHOLD_CLUSTER_ID": event.cluster_id}


@dataclass(frozen=True)
class ScriptResult:
    exit_code: int
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool


class _Drain(threading.Thread):
    """Reads a pipe to its end, keeping the first ``limit`` bytes (the rest is discarded, so a
    chatty script cannot fill the memory)."""

    def __init__(self, pipe: IO[bytes], limit: int) -> None:
        super().__init__(daemon=True)
        self.pipe, self.limit = pipe, limit
        self.kept = bytearray()
        self.cut = False

    def run(self) -> None:
        try:
            while chunk := os.read(self.pipe.fileno(), 65536):
                room = self.limit - len(self.kept)
                if room > 0:
                    self.kept += chunk[:room]
                if len(chunk) > room:
                    self.cut = True
        except (OSError, ValueError):
            pass

    def text(self) -> str:
        out = self.kept.decode(errors="replace")
        return out + (" …(truncated)" if self.cut else "")


def run_script(path: Path, args: list[str], *, timeout: float, output_limit: int, owner: RunAs,
               env: dict[str, str]) -> ScriptResult:
    """Run ``path args...`` as ``owner`` (in a session of its own, killed with everything it started
    after ``timeout`` seconds); its output is kept up to ``output_limit`` bytes per stream."""
    kwargs: dict[str, Any] = owner.drop.popen_kwargs() if owner.drop is not None else {}
    start = time.monotonic()
    try:
        proc = subprocess.Popen([str(path), *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, cwd="/", env=env, close_fds=True,
                                start_new_session=True, **kwargs)
    except PermissionError:
        raise AlertError(f"event script {path} cannot be run as {owner.name}: permission denied",
                         hint=f"{owner.name} needs search permission (x) on every directory above it",
                         transient=False) from None
    except OSError as exc:
        reason = "not a program (a script needs a #! line)" if exc.errno == errno.ENOEXEC else exc.strerror
        raise AlertError(f"event script {path} cannot be run: {reason}", transient=False) from None
    assert proc.stdout is not None and proc.stderr is not None
    drains = [_Drain(proc.stdout, output_limit), _Drain(proc.stderr, output_limit)]
    for d in drains:
        d.start()
    timed_out = False
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    for d in drains:
        d.join(timeout=5)  # a process that left the session may keep a pipe open: do not wait for it
    for pipe in (proc.stdout, proc.stderr):
        pipe.close()
    return ScriptResult(proc.returncode, drains[0].text(), drains[1].text(), time.monotonic() - start,
                        timed_out)


class ScriptChannel:
    name = "script"

    def __init__(self, section: ScriptSection, resolve: Callable[[Path], Path] = lambda p: p) -> None:
        self.section = section
        self.path = resolve(section.path).absolute()

    def target(self) -> str:
        return f"{self.path} (timeout {self.section.timeout:g} s)"

    def check(self) -> None:
        check_script(self.path, run_as())

    def send(self, event: AlertEvent) -> str:
        owner = run_as()
        check_script(self.path, owner)
        args = event.script_args()
        r = run_script(self.path, args, timeout=self.section.timeout, output_limit=self.section.output_limit,
                       owner=owner, env=script_env(event, owner))
        outcome = "killed after the time limit" if r.timed_out else f"exit code {r.exit_code}"
        level = logging.INFO if r.exit_code == 0 and not r.timed_out else logging.WARNING
        log.log(level, "event script %s %s as %s: %s in %.2f s; stdout: %r; stderr: %r", self.path,
                " ".join(args), owner.name, outcome, r.seconds, r.stdout, r.stderr)
        if r.timed_out:
            raise AlertError(f"event script {self.path} ran longer than {self.section.timeout:g} s and was "
                             f"killed", transient=False)
        if r.exit_code != 0:
            tail = " ".join(r.stderr.split())[-200:]
            raise AlertError(f"event script {self.path} failed ({outcome})" + (f": {tail}" if tail else ""),
                             transient=False)
        return f"event script {self.path} ran as {owner.name} ({outcome}, {r.seconds:.2f} s)"
