"""Promotion: a read-only server's replica becomes the acting primary of the cluster.

The steps, each done for the operator (``safehold ha promote``), by the peer API (switchover) or by
the automatic failover policy:

1. check: the key file matches the replica's cluster, and its data is not older than the operator's
   limit (``ha.promote_max_data_age``) unless forced — :func:`check_promotable` (pure);
2. promote the replica (``pg_ctl promote``) — :func:`promote_database`;
3. in the now-writable database, in one transaction: raise the cluster generation (which fences the
   old side, see services.fencing), name this server the acting primary, remove the stale registry
   entries (the old primary and its secondaries re-register when they are rejoined), and log the
   ``Failover`` (or ``ManualSwitch``) event — :func:`record_promotion`;
4. replay the server's audit spool into its own database (Runtime.become_primary when it runs, else
   :func:`replay_spool`), and write its settings as the primary.
"""

from __future__ import annotations

import datetime as dt
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from safehold import __version__, names
from safehold.config import Settings, load_settings, write_settings
from safehold.crypto.keyfile import MasterKey
from safehold.domain import ServerRole
from safehold.errors import ConfigError, SafeholdError
from safehold.ha.fencing import (
    ConfirmedLeases,
    clear_promoting,
    mark_promoting,
    promotion_lock,
    role_on_disk,
)
from safehold.ha.policy import EventKind
from safehold.storage import cluster as cluster_store
from safehold.storage import ha as ha_store
from safehold.storage import servers as server_store
from safehold.storage.db import AsyncConnection, AsyncEngine

if TYPE_CHECKING:
    from safehold.runtime import Runtime

Say = Callable[[str], None]
log = logging.getLogger(__name__)


class PromotionRefused(SafeholdError):
    """The checks before a promotion failed; nothing was changed."""


@dataclass(frozen=True)
class ReplicaFacts:
    """What the checks look at, gathered from the replica."""

    role: ServerRole
    in_recovery: bool
    key_matches: bool
    data_age_seconds: float | None  # None: unknown (never heard from its primary)


def check_promotable(facts: ReplicaFacts, *, max_data_age: float, force: bool) -> list[str]:
    """Reasons not to promote (empty: go ahead).  A wrong key is never overridden by --force."""
    if facts.role != ServerRole.READONLY:
        raise PromotionRefused(f"this server is a {facts.role} server; only a read-only server (which has its own "
                               "replica) can be promoted")
    if not facts.key_matches:
        raise PromotionRefused("the key file does not match this replica's cluster; refusing to promote",
                               hint="use this cluster's key file (security.key_file)")
    reasons = []
    if facts.in_recovery and not force:
        age = facts.data_age_seconds
        if age is None:
            reasons.append("the replica never heard from its primary: its data age is unknown")
        elif age > max_data_age:
            reasons.append(f"the replica's data is {age:.0f} s old, more than the limit of {max_data_age:.0f} s "
                           "(ha.promote_max_data_age)")
    return reasons


def promote_database(settings: Settings, say: Say) -> None:
    """Start the replica if needed and promote it; a database that is already a primary is left alone."""
    from safehold.runtime.database import manager

    pg = manager(settings)
    if not pg.status().running:
        say("starting the replica")
        pg.start()
    pg.wait_ready()
    if pg.is_standby():
        say("promoting the replica (pg_ctl promote)")
        pg.promote()
    else:
        say("the database is already a primary")


@dataclass(frozen=True)
class Promotion:
    generation: int
    old_primary: str  # name of the primary it replaced ("" if none was registered)
    removed: list[str]  # names of the registry entries removed


async def record_promotion(conn: AsyncConnection, settings: Settings, *, url: str, reason: EventKind,
                           note: str = "") -> Promotion:
    """Step 3, in the caller's transaction on the promoted database."""
    generation = await cluster_store.raise_generation(conn, settings.server.id)
    rows = await server_store.all_servers(conn)
    # (a primary that was standalone when it last started is still registered as such)
    old = next((r.name for role in (ServerRole.PRIMARY, ServerRole.STANDALONE) for r in rows
                if r.role == role and r.id != settings.server.id), "")
    stale = [r for r in rows if r.id != settings.server.id
             and r.role in (ServerRole.PRIMARY, ServerRole.SECONDARY, ServerRole.STANDALONE)]
    await server_store.remove(conn, [r.id for r in stale])
    await server_store.register(conn, id=settings.server.id, name=settings.server.name,
                                role=ServerRole.PRIMARY.value, hostname=socket.gethostname(), url=url,
                                port=settings.http.port, version=__version__)
    name = settings.server.name
    message = (f"{name} is the acting primary (generation {generation})"
               + (f", replacing {old}" if old else "") + (f"; {note}" if note else ""))
    await ha_store.add_events(conn, settings.server.id, [(reason.value, name, message, (name, old))])
    return Promotion(generation, old, [r.name for r in stale])


