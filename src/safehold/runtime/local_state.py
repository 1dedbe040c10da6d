"""What a read-only (or fenced) server keeps outside its database because that database cannot be written:
the sessions made on it, failed-login counters and lock-outs, and the TOTP steps already used.

Every worker process of the server sees the same state: it lives in a small SQLite file in the server's
``run`` directory (emptied when the server starts, so it lasts as long as the server runs).  A session made
on one worker is known to the others, a sign-out ends it on all of them, failed logins count across them and
a TOTP code is accepted once (the step is claimed in one statement, not read and then written).  SQLite
serialises the writers of the file; a statement waits at most :data:`BUSY_TIMEOUT` seconds for another.
Without a path the state lives in this process's memory (a SQLite database of its own)."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

from safehold.domain import Principal, UserRole
from safehold.errors import Unavailable

log = logging.getLogger(__name__)

FILE = "run/local.sqlite3"
BUSY_TIMEOUT = 5.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    key BLOB PRIMARY KEY, principal TEXT NOT NULL, token_id TEXT NOT NULL, expires REAL NOT NULL);
CREATE INDEX IF NOT EXISTS sessions_token ON sessions (token_id);
CREATE TABLE IF NOT EXISTS users (
    id TEXT PRIMARY KEY, failures INTEGER, locked_until REAL, totp_step INTEGER NOT NULL DEFAULT 0);
"""


def _ts(t: dt.datetime) -> float:
    return t.timestamp()


def _principal_json(p: Principal) -> str:
    return json.dumps({**asdict(p), "role": p.role.value})


def _principal(text: str) -> Principal:
    d = json.loads(text)
    return Principal(**{**d, "role": UserRole(d["role"])})


def reset(data_dir: Path) -> None:
    """A server starting: nothing of an earlier run counts (its sessions ended when it stopped)."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            (data_dir / (FILE + suffix)).unlink()


class LocalState:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = 0

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        """One transaction; a file that cannot be written (a full disk) refuses the sign-in or request."""
        with self._lock:
            try:
                if self._pid != os.getpid() or self._conn is None:  # a connection is never used across fork()
                    self._pid, self._conn = os.getpid(), self._connect()
                with self._conn:
                    yield self._conn
            except (sqlite3.Error, OSError) as exc:
                reason = str(exc) if isinstance(exc, sqlite3.Error) else (exc.strerror or "I/O error")
                log.error("the sign-in state in %s cannot be used (%s)", self.path, reason)
                raise Unavailable(f"this server cannot keep its sign-in state right now ({reason})",
                                  hint="an administrator must free space on (or repair) the disk of the server's "
                                       "data directory") from None

    def _connect(self) -> sqlite3.Connection:
        target = ":memory:"
        if self.path is not None:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)  # never readable by others
            os.close(fd)
            target = str(self.path)
        conn = sqlite3.connect(target, timeout=BUSY_TIMEOUT, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=OFF")  # it ends with the server anyway
        conn.executescript(_SCHEMA)
        conn.isolation_level = "IMMEDIATE"  # each transaction takes the write lock at once: no upgrade deadlock
        return conn

    # --- sessions ----------------------------------------------------------------------------------

    def add_session(self, key: bytes, principal: Principal, expires_at: dt.datetime) -> None:
        with self._db() as db:
            db.execute("INSERT OR REPLACE INTO sessions VALUES (?, ?, ?, ?)",
                       (key, _principal_json(principal), principal.token_id, _ts(expires_at)))

    def session(self, key: bytes, now: dt.datetime, idle: dt.timedelta) -> Principal | None:
        """The session's principal, its idle time restarted; None if there is none or it expired."""
        with self._db() as db:
            row = db.execute("SELECT principal, expires FROM sessions WHERE key = ?", (key,)).fetchone()
            if row is None:
                return None
            if row[1] <= _ts(now):
                db.execute("DELETE FROM sessions WHERE key = ?", (key,))
                return None
            db.execute("UPDATE sessions SET expires = ? WHERE key = ?", (_ts(now + idle), key))
            return _principal(row[0])

    def end_sessions(self, token_id: str) -> None:
        with self._db() as db:
            db.execute("DELETE FROM sessions WHERE token_id = ?", (token_id,))

    def session_count(self) -> int:
        with self._db() as db:
            return int(db.execute("SELECT count(*) FROM sessions").fetchone()[0])

    # --- failed logins, lock-outs, TOTP steps ------------------------------------------------------

    def add_failure(self, user_id: str, before: int) -> int:
        """One more failed login (``before``: the count the database holds, if this server has none yet)."""
        with self._db() as db:
            db.execute("INSERT INTO users (id, failures) VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET "
                       "failures = coalesce(users.failures + 1, excluded.failures)", (user_id, before + 1))
            return int(db.execute("SELECT failures FROM users WHERE id = ?", (user_id,)).fetchone()[0])

    def lock_out(self, user_id: str, until: dt.datetime) -> None:
        with self._db() as db:
            db.execute("INSERT INTO users (id, failures, locked_until) VALUES (?, 0, ?) ON CONFLICT (id) DO UPDATE "
                       "SET failures = 0, locked_until = excluded.locked_until", (user_id, _ts(until)))

    def locked_until(self, user_id: str) -> dt.datetime | None:
        with self._db() as db:
            row = db.execute("SELECT locked_until FROM users WHERE id = ?", (user_id,)).fetchone()
        return None if row is None or row[0] is None else dt.datetime.fromtimestamp(row[0], dt.UTC)

    def clear_failures(self, user_id: str) -> None:
        with self._db() as db:
            db.execute("UPDATE users SET failures = NULL WHERE id = ?", (user_id,))

    def claim_totp_step(self, user_id: str, step: int, used: int) -> bool:
        """Whether the TOTP ``step`` is newer than any used (``used``: the last the database knows of); if so it
        is used from now on, on every worker."""
        with self._db() as db:
            db.execute("INSERT INTO users (id, totp_step) VALUES (?, 0) ON CONFLICT (id) DO NOTHING", (user_id,))
            claimed = db.execute("UPDATE users SET totp_step = ? WHERE id = ? AND totp_step < ? AND ? > ?",
                                 (step, user_id, step, step, used))
            return claimed.rowcount == 1

    # --- housekeeping -----------------------------------------------------------------------------

    def purge(self, now: dt.datetime) -> None:
        with self._db() as db:
            db.execute("DELETE FROM sessions WHERE expires <= ?", (_ts(now),))

    def clear(self) -> None:
        """This server writes its database again (it took over): its own database holds all of this."""
        with self._db() as db:
            db.execute("DELETE FROM sessions")
            db.execute("DELETE FROM users")

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None
