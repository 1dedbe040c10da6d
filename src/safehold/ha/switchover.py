"""Switchover (a planned role swap), run on the primary: ``safehold ha switchover --to SERVER``.

1. check the target: a read-only server of this cluster, answering, its replica streaming from here;
2. stop this primary's database cleanly: open transactions are rolled back (never acknowledged), the
   shutdown checkpoint is the last thing written, and the WAL senders hand everything to the replicas
   before it exits;
3. ask the target (a request signed with the peer key) to wait until it has replayed that checkpoint —
   the last byte — and promote itself; it raises the generation and logs ``ManualSwitch``;
4. rejoin this server as the target's replica (no rewind needed: nothing diverged), as a read-only server.

Writes are unavailable from step 2 until the target is promoted.  If the target cannot be promoted, this
database is started again as the primary and nothing changed.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

from safehold.config import Settings
from safehold.crypto.keyfile import MasterKey
from safehold.domain import ServerRole
from safehold.errors import ConfigError, SafeholdError
from safehold.ha.peers import LocalReport, PeerUnreachable, PromoteAnswer, SyncPeerClient
from safehold.ha.rejoin import RejoinResult, rejoin

Say = Callable[[str], None]
PEER_PROMOTE = "/api/v1/ha/peer/promote"


@dataclass(frozen=True)
class Target:
    id: str
    name: str
    url: str


@dataclass(frozen=True)
class SwitchoverResult:
    target: Target
    generation: int
    write_unavailable_seconds: float
    rejoined: RejoinResult


def choose_target(rows: list[dict[str, str]], wanted: str, own_id: str) -> Target:
    """The read-only server named (or with the id) ``wanted`` among the registry rows (pure)."""
    matches = [r for r in rows if wanted in (r["id"], r["name"]) and r["id"] != own_id]
    if not matches:
        names = ", ".join(sorted(r["name"] for r in rows if r["role"] == ServerRole.READONLY)) or "none"
        raise ConfigError(f"no server {wanted!r} in this cluster", hint=f"read-only servers: {names}")
    if len(matches) > 1:
        raise ConfigError(f"{len(matches)} servers are named {wanted!r}; give its id instead")
    r = matches[0]
    if r["role"] != ServerRole.READONLY:
        raise ConfigError(f"{r['name']} is a {r['role']} server; a switchover goes to a read-only server "
                          "(it has the replica that becomes the primary database)")
    if not r["url"]:
        raise ConfigError(f"{r['name']} has no URL in the registry (it has not joined yet)")
    return Target(r["id"], r["name"], r["url"])


def switchover(settings: Settings, master: MasterKey, wanted: str, *, say: Say, timeout: float = 60) -> SwitchoverResult:
    from safehold.runtime.database import manager

    if settings.database.mode == "external":
        raise ConfigError("the database's HA engine owns its switchover; Safehold's app servers follow it",
                          hint="e.g. 'patronictl switchover' (docs/SCALE-OUT.md)")
    if settings.server.role != ServerRole.PRIMARY or settings.database.mode != "bundled":
        raise ConfigError("run 'safehold ha switchover' on the primary (it holds the primary database)")
    target = _find_target(settings, wanted)
    _preflight(settings, target)
    pg = manager(settings)
    say(f"stopping writes: shutting this primary's database down cleanly (target {target.name})")
    t0 = time.monotonic()
    pg.stop(mode="fast")
    lsn = pg.checkpoint_lsn()
    say(f"the last WAL position is {lsn}; asking {target.name} to replay up to it and take over")
    try:
        generation = _promote_target(settings, master, target, lsn, timeout)
    except BaseException:
        say("the target was not promoted: starting this database again as the primary; nothing changed")
        pg.start()
        pg.wait_ready()
        raise
    unavailable = time.monotonic() - t0
    say(f"{target.name} is the acting primary (generation {generation}); writes were unavailable for "
        f"{unavailable:.1f} s")
    result = rejoin(settings, master, target.url, say=say, report_divergence=False)
    say(f"this server is now a read-only server of {target.name} ({result.method})")
    return SwitchoverResult(target, generation, unavailable, result)


def _find_target(settings: Settings, wanted: str) -> Target:
    import asyncio

    from safehold.storage import servers as server_store
    from safehold.storage.db import app_target, make_engine

    async def rows() -> list[dict[str, str]]:
        engine = make_engine(app_target(settings), pool_size=1)
        try:
            async with engine.connect() as conn:
                return [{"id": r.id, "name": r.name, "role": r.role, "url": r.url}
                        for r in await server_store.all_servers(conn)]
        finally:
            await engine.dispose()

    return choose_target(asyncio.run(rows()), wanted, settings.server.id)


def _preflight(settings: Settings, target: Target) -> None:
    try:
        with SyncPeerClient(settings, 10) as c:
            report = c.local(target.url)
    except (ssl.SSLError, OSError):
        report = None
    check_target(target, report, settings.ha.cluster_id,
                 max(3 * settings.ha.check_interval, 5.0) + settings.ha.peer_timeout)


def check_target(target: Target, report: LocalReport | None, cluster_id: str | None, fresh_within: float) -> None:
    """Whether the target can take over now, from its own report (pure): a read-only server of this cluster,
    not fenced, its replica answering and known to be current within ``fresh_within`` seconds (else
    SafeholdError, saying why)."""
    if report is None:
        raise SafeholdError(f"{target.name} at {target.url} does not answer; not switching over",
                            hint="start it, or choose another target")
    if report.cluster_id != cluster_id:
        raise SafeholdError(f"{target.name} serves another cluster; not switching over")
    if report.role != ServerRole.READONLY or report.mode == "fenced":
        raise SafeholdError(f"{target.name} is not a read-only server now ({report.role or None}, "
                            f"{report.mode or None}); not switching over")
    if report.database_ok is False:
        raise SafeholdError(f"{target.name}'s replica database does not answer; not switching over",
                            hint="start it ('safehold db start --data-dir ...' on that host) and try again")
    age = report.data_age_seconds
    if age is None or age > fresh_within:
        raise SafeholdError(f"{target.name}'s replica is not known to be streaming and caught up (data age "
                            f"{'unknown' if age is None else f'{age:.1f} s'}, at most {fresh_within:g} s needed); "
                            "not switching over", hint="'safehold ha status' shows its replication status")


def _promote_target(settings: Settings, master: MasterKey, target: Target, lsn: str, timeout: float) -> int:
    body = {"reason": "ManualSwitch", "wait_lsn": lsn, "note": f"switchover from {settings.server.name}"}
    try:
        with SyncPeerClient(settings, timeout + 30) as c:
            answer = c.post_signed(target.url, PEER_PROMOTE, body, master.peer_key())
    except PeerUnreachable as exc:
        raise SafeholdError(f"cannot reach {target.name} to promote it ({exc.reason})") from None
    except OSError as exc:
        raise SafeholdError(f"cannot reach {target.name} to promote it ({type(exc).__name__})") from None
    if answer.status != 200:
        raise SafeholdError(f"{target.name} refused to take over ({answer.status}): {answer.error()[0]}")
    return PromoteAnswer.from_json(answer.body).generation
