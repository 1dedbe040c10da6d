"""Readiness: could this server take over right now? ('safehold ha check', ``GET /ha/checks``)

Gathering (I/O: the key file, this server's database, the spool directory, the disks, the peers
over HTTPS) is separate from the evaluation (:func:`evaluate`, pure: facts in, one
:class:`Check` per line out), which is tested as a table.

A read-only server in emergency mode (no primary or secondary answers: it serves users itself) is
the very server an operator asks "could it take over?"; what is down *because* of the outage (its
replica no longer streams, the primary and secondary do not answer) is then marked as expected, not
as a failure, and :func:`promote_advice` names the command that takes over.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import shlex
import shutil
import ssl
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from safehold import names
from safehold.config import FailoverSection, Settings
from safehold.crypto.keyfile import key_id_of, load_key_file
from safehold.domain import ServerRole
from safehold.errors import SafeholdError
from safehold.ha.failover_inputs import InputKind, InputState, describe
from safehold.ha.peers import PeerClient
from safehold.ha.probe import Target, default_gateway, parse_target, target_reachable_async
from safehold.runtime import engine_managed
from safehold.storage import cluster as cluster_store
from safehold.storage import cluster_settings as settings_store
from safehold.storage import replication
from safehold.storage import servers as server_store
from safehold.storage.db import AsyncEngine, app_target, make_engine

#: A disk fails the check with less free space than this, or less than this fraction of it.
MIN_FREE_BYTES = 1 << 30
MIN_FREE_FRACTION = 0.05
DB_TIMEOUT = 10.0
WRITERS = frozenset({ServerRole.PRIMARY, ServerRole.SECONDARY, ServerRole.STANDALONE})
#: Why a check that is down in emergency mode is not a failure.
EXPECTED = "expected while no primary or secondary answers (emergency mode)"


@dataclass(frozen=True)
class Check:
    """One line of the readiness report.  ``expected``: down, but as expected in this server's situation
    (emergency mode); such a check does not stand in the way of a take-over, so it counts as ``ok``."""

    name: str
    ok: bool
    detail: str
    expected: bool = False

    @property
    def state(self) -> str:
        """passed, expected or failed (what the pages show, each its own mark and colour)."""
        if self.expected:
            return "expected"
        return "passed" if self.ok else "failed"


# --- facts ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyFacts:
    check_value: bytes | None = None  # of the key file
    error: str | None = None  # the key file is missing, unsafe or damaged


@dataclass(frozen=True)
class DiskFacts:
    label: str  # "data", "database"
    path: Path
    free: int = 0
    total: int = 0
    error: str | None = None


@dataclass(frozen=True)
class PeerFacts:
    name: str
    url: str
    healthy: bool
    error: str | None = None  # why it is not healthy
    generation: int | None = None  # None: the peer did not say (or did not answer)
    role: ServerRole | None = None  # as registered (None: unknown)

    @property
    def writer(self) -> bool:
        """A server a read-only server would send its users to (a primary or a secondary)."""
        return self.role in WRITERS


@dataclass(frozen=True)
class ReplicaFacts:
    view: replication.ReplicaView | None = None
    data_age: float | None = None  # seconds, see safehold.ha.cycle.data_age
    error: str | None = None


@dataclass(frozen=True)
class Facts:
    role: ServerRole
    key: KeyFacts
    db_error: str | None = None  # this server's database could not be read
    db_key_check: bytes | None = None
    generation: int | None = None
    spool_path: Path | None = None  # None: this server has no spool (n/a)
    spool_error: str | None = None
    disks: tuple[DiskFacts, ...] = ()
    replica: ReplicaFacts | None = None  # None: not a read-only server
    registry_read: bool = True  # False: the peers are unknown (the database could not be read)
    lag_threshold_seconds: float = 30.0
    lag_threshold_bytes: int = 64 * 1024 * 1024
    peers: tuple[PeerFacts, ...] = field(default_factory=tuple)
    data_dir: Path | None = None  # for the command that promotes this server
    engine_managed: bool = False  # an HA engine (Patroni, ...) owns the database's failover, not Safehold
    # a read-only server's automatic failover gateway and witnesses as probed now (None: it runs no failover)
    failover_inputs: tuple[InputState, ...] | None = None
    failover_error: str | None = None  # the cluster's failover policy could not be read


# --- evaluation (pure) -------------------------------------------------------------------------------


def emergency(f: Facts) -> bool:
    """Whether this is a read-only server in emergency mode: its database is a replica, the server registry
    was read, and no primary or secondary among its peers answers (so it serves users itself).  A peer that
    answers and whose role is unknown might be one: then it is not emergency mode."""
    r = f.replica
    answering = any(p.healthy and (p.role is None or p.writer) for p in f.peers)
    return (f.role == ServerRole.READONLY and f.db_error is None and f.registry_read and r is not None
            and r.view is not None and r.view.in_recovery and not answering)


@dataclass(frozen=True)
class Advice:
    """How an operator makes this server take over: the command to run on its host, and when to."""

    command: str
    when: str


def promote_advice(f: Facts) -> Advice | None:
    """In emergency mode, the command that makes this read-only server the acting primary (None otherwise,
    and when an HA engine owns the database's failover: Safehold never promotes a database it does not
    manage)."""
    if not emergency(f) or f.engine_managed or f.data_dir is None:
        return None
    return Advice(f"safehold ha promote --data-dir {shlex.quote(str(f.data_dir))}",
                  "Run it on this server's host when the primary and secondary will not be back soon: this server "
                  "becomes the acting primary, so passwords can be changed again, and an old primary that comes "
                  "back is fenced until it is rejoined.")


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.1f} GiB"


def disk_ok(free: int, total: int) -> bool:
    return free >= MIN_FREE_BYTES and (total <= 0 or free / total >= MIN_FREE_FRACTION)


def _key_check(f: Facts) -> Check:
    name = "key file"
    if f.key.error is not None:
        return Check(name, False, f.key.error)
    assert f.key.check_value is not None
    file_id = key_id_of(f.key.check_value)
    if f.db_error is not None:
        return Check(name, False, f"key {file_id} cannot be compared with the database: {f.db_error}")
    if f.db_key_check is None:
        return Check(name, False, "the database has no cluster row to compare the key file with")
    if f.db_key_check != f.key.check_value:
        return Check(name, False, f"does not match the database: the key file holds key {file_id}, the "
                                  f"database was encrypted with key {key_id_of(f.db_key_check)}")
    return Check(name, True, f"matches the database (key id {file_id})")


def _spool_check(f: Facts) -> Check:
    name = "audit spool"
    if f.spool_path is None:
        return Check(name, True, "n/a (only a read-only server spools its audit records)")
    if f.spool_error is not None:
        return Check(name, False, f"{f.spool_path} is not writable: {f.spool_error}")
    return Check(name, True, f"{f.spool_path} is writable")


def _disk_check(d: DiskFacts) -> Check:
    name = f"disk ({d.label})"
    if d.error is not None:
        return Check(name, False, f"{d.path}: {d.error}")
    pct = 100 * d.free / d.total if d.total else 100.0
    text = f"{_gib(d.free)} free ({pct:.0f} %) on {d.path}"
    if not disk_ok(d.free, d.total):
        return Check(name, False, f"only {text}: below {_gib(MIN_FREE_BYTES)} or {MIN_FREE_FRACTION:.0%}")
    return Check(name, True, text)


def _replication_check(f: Facts) -> Check:
    name = "replication"
    r = f.replica
    if r is None:
        return Check(name, True, f"n/a (a {f.role} server has no replica)")
    if f.db_error is not None:
        return Check(name, False, f"cannot read the replica: {f.db_error}")
    if r.error is not None or r.view is None:
        return Check(name, False, f"cannot read the replica: {r.error or 'no answer'}")
    v = r.view
    if not v.in_recovery:
        return Check(name, False, "this server's database is not a replica (promoted already?)")
    if not v.streaming:
        text = f"not streaming from the primary (WAL receiver: {v.receiver_status or 'none'})"
        if emergency(f):
            return Check(name, True, f"{text}: {EXPECTED}", expected=True)
        return Check(name, False, text)
    backlog = v.replay_backlog_bytes or 0
    age = r.data_age or 0.0
    text = f"{backlog} bytes to replay, data {age:.1f} s old"
    if backlog > f.lag_threshold_bytes or age > f.lag_threshold_seconds:
        return Check(name, False, f"streaming but behind: {text} (thresholds {f.lag_threshold_bytes} bytes, "
                                  f"{f.lag_threshold_seconds:g} s)")
    return Check(name, True, f"streaming, {text}")


def _generation_check(f: Facts) -> Check:
    name = "generation"
    if f.db_error is not None:
        return Check(name, False, f"cannot read this server's generation: {f.db_error}")
    if f.generation is None:
        return Check(name, False, "the database has no cluster row")
    reported = [p for p in f.peers if p.generation is not None]
    ahead = [p for p in reported if p.generation is not None and p.generation > f.generation]
    if ahead:
        who = ", ".join(f"{p.name} at {p.generation}" for p in ahead)
        return Check(name, False, f"superseded: rejoin (this database is at generation {f.generation}; {who})")
    if not reported:
        return Check(name, True, f"generation {f.generation} (no peer reports one)")
    peers = ", ".join(f"{p.name} {p.generation}" for p in reported)
    return Check(name, True, f"generation {f.generation}, none newer (peers: {peers})")


def _peer_checks(f: Facts) -> list[Check]:
    if not f.registry_read:
        return [Check("peers", False, "unknown: the server registry could not be read")]
    if not f.peers:
        return [Check("peers", True, "no other server registered")]
    down_as_expected = emergency(f)
    out = []
    for p in f.peers:
        if p.healthy:
            out.append(Check(f"peer {p.name}", True, f"{p.url} answers"))
        elif down_as_expected and p.writer:
            out.append(Check(f"peer {p.name}", True, f"{p.url}: {p.error or 'no answer'}: {EXPECTED}",
                             expected=True))
        else:
            out.append(Check(f"peer {p.name}", False, f"{p.url}: {p.error or 'no answer'}"))
    return out


def _inputs_check(f: Facts) -> Check:
    """A read-only server's automatic failover inputs: a dead witness found now, not when it is needed."""
    name = "failover inputs"
    if f.failover_error is not None:
        return Check(name, False, f"the cluster's failover policy cannot be read: {f.failover_error}")
    if f.failover_inputs is None:
        return Check(name, True, "n/a (automatic failover is off on this server)")
    if not f.failover_inputs:
        return Check(name, True, "no gateway known and no witness configured: this server cannot tell its own "
                                 "network failure from the primary's")
    text = describe(f.failover_inputs)
    if any(i.reachable is False for i in f.failover_inputs):
        return Check(name, False, f"{text}: automatic failover may not promote this server")
    return Check(name, True, text)