def settings_as_primary(settings: Settings) -> Settings:
    """The promoted server's own settings (from its file, without environment overrides)."""
    current = load_settings(settings.data_dir, env={})
    return current.model_copy(update={
        "server": current.server.model_copy(update={"role": ServerRole.PRIMARY}),
        "ha": current.ha.model_copy(update={"primary_db_host": None, "primary_db_port": None}),
    })


def write_as_primary(settings: Settings) -> Settings:
    new = settings_as_primary(settings)
    write_settings(new)
    return load_settings(settings.data_dir)


def data_age_limit(settings: Settings, override: float | None) -> float:
    if override is not None and override < 0:
        raise ConfigError("--max-data-age must not be negative")
    return settings.ha.promote_max_data_age if override is None else override


async def promote_running(rt: Runtime, leases: ConfirmedLeases, *, reason: EventKind, wait_lsn: str | None,
                          note: str, timeout: float) -> int:
    """Promote the running read-only server ``rt`` (in one of its worker processes); returns the new generation.
    While it runs, every worker of the server answers its peers "promoting" (the mark), so no writer's lease is
    confirmed; it waits for those confirmed before to run out (not in a switchover: its old primary stopped
    writing before it asked), promotes, records, writes the settings and takes over.  The other workers
    follow the settings file (``fencing.role_on_disk``, and their next peer check takes over)."""
    import asyncio

    from safehold.runtime import public_url
    from safehold.runtime.writelease import clock

    with promotion_lock(rt.settings):
        if (not rt.readonly or rt.fence is not None
                or await asyncio.to_thread(role_on_disk, rt.settings) != ServerRole.READONLY):
            raise SafeholdError("this server is not a read-only server; nothing to promote")
        await asyncio.to_thread(mark_promoting, rt.settings)
        keep_mark = False
        try:
            if reason is not EventKind.MANUAL_SWITCH and (wait := leases.wait(clock())) > 0:
                log.warning("promotion: waiting %.1f s for the write leases this server confirmed to run out", wait)
                await asyncio.sleep(wait)
            if wait_lsn:
                await wait_replayed(rt, wait_lsn, timeout)
            keep_mark = True  # from here a failure leaves the mark to lapse by itself: the database may be promoted
            await asyncio.to_thread(promote_database, rt.settings, lambda m: log.warning("promotion: %s", m))
            async with rt.engine.begin() as conn:
                promotion = await record_promotion(conn, rt.settings, url=public_url(rt.settings), reason=reason,
                                                   note=note)
            settings = await asyncio.to_thread(write_as_primary, rt.settings)
            await rt.become_primary(settings, promotion.generation)
            keep_mark = False
        finally:
            if not keep_mark:
                await asyncio.to_thread(clear_promoting, rt.settings)
        return promotion.generation


async def wait_replayed(rt: Runtime, lsn: str, timeout: float) -> None:
    """Before a switchover's promotion: wait until the replica replayed up to ``lsn`` (the old primary's last)."""
    import asyncio

    from safehold.storage import replication

    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        async with rt.read() as conn:
            done = await replication.replayed_up_to(conn, lsn)
        if done:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise SafeholdError(f"the replica did not replay up to {lsn} within {timeout:g} s; not promoting")
        await asyncio.sleep(0.05)


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# --- the operator's command (safehold ha promote) --------------------------------------------------


