"""PostgreSQL client tools (pg_dump) run as the current user against any server, local or remote."""

from __future__ import annotations

import os
import subprocess

from safehold.pg.binaries import Binaries
from safehold.pg.errors import PgError


def run_client(binaries: Binaries, name: str, args: list[str], *, env: dict[str, str],
               timeout: float | None = 3600, input: bytes | None = None) -> bytes:  # noqa: A002 - subprocess's name
    """Run a client tool; ``env`` carries the connection (PGHOST, PGPASSWORD…): never a command line.
    Raises PgError with the tool's last error lines (which never contain the password)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    try:
        proc = subprocess.run([str(binaries.tool(name)), *args], env={**clean, **env, "LC_ALL": "C"},
                              input=input, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise PgError(f"{name} did not finish within {timeout:.0f} s") from None
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.decode(errors="replace").strip().splitlines()[-5:])
        raise PgError(f"{name} failed (exit {proc.returncode}): {tail}")
    return proc.stdout
