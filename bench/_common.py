"""What the HA benchmarks share: log lines, a keep-alive HTTPS JSON client, percentiles and machine
load.  (bench/retrieval.py stays self-contained: it imports nothing from the repository's tests.)"""

from __future__ import annotations

import http.client
import json
import os
import sys
from pathlib import Path
from typing import Any

from tests.support import Server

HOST = "127.0.0.1"


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


class Api:
    """A keep-alive HTTPS JSON client (no redirects followed)."""

    def __init__(self, server: Server, token: str | None = None, timeout: float = 30) -> None:
        self.server, self.token, self.timeout = server, token, timeout
        self.conn = self._connect()

    def _connect(self) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(HOST, self.server.port, context=self.server.ssl_context(),
                                           timeout=self.timeout)

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, bytes, str]:
        """(status, body, Location header)."""
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            self.conn.request(method, f"/api/v1{path}", body=data, headers=headers)
            resp = self.conn.getresponse()
            raw = resp.read()
        except (OSError, http.client.HTTPException):
            self.conn.close()
            self.conn = self._connect()
            raise
        if resp.getheader("connection", "").lower() == "close":
            self.conn.close()
            self.conn = self._connect()
        return resp.status, raw, resp.getheader("location", "")

    def call(self, method: str, path: str, body: dict[str, Any] | None = None, expect: int = 200) -> Any:
        status, raw, _ = self.request(method, path, body)
        if status != expect:
            raise RuntimeError(f"{method} {path}: HTTP {status} (expected {expect}): {raw[:300]!r}")
        return json.loads(raw) if raw else None

    def close(self) -> None:
        self.conn.close()


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list (0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(1, -(-len(sorted_values) * p // 100))
    return sorted_values[int(rank) - 1]


def system_cpu() -> tuple[float, float, float]:
    """(busy, steal, total) jiffies of the whole machine so far."""
    f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle, steal = f[3] + f[4], f[7]
    return sum(f[:8]) - idle - steal, steal, sum(f[:8])


def busy_since(before: tuple[float, float, float]) -> str:
    busy, steal, total = (a - b for a, b in zip(system_cpu(), before, strict=True))
    if total <= 0:
        return "n/a"
    return f"{busy / total * 100:.0f}% busy, {steal / total * 100:.0f}% stolen ({os.cpu_count()} cores)"