def evaluate(f: Facts) -> list[Check]:
    """One check per line: key file, audit spool, disks, replication, generation, failover inputs (a
    read-only server), each peer."""
    inputs = [_inputs_check(f)] if f.role == ServerRole.READONLY else []
    return [_key_check(f), _spool_check(f), *(_disk_check(d) for d in f.disks), _replication_check(f),
            _generation_check(f), *inputs, *_peer_checks(f)]


# --- gathering (I/O) ------------------------------------------------------------------------------------


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, SafeholdError):
        return exc.message
    if isinstance(exc, TimeoutError):
        return "timed out"
    orig = getattr(exc, "orig", None)  # a database driver's error wrapped by SQLAlchemy
    if isinstance(orig, BaseException):
        exc = orig
        text = str(exc).strip().splitlines()
        return text[0].removeprefix("connection failed: ") if text else type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _key_facts(settings: Settings) -> KeyFacts:
    try:
        return KeyFacts(check_value=load_key_file(settings.key_file).check_value)
    except SafeholdError as exc:
        return KeyFacts(error=exc.message)


def probe_spool(directory: Path) -> str | None:
    """Create, fsync and remove a file in the spool directory (made if missing); the error, if any."""
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, name = tempfile.mkstemp(prefix=".check-", dir=directory)
        try:
            os.write(fd, b"safehold readiness check\n")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(name)
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def _disk(label: str, path: Path) -> DiskFacts:
    try:
        usage = shutil.disk_usage(path)
    except OSError as exc:
        return DiskFacts(label, path, error=exc.strerror or str(exc))
    return DiskFacts(label, path, free=usage.free, total=usage.total)


