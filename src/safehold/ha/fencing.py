"""Fencing: a primary or secondary that a newer primary superseded must not write a single row.

Promotion raises the cluster's generation (``cluster.generation``) in the promoted database.  The
servers on the old side still hold the old generation; before they write anything — at start-up,
before they register — and then every HA cycle, they ask the peers they know (the server registry of
their own database) what generation they hold.  A peer of the same cluster reporting a higher
generation, as the acting primary or as a server fenced by it, means this server was superseded: it
turns fenced (``Runtime.fence``), refuses every write, and — when its database is the bundled one —
sets that database read-only as well, so a secondary still connected to it cannot write either.

The fence is also written to ``DATA_DIR/fence.json``: a fenced server that is restarted comes up
fenced even when it can reach no peer, and so does one whose bundled database was set read-only.

Which peer report fences is a pure function (:func:`superseded_by`); the rest gathers the reports.
The same reports confirm the write lease (:mod:`safehold.runtime.writelease`, :func:`confirmation_from`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import json
import logging
import math
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from safehold.config import CONFIG_NAME, Settings, load_settings
from safehold.domain import ServerRole
from safehold.errors import SafeholdError
from safehold.ha.peers import LocalReport, PeerClient
from safehold.pg.runas import write_file
from safehold.runtime import Fence
from safehold.runtime.shared import SharedCounter
from safehold.runtime.writelease import Confirmation, clock
from safehold.storage import system_settings
from safehold.storage.db import DB_ERRORS, owner_target

log = logging.getLogger(__name__)


def superseded_by(cluster_id: str, generation: int, reports: Iterable[LocalReport]) -> Fence | None:
    """The newest primary among the peers' ``/ha/local`` reports that supersedes ``generation``: a primary of
    the cluster at a higher generation, or the acting primary that fenced a server of the cluster there."""
    best: Fence | None = None
    for r in reports:
        if r.cluster_id != cluster_id or r.generation is None or r.generation <= generation:
            continue
        if r.fence is not None:
            candidate = Fence(**dataclasses.asdict(r.fence))
        elif r.role == "primary":
            candidate = Fence(r.generation, r.server_id, r.server_name, r.url)
        else:
            continue
        if best is None or candidate.generation > best.generation:
            best = candidate
    return best


async def peer_reports(settings: Settings, urls: Sequence[str], client: PeerClient | None = None
                       ) -> list[LocalReport]:
    """``GET /api/v1/ha/local`` of every URL (TLS verified against the cluster CA), with ``client`` when the
    caller keeps one; unreachable ones are left out."""
    if not urls:
        return []
    if client is None:
        async with PeerClient.for_settings(settings) as own:
            return await own.reports(urls)
    return await client.reports(urls)



def confirmation_from(cluster_id: str, generation: int, peer_urls: Sequence[str],
                      reports: Iterable[LocalReport]) -> Confirmation:
    """What the peers' reports say about this server's write lease: confirmed when a peer of the cluster answered
    at this server's generation or an older one, or when the cluster has no other server (nobody could have
    taken over).  A report of a newer generation never confirms, even one :func:`superseded_by` could not
    read a fence from; a peer of the cluster being promoted denies it, whatever the others say (the lease must
    run out before the promoted database takes a write)."""
    reports = list(reports)
    if any(r.cluster_id == cluster_id and r.promoting for r in reports):
        return Confirmation.DENIED
    if not peer_urls or any(r.cluster_id == cluster_id and r.generation is not None and r.generation <= generation
                            for r in reports):
        return Confirmation.CONFIRMED
    return Confirmation.UNCONFIRMED


FENCE_FILE = "fence.json"
OVERRIDE_FILE = "lease-override"
#: how long an operator's override waits to be picked up by the running server
OVERRIDE_TTL = 120.0
PROMOTING_FILE = "promoting"
#: how long a promotion's marker holds when the command that wrote it died without removing it
PROMOTING_TTL = 120.0


def lease_runout(lease: float) -> float:
    """How long after its last confirmation a writer's lease of ``lease`` seconds has surely run out: the
    lease counts from before the writer asked, so from the answer on it is shorter still; the margin covers
    two machines' clocks ticking at slightly different rates."""
    return lease + max(0.5, 0.1 * lease)


class ConfirmedLeases:
    """A read-only server's side of the writers' leases: when its /ha/local last answered in a way a writer
    may take as a confirmation, and so how long a promotion of it must wait for every such lease to run out.
    With ``shared`` (a value every worker of the server sees) an answer of any worker counts."""

    def __init__(self, lease: float, shared: SharedCounter | None = None) -> None:
        self.lease = lease
        self._shared = shared
        self._confirmed_at: float | None = None  # on the lease clock

    @property
    def confirmed_at(self) -> float | None:
        if self._shared is not None and (ms := self._shared.value()):
            return ms / 1000
        return self._confirmed_at

    def answer(self, promoting: bool, asked_at: float | None = None) -> bool:
        """Note an answer that does not say "promoting" (it may confirm a lease); returns ``promoting``.
        ``asked_at``: when the answer began (before the marks were looked at)."""
        if not promoting:
            self._confirmed_at = clock() if asked_at is None else asked_at
            if self._shared is not None:
                self._shared.raise_to(math.ceil(self._confirmed_at * 1000))
        return promoting

    def wait(self, now: float) -> float:
        """Seconds until the last lease this server may have confirmed has surely run out."""
        confirmed = self.confirmed_at
        if confirmed is None:
            return 0.0
        return max(0.0, confirmed + lease_runout(self.lease) - now)


PROMOTE_LOCK = "run/promote.lock"


