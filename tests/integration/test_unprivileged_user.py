"""Safehold started by a normal (non-root) user.  Every other integration test runs as whoever runs
pytest (root in CI, where PostgreSQL then runs as the 'safehold' service user); this one, when
pytest runs as root, starts init and serve as the unprivileged 'nobody' instead."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import ssl
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import httpx
import pytest

import safehold
from safehold.pg import ServiceUser, ensure_traversable
from tests.support import free_port, wait_until

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to an unprivileged user; "
                                "run as a normal user, the whole suite already is this test")


def _as(user: ServiceUser, *args: str) -> list[str]:
    return ["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--clear-groups", *args]


def test_init_and_serve_as_a_normal_user() -> None:
    pw = pwd.getpwnam("nobody")
    nobody = ServiceUser("nobody", pw.pw_uid, pw.pw_gid)
    # the interpreter, the installed packages and the source tree must be reachable by that user
    for path in (Path(sys.executable).resolve(), Path(sysconfig.get_paths()["purelib"]),
                 Path(safehold.__file__).resolve().parent, Path(sys.prefix)):
        ensure_traversable(path, nobody)
    base = Path(tempfile.mkdtemp(prefix="safehold-nobody-"))
    os.chown(base, nobody.uid, nobody.gid)
    data, port = base / "data", free_port()
    env = {**os.environ, "HOME": str(base), "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [sys.executable, "-m", "safehold"]
    init = subprocess.run(_as(nobody, *cmd, "init", "--data-dir", str(data), "--port", str(port),
                              "--db-port", str(free_port())),
                          capture_output=True, text=True, env=env, timeout=180)
    assert init.returncode == 0, init.stdout + init.stderr
    assert "password (shown once)" in init.stdout
    assert (data / "safehold.key").stat().st_uid == nobody.uid

    serve = subprocess.Popen(_as(nobody, *cmd, "serve", "--data-dir", str(data)), env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        ctx = ssl.create_default_context(cafile=str(data / "tls" / "ca.crt"))

        def healthy() -> bool:
            assert serve.poll() is None, serve.stdout.read().decode() if serve.stdout else ""
            return httpx.get(f"https://127.0.0.1:{port}/api/v1/health", verify=ctx, timeout=2).status_code == 200

        wait_until(healthy, timeout=60, what="the server started by nobody")
        pid = int((data / "pg" / "postmaster.pid").read_text().split()[0])
        assert os.stat(f"/proc/{pid}").st_uid == nobody.uid, "PostgreSQL runs as the user who started Safehold"
    finally:
        serve.send_signal(signal.SIGTERM)
        try:
            serve.wait(30)
        except subprocess.TimeoutExpired:
            serve.kill()
        pid_file = data / "pg" / "postmaster.pid"
        stopped_cleanly = not pid_file.exists()
        if not stopped_cleanly:
            os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)
        shutil.rmtree(base, ignore_errors=True)
    assert serve.returncode == 0
    assert stopped_cleanly, "serve must stop the database it started"