def promote_here(settings: Settings, master: MasterKey, *, force: bool, max_data_age: float | None,
                 server_running: bool, say: Say) -> Promotion:
    """``safehold ha promote``: the whole promotion as one command.  When the server is running it
    notices its promoted database and takes over as the primary itself (replaying its spool); else the
    spool is replayed here and the next ``safehold serve`` starts it as the primary."""
    import asyncio

    from safehold.runtime.database import manager
    from safehold.storage.db import app_target, make_engine

    limit = data_age_limit(settings, max_data_age)
    if settings.server.role != ServerRole.READONLY:
        raise PromotionRefused(f"this server is a {settings.server.role} server; only a read-only server (which "
                               "has its own replica) can be promoted")
    pg = manager(settings)
    started = False
    if not pg.status().running:
        say("starting the replica")
        started = pg.start()
        pg.wait_ready()

    async def facts() -> ReplicaFacts:
        from safehold.ha.cycle import data_age
        from safehold.storage import replication

        engine = make_engine(app_target(settings), pool_size=1)
        try:
            async with engine.connect() as conn:
                row = await cluster_store.get(conn)
                view = await replication.replica_view(conn)
        finally:
            await engine.dispose()
        return ReplicaFacts(settings.server.role, view.in_recovery,
                            row is not None and row.key_check == master.check_value, data_age(view, now()))

    begun = False
    try:
        f = asyncio.run(facts())
        reasons = check_promotable(f, max_data_age=limit, force=force)
        if reasons:
            raise PromotionRefused("not promoting: " + "; ".join(reasons),
                                   hint="check why the replica fell behind; --force promotes anyway (changes "
                                        "the old primary made since are then reported at its rejoin)")
        if f.in_recovery:
            outlast_leases(settings, say)
        begun = True  # from here the mark stays until the server took over (or it lapses)
        promote_database(settings, say)
        promotion = asyncio.run(_record_offline(settings, master, replay=not server_running, say=say))
    except BaseException:
        if not begun:
            clear_promoting(settings)  # nothing was promoted: the server confirms its peers again
        if started and pg.is_standby():
            pg.stop()
        raise
    write_as_primary(settings)
    if not server_running:
        clear_promoting(settings)  # else the running server removes it once it has taken over
        if started:
            pg.stop()
    return promotion


def outlast_leases(settings: Settings, say: Say) -> None:
    """Before the replica is promoted: stop confirming the writers' leases (the running server answers its
    peers that it is being promoted), then wait until every lease it confirmed has run out.  An old primary
    that is frozen, not dead, thaws to find its lease gone and this server denying it: it acknowledges
    nothing the promoted database lacks.  What it commits until then still streams to this replica."""
    from safehold.ha.fencing import PROMOTING_FILE, lease_runout, mark_promoting

    try:
        mark_promoting(settings)
    except OSError as exc:  # a full disk, a read-only file system: nothing was changed
        raise PromotionRefused(f"cannot write {PROMOTING_FILE} in {settings.data_dir} ({exc.strerror}): not promoting",
                               hint="free space on (or repair) the data directory's file system") from None
    wait = lease_runout(settings.ha.write_lease)
    say(f"waiting {wait:.1f} s for the write leases this server confirmed to run out (a primary that is "
        "frozen rather than dead must not acknowledge a change after this point)")
    time.sleep(wait)


async def _record_offline(settings: Settings, master: MasterKey, *, replay: bool, say: Say) -> Promotion:
    from safehold.runtime import check_key, public_url, unwrap_keys
    from safehold.storage.db import app_target, make_engine

    engine = make_engine(app_target(settings), pool_size=1)
    try:
        async with engine.begin() as conn:
            await check_key(conn, master)
            keys = unwrap_keys(master, await cluster_store.keys(conn))
            promotion = await record_promotion(conn, settings, url=public_url(settings),
                                               reason=EventKind.FAILOVER, note="promoted by the operator")
        say(f"generation {promotion.generation}: this server is the acting primary"
            + (f"; removed the stale registry entries of {', '.join(promotion.removed)}" if promotion.removed else ""))
        if replay:
            n = await replay_spool(settings, keys.audit_key, engine)
            if n:
                say(f"replayed {n} audit record(s) from the spool into this database")
    finally:
        await engine.dispose()
    return promotion


async def replay_spool(settings: Settings, audit_key: bytes, engine: AsyncEngine) -> int:
    """Ship a read-only server's pending spool into its own (promoted) database, once each."""
    from safehold.audit import emergency
    from safehold.audit.chain import GENESIS
    from safehold.audit.spool import AuditSpool, ship
    from safehold.storage import audit as audit_store

    directory = settings.data_dir / names.SPOOL_DIR
    if not directory.is_dir():
        return 0
    async with engine.connect() as conn:
        head = await audit_store.head(conn, settings.server.id) or (0, GENESIS)
    spool = AuditSpool(directory, audit_key, settings.server.id, ServerRole.READONLY, head=head)
    return await ship(spool, emergency.shipper(engine))