@contextlib.contextmanager
def promotion_lock(settings: Settings) -> Iterator[None]:
    """One promotion of this server at a time, whichever of its worker processes was asked (the peer API
    lands on any of them); another one meanwhile is refused."""
    path = settings.data_dir / PROMOTE_LOCK
    path.parent.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SafeholdError("a promotion of this server is already under way") from None
        yield
    finally:
        os.close(fd)  # and with it the lock


_roles: dict[Path, tuple[int, ServerRole | None]] = {}


def role_on_disk(settings: Settings) -> ServerRole | None:
    """The role this server's settings file names now (another worker may have promoted the server: this
    process's own settings say read-only until it takes over); None if the file cannot be read."""
    try:
        mtime = (settings.data_dir / CONFIG_NAME).stat().st_mtime_ns
    except OSError:
        return None
    cached = _roles.get(settings.data_dir)
    if cached is None or cached[0] != mtime:
        try:
            role: ServerRole | None = load_settings(settings.data_dir).server.role
        except SafeholdError:
            role = None
        cached = _roles[settings.data_dir] = (mtime, role)
    return cached[1]


def mark_promoting(settings: Settings) -> None:
    """'safehold ha promote' is about to promote this read-only server's replica: from now on the running
    server answers its peers that it is being promoted, so it confirms no writer's lease (see
    :func:`confirmation_from`).  The mark goes when the server has taken over (or the command gave up)."""
    write_file(settings.data_dir / PROMOTING_FILE, f"{time.time():.3f}\n".encode(), mode=0o600, owner=None)


def promoting_marked(settings: Settings) -> bool:
    """Whether a promotion of this server is under way (a mark younger than :data:`PROMOTING_TTL`)."""
    try:
        st = (settings.data_dir / PROMOTING_FILE).stat()
    except OSError:
        return False
    return time.time() - st.st_mtime < PROMOTING_TTL


def clear_promoting(settings: Settings) -> None:
    try:
        (settings.data_dir / PROMOTING_FILE).unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("could not remove %s (%s): it lapses by itself", PROMOTING_FILE, exc.strerror)


def save_fence(settings: Settings, fence: Fence) -> None:
    """Remember the fence across restarts (best effort: the database's read-only setting is the other
    half)."""
    try:
        write_file(settings.data_dir / FENCE_FILE, json.dumps(dataclasses.asdict(fence)).encode(), mode=0o600,
                   owner=None)
    except OSError as exc:
        log.warning("could not write %s (%s): a restart will ask the peers again", FENCE_FILE, exc.strerror)


def load_fence(settings: Settings, generation: int) -> Fence | None:
    """The fence remembered in the data directory, unless this server's database has reached its
    generation since (it was rejoined and promoted again)."""
    try:
        d = json.loads((settings.data_dir / FENCE_FILE).read_text())
        fence = Fence(int(d["generation"]), str(d["acting_primary_id"]), str(d["acting_primary_name"]),
                      str(d["acting_primary_url"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        log.warning("%s is unreadable: ignored (the peers and the database decide)", FENCE_FILE)
        return None
    return fence if fence.generation > generation else None


def clear_fence(settings: Settings) -> None:
    try:
        (settings.data_dir / FENCE_FILE).unlink()
    except FileNotFoundError:
        pass


def request_override(settings: Settings) -> None:
    """An operator's word that no other server took over: the running server renews its write lease at its
    next heartbeat without a peer's confirmation ('safehold ha override-lease')."""
    write_file(settings.data_dir / OVERRIDE_FILE, f"{time.time():.3f}\n".encode(), mode=0o600, owner=None)


def take_override(settings: Settings) -> bool:
    """Whether an operator asked for an override (recently) that this process has not used yet.  The request
    stays for its time to live, so each worker of a server with several takes it once."""
    path = settings.data_dir / OVERRIDE_FILE
    try:
        st = path.lstat()
    except OSError:
        return False
    if st.st_uid != os.geteuid() and st.st_uid != 0:
        log.warning("%s is not owned by this server's user: ignored", OVERRIDE_FILE)
        return False
    key = str(settings.data_dir)
    if _overrides_taken.get(key) == st.st_mtime_ns or time.time() - st.st_mtime >= OVERRIDE_TTL:
        return False
    _overrides_taken[key] = st.st_mtime_ns
    return True


#: per process: the override request (its file's mtime) this process already used, by data directory
_overrides_taken: dict[str, int] = {}


def fence_database(settings: Settings, on: bool = True) -> bool:
    """Make the bundled database refuse writes (or accept them again).  False when this server has no
    bundled database or it cannot be reached (the app-level fence still holds)."""
    if settings.database.mode != "bundled":
        return False
    try:
        system_settings.set_read_only(owner_target(settings), on)  # its database's sessions are ended
    except (SafeholdError, *DB_ERRORS, OSError) as exc:
        log.warning("could not %s the bundled database: %s", "fence" if on else "unfence",
                    exc.message if isinstance(exc, SafeholdError) else type(exc).__name__)
        return False
    return True


class StartupFencing:
    """The start-up check a primary or secondary runs before it writes anything (see
    ``Runtime``'s ``open_runtime``): the peers' reports, then this server's memory of an earlier fence."""

    async def check(self, settings: Settings, cluster_id: str, generation: int,
                    peer_urls: Sequence[str]) -> tuple[Fence | None, Confirmation]:
        reports = await peer_reports(settings, peer_urls)
        fence = superseded_by(cluster_id, generation, reports) or load_fence(settings, generation)
        return fence, confirmation_from(cluster_id, generation, peer_urls, reports)

    async def remember(self, settings: Settings, fence: Fence) -> None:
        await asyncio.to_thread(save_fence, settings, fence)
        await asyncio.to_thread(fence_database, settings)


STARTUP = StartupFencing()
