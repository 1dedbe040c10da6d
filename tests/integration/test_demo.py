"""'safehold demo' as a user runs it: the whole topology comes up, answers, and Ctrl-C stops it all."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import ssl
import subprocess
import tempfile
from pathlib import Path

import httpx

from tests.support import SAFEHOLD, wait_until


def _processes_of(base: Path) -> list[int]:
    """Servers and databases whose command line names the demo's directory."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(base) in cmd and ("postgres" in cmd or " serve " in cmd):
            found.append(int(pid))
    return found


def test_demo_starts_the_topology_and_ctrl_c_stops_everything(server_root: Path) -> None:
    base = Path(tempfile.mkdtemp(dir=server_root)) / "demo"
    log = base.with_suffix(".log")
    with open(log, "wb") as out:
        proc = subprocess.Popen([*SAFEHOLD, "demo", "--dir", str(base)], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: "demo is running" in log.read_text() or proc.poll() is not None, timeout=240,
                   interval=1, what="the demo to start")
        text = log.read_text()
        assert proc.poll() is None, text
        urls = dict(re.findall(r"^\s+(primary|secondary|readonly)\s+(https://\S+)$", text, re.M))
        assert set(urls) == {"primary", "secondary", "readonly"}
        assert re.search(r"administrator: admin / \S+", text)
        ctx = ssl.create_default_context(cafile=str(base / "primary" / "tls" / "ca.crt"))
        for url in urls.values():
            wait_until(lambda u=url: httpx.get(f"{u}/api/v1/health", verify=ctx, timeout=3).status_code == 200,
                       timeout=30, what=f"{url} healthy")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(90) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.returncode != 0:  # the demo could not clean up after itself: do it for it
            for pid in _processes_of(base):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not _processes_of(base), timeout=30, what="every demo process to be gone")