@dataclass
class _DbFacts:
    key_check: bytes | None = None
    generation: int | None = None
    replica: replication.ReplicaView | None = None
    replica_error: str | None = None
    servers: list[Any] = field(default_factory=list)
    failover: dict[str, Any] | None = None  # the cluster's failover policy as stored (None: none stored)


async def _read_db(engine: AsyncEngine, readonly: bool) -> _DbFacts:
    out = _DbFacts()
    async with engine.connect() as conn:
        row = await cluster_store.get(conn)
        if row is not None:
            out.key_check, out.generation = row.key_check, row.generation
        out.servers = list(await server_store.all_servers(conn))
        if readonly:
            stored = await settings_store.get(conn, "failover")  # the policy the server follows (its replica's)
            out.failover = stored.value if stored is not None else None
            try:
                out.replica = await replication.replica_view(conn)
            except Exception as exc:  # noqa: BLE001 - reported as a failed check
                out.replica_error = _error_text(exc)
    return out


async def read_database(settings: Settings, engine: AsyncEngine | None = None) -> _DbFacts:
    """The cluster row, the server registry and (read-only server) the replica's view."""
    readonly = settings.server.role == ServerRole.READONLY
    if engine is not None:
        return await asyncio.wait_for(_read_db(engine, readonly), DB_TIMEOUT)
    own = make_engine(app_target(settings), pool_size=2)
    try:
        return await asyncio.wait_for(_read_db(own, readonly), DB_TIMEOUT)
    finally:
        await own.dispose()


