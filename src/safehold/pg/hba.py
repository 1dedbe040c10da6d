"""Edits of pg_hba.conf, one read-modify-write at a time, under a file lock."""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator

from safehold.pg import conf
from safehold.pg.errors import PgError
from safehold.pg.process import Postmaster
from safehold.pg.tools import ToolRunner


class Hba:
    """pg_hba.conf of one cluster: Safehold's base lines (TLS, scram-sha-256, loopback),
    then the lines added for other servers, in order.

    Each read-modify-write holds a file lock beside the data directory; a
    running server is reloaded after every write.
    """

    def __init__(self, tools: ToolRunner, postmaster: Postmaster) -> None:
        self._tools = tools
        self._postmaster = postmaster

    def write(self, extra_lines: list[str]) -> None:
        """Rewrite pg_hba.conf: the TLS loopback lines, then `extra_lines`; reload if running."""
        self._tools.write("pg_hba.conf", conf.render_hba(extra_lines).encode())
        if self._postmaster.alive_pid() is not None:
            self._postmaster.reload()

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """One read-modify-write of pg_hba.conf at a time (a pack and an add-secondary may run together)."""
        lock = self._tools.data_dir.with_name(self._tools.data_dir.name + ".hba.lock")
        with open(lock, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def extra_lines(self) -> list[str]:
        """The lines of pg_hba.conf beyond Safehold's base lines, in order."""
        try:
            text = self._tools.path("pg_hba.conf").read_text()
        except OSError as exc:
            raise PgError(f"cannot read {self._tools.path('pg_hba.conf')}: {exc.strerror}") from None
        return conf.extra_hba_rules(text)

    def add(self, lines: list[str]) -> list[str]:
        """Add `lines` (those not present yet) and reload; returns the ones added."""
        with self._lock():
            current = self.extra_lines()
            added = [line for line in dict.fromkeys(lines) if line not in current]
            if added:
                self.write([*current, *added])
            return added

    def remove(self, lines: list[str]) -> None:
        """Remove exactly `lines`, keeping whatever else was added meanwhile (re-read, not restored)."""
        if lines:
            with self._lock():
                self.write([line for line in self.extra_lines() if line not in set(lines)])