def _role(value: Any) -> ServerRole | None:
    try:
        return ServerRole(value)
    except ValueError:
        return None


async def _peer(client: PeerClient | None, ssl_error: str | None, name: str, url: str,
                role: ServerRole | None) -> PeerFacts:
    if client is None:
        return PeerFacts(name, url, False, error=ssl_error, role=role)
    health = await client.health(url)
    if health.status is None:
        return PeerFacts(name, url, False, error=health.error, role=role)
    report = await client.local(url)
    generation = report.generation if report is not None else None
    if not health.ok:
        return PeerFacts(name, url, False, error=f"health check answered {health.status}", generation=generation,
                         role=role)
    return PeerFacts(name, url, True, generation=generation, role=role)


async def gather_peers(settings: Settings, servers: Sequence[Any]) -> tuple[PeerFacts, ...]:
    """Every registered server but this one: its health check over HTTPS verified with the cluster
    CA, and the generation it reports at /api/v1/ha/local."""
    others = [(s.name, s.url, _role(s.role)) for s in servers if str(s.id) != settings.server.id and s.url]
    if not others:
        return ()
    client: PeerClient | None = None
    ssl_error = None
    try:
        client = PeerClient.for_settings(settings)
    except (OSError, ssl.SSLError) as exc:
        ssl_error = f"cannot load the cluster CA {settings.path(settings.http.tls_ca)}: {_error_text(exc)}"
    try:
        return tuple(await asyncio.gather(*(_peer(client, ssl_error, n, u, r) for n, u, r in others)))
    finally:
        if client is not None:
            await client.aclose()


async def gather(settings: Settings, *, engine: AsyncEngine | None = None) -> Facts:
    from safehold.ha.cycle import data_age

    role = settings.server.role
    readonly = role == ServerRole.READONLY
    key = await asyncio.to_thread(_key_facts, settings)
    db_error: str | None = None
    db = _DbFacts()
    try:
        db = await read_database(settings, engine)
    except Exception as exc:  # noqa: BLE001 - reported as failed checks
        db_error = _error_text(exc)
    spool = settings.data_dir / names.SPOOL_DIR
    spool_path = spool if readonly or spool.exists() else None
    spool_error = await asyncio.to_thread(probe_spool, spool) if spool_path is not None else None
    disks = [_disk("data", settings.data_dir)]
    if settings.database.mode == "bundled":
        disks.append(_disk("database", settings.pg_data_dir))
    replica = None
    if readonly:
        age = data_age(db.replica, dt.datetime.now(dt.UTC)) if db.replica is not None else None
        replica = ReplicaFacts(view=db.replica, data_age=age, error=db.replica_error)
    peers = await gather_peers(settings, db.servers)
    inputs, failover_error = (None, None)
    if readonly and db_error is None and not engine_managed(settings):
        inputs, failover_error = await probe_failover_inputs(settings, db.failover)
    return Facts(role=role, key=key, db_error=db_error, db_key_check=db.key_check, generation=db.generation,
                 spool_path=spool_path, spool_error=spool_error, disks=tuple(disks), replica=replica,
                 lag_threshold_seconds=settings.ha.lag_threshold_seconds,
                 lag_threshold_bytes=settings.ha.lag_threshold_bytes, peers=peers, registry_read=db_error is None,
                 data_dir=settings.data_dir, engine_managed=engine_managed(settings), failover_inputs=inputs,
                 failover_error=failover_error)


async def probe_failover_inputs(settings: Settings, stored: dict[str, Any] | None
                                ) -> tuple[tuple[InputState, ...] | None, str | None]:
    """Probe the gateway and witnesses of the failover policy in force (``stored``, else the settings file's)
    now, once each, as the failover watch does (a witness that cannot be pinged counts as unreachable, the
    gateway as unknown); None when automatic failover is off.  The second value: why the policy cannot
    be read."""
    try:
        policy = FailoverSection.model_validate(stored) if stored is not None else settings.ha.failover
    except ValidationError:
        return None, "the stored policy is not valid (set it again with 'safehold ha failover')"
    if not policy.enabled:
        return None, None
    try:
        witnesses = [parse_target(t) for t in policy.witness_targets]
        gateway = parse_target(policy.gateway) if policy.gateway else None
    except ValueError as exc:
        return None, str(exc)
    if gateway is None:
        found = await asyncio.to_thread(default_gateway)
        gateway = Target(found) if found else None
    targets = [*witnesses, *([gateway] if gateway else [])]
    timeout = min(settings.ha.peer_timeout, policy.ping_interval)

    async def reach(t: Target) -> bool | None:
        try:
            return await target_reachable_async(t, timeout)
        except OSError:
            return False

    results = await asyncio.gather(*(reach(t) for t in targets))
    out = [InputState(InputKind.WITNESS, str(t), bool(r)) for t, r in zip(witnesses, results, strict=False)]
    if gateway is not None:
        out.append(InputState(InputKind.GATEWAY, str(gateway), results[-1]))
    return tuple(out), None


async def run_checks(settings: Settings, *, engine: AsyncEngine | None = None) -> list[Check]:
    """Every readiness check of this server (``engine``: the running server's, else one of its own)."""
    return evaluate(await gather(settings, engine=engine))


@dataclass(frozen=True)
class Readiness:
    """What the HA dashboard shows of this server's readiness: the checks, whether it is in emergency mode,
    and (then) how to make it take over."""

    checks: list[Check]
    emergency: bool
    advice: Advice | None


async def readiness(settings: Settings, *, engine: AsyncEngine | None = None) -> Readiness:
    f = await gather(settings, engine=engine)
    return Readiness(evaluate(f), emergency(f), promote_advice(f))
