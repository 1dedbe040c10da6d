"""A running server's context: configuration, database engine, keys, audit writer.

Built once per process by :func:`open_runtime` (no work at import time) and
passed to the services and the web layer.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from safehold import __version__, names
from safehold.audit import emergency
from safehold.audit.chain import GENESIS, AuditEvent
from safehold.audit.gate import SinkGate
from safehold.audit.spool import AuditSpool
from safehold.audit.writer import AuditWriter
from safehold.config import Settings
from safehold.crypto.envelope import Keyring, new_data_key
from safehold.crypto.keyfile import MasterKey
from safehold.domain import AuditResult, ServerMode, ServerRole
from safehold.errors import AuditUnavailable, DatabaseError, InvalidInput, KeyFileError, Unavailable
from safehold.metrics import Metrics
from safehold.runtime.local_state import FILE as LOCAL_STATE_FILE
from safehold.runtime.local_state import LocalState
from safehold.runtime.shared import SharedCounter
from safehold.runtime.writelease import Confirmation, WriteLease, clock
from safehold.storage import audit as audit_store
from safehold.storage import cluster as cluster_store
from safehold.storage import servers as server_store
from safehold.storage.db import (
    AsyncConnection,
    AsyncEngine,
    DataError,
    IntegrityError,
    SQLAlchemyError,
    app_target,
    driver_reason,
    make_engine,
    ping,
)

log = logging.getLogger(__name__)

DATA = "data"
AUDIT = "audit"


@dataclass(frozen=True)
class ServerIdentity:
    id: str
    name: str
    role: ServerRole


@dataclass(frozen=True)
class Keys:
    keyring: Keyring
    audit_key: bytes

    def __repr__(self) -> str:
        return f"Keys({self.keyring!r})"


def wrap_label(purpose: str, version: int) -> str:
    return f"safehold:{purpose}:{version}"


def unwrap_keys(master: MasterKey, rows: list[cluster_store.WrappedKey]) -> Keys:
    data = {r.version: master.unwrap(r.wrapped, wrap_label(r.purpose, r.version)) for r in rows if r.purpose == DATA}
    active = [r.version for r in rows if r.purpose == DATA and r.active]
    audit = [master.unwrap(r.wrapped, wrap_label(AUDIT, r.version)) for r in rows if r.purpose == AUDIT and r.active]
    if not data or not active or not audit:
        raise DatabaseError("the database has no usable keyring; was it initialised by 'safehold init'?")
    return Keys(Keyring(data, active[0]), audit[0])


async def check_key(conn: AsyncConnection, master: MasterKey) -> cluster_store.ClusterRow:
    row = await cluster_store.get(conn)
    if row is None:
        raise DatabaseError(
            "the database holds no Safehold cluster", hint="run 'safehold init' to create one"
        )
    if row.key_check != master.check_value:
        raise KeyFileError(
            f"the key file does not match this database (key id {master.key_id})",
            hint="use the key file created by 'safehold init' for this cluster",
        )
    return row


async def bootstrap_cluster(conn: AsyncConnection, master: MasterKey) -> str:
    """Create the cluster row and the first data and audit keys; returns the cluster id."""
    cluster_id = str(uuid.uuid4())
    await cluster_store.create(conn, cluster_id, master.check_value)
    await cluster_store.add_key(conn, DATA, 1, master.wrap(new_data_key(), wrap_label(DATA, 1)), active=True)
    await cluster_store.add_key(conn, AUDIT, 1, master.wrap(new_data_key(), wrap_label(AUDIT, 1)), active=True)
    return cluster_id


@contextmanager
def _database_errors() -> Iterator[None]:
    """Constraint violations go to the caller (they mean a conflict); a value the database refuses is
    bad input; anything else means the database is unavailable."""
    try:
        yield
    except IntegrityError:
        raise
    except DataError:
        raise InvalidInput("the database refused a value of this request") from None
    except SQLAlchemyError as exc:
        global _said_at
        if time.monotonic() - _said_at > 10:  # once in a while during an outage, not once per request
            _said_at = time.monotonic()
            log.warning("a database call failed: %s", driver_reason(exc))
        raise DatabaseError("the database is unavailable; try again in a moment") from None


_said_at = -1e9




@dataclass(frozen=True)
class Fence:
    """Why this server must not write: a newer primary took over the cluster (a higher generation)."""

    generation: int            # the acting primary's
    acting_primary_id: str
    acting_primary_name: str
    acting_primary_url: str

    def message(self) -> str:
        if not self.acting_primary_url:
            return ("this server was fenced: its database was set read-only because another server took over the "
                    "cluster, and no peer answers to say which; it refuses every change until an operator rejoins "
                    "it ('safehold ha rejoin --from URL-OF-THE-ACTING-PRIMARY')")
        return (f"this server was superseded: {self.acting_primary_name} ({self.acting_primary_url}) is the "
                f"acting primary since generation {self.generation}; this server refuses every change until "
                f"an operator rejoins it ('safehold ha rejoin --from {self.acting_primary_url}')")


@dataclass
class Runtime:
    settings: Settings
    engine: AsyncEngine
    keys: Keys
    identity: ServerIdentity
    cluster_id: str
    metrics: Metrics = field(default_factory=Metrics)
    audit: AuditWriter | None = None
    started_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    # set on a read-only server: its local audit spool (its replica cannot be written)
    spool: AuditSpool | None = None
    # sessions, failed logins and TOTP steps of a server that cannot write its database (shared by its workers)
    local: LocalState = field(init=False, repr=False)
    # the cluster generation this server's database holds (promotion raises it)
    generation: int = 1
    # set when a newer primary exists: no write is accepted (see services.fencing)
    fence: Fence | None = None
    # the key requests between this cluster's servers are signed with (never the master key)
    peer_key: bytes = field(default=b"", repr=False)
    # a primary or secondary in a cluster: how long it may acknowledge writes without confirming that it
    # is still the writer (see ha.writelease); None: no lease needed (standalone, read-only, fenced)
    lease: WriteLease | None = None
    # asks the peers now and renews (or fences); set by the HA agent, used when a write finds the lease
    # expired (after a stall)
    confirm_writer: Callable[[], Awaitable[None]] | None = field(default=None, repr=False)
    # authentication's short-lived cache (services.auth): a token's hash -> (monotonic time of the read,
    # principals_seen() before the read, row)
    principals: dict[bytes, tuple[float, int, Any]] = field(default_factory=dict, repr=False)
    # whether a fail-closed audit sink refuses audited actions now (audit.gate: its state, read once a second)
    sink_gate: SinkGate = field(default_factory=SinkGate, repr=False)

    def principals_seen(self) -> int:
        """How many times any process of this server forgot the principals (a value to compare, no more)."""
        return self._principal_changes.value()

    def forget_principals(self) -> None:
        """A token was revoked or a user changed: every process of this server reads every token's principal
        afresh (other servers within the cache's short life, see services.auth.PRINCIPAL_TTL)."""
        self.principals.clear()
        self._principal_changes.bump()

    def __post_init__(self) -> None:
        self._principal_changes = SharedCounter(self.settings.data_dir / "run" / "principals")
        self.local = LocalState(self.settings.data_dir / LOCAL_STATE_FILE)
        self._autocommit = self.engine.execution_options(isolation_level="AUTOCOMMIT")
        self._confirming = asyncio.Lock()
        self._hosts = len(app_target(self.settings).hosts()) if self.settings.database.mode == "external" else 1

    @property
    def readonly(self) -> bool:
        """Whether this server must not write its database: a read-only server (a replica) or a
        fenced one (superseded by a newer primary)."""
        return self.identity.role == ServerRole.READONLY or self.fence is not None

    @property
    def mode(self) -> ServerMode:
        if self.fence is not None:
            return ServerMode.FENCED
        return ServerMode.READ_ONLY_EMERGENCY if self.identity.role == ServerRole.READONLY else ServerMode.READ_WRITE

    @property
    def keyring(self) -> Keyring:
        return self.keys.keyring

    @asynccontextmanager
    async def read(self, *, limit: float | None = None) -> AsyncIterator[AsyncConnection]:
        """A connection in autocommit: each statement sees the newest committed data, without the
        BEGIN/ROLLBACK round trips of a transaction.  ``limit``: a longer bound than the operation timeout,
        for a call that is long by nature (a whole vault's export or import)."""
        with _database_errors():
            async with self._bounded(limit), self._autocommit.connect() as conn:
                yield conn

    @asynccontextmanager
    async def _bounded(self, longer: float | None = None) -> AsyncIterator[None]:
        """No database call waits longer than ``database.operation_timeout``: a database that stopped
        answering (a frozen host keeps its connections open) gets a 503, and every pooled connection is
        dropped, so that the next ones are made afresh (to the engine's new primary, after a failover).
        A call that opens a connection may first wait ``connect_timeout`` on every host of the URL before
        the one that answers: the limit is never shorter than that, or a frozen first host would fail
        every call."""
        db = self.settings.database
        limit = max(db.operation_timeout, db.connect_timeout * self._hosts + 1, longer or 0)
        timer = asyncio.timeout(limit)
        try:
            async with timer:
                yield
        except TimeoutError:
            if not timer.expired():
                raise  # not this bound's: something inside timed out on its own
            log.warning("the database did not answer within %g s: the connection pool is replaced", limit)
            await self.engine.dispose(close=False)
            raise DatabaseError(f"the database did not answer within {limit:g} s; try again in a moment") from None

    async def database_answers(self) -> bool:
        """Whether this server's database answers a query now."""
        try:
            async with self.read() as conn:
                await ping(conn)
        except DatabaseError:
            return False
        return True

    @asynccontextmanager
    async def write(self, *, limit: float | None = None) -> AsyncIterator[AsyncConnection]:
        """A transaction; commit on success (``limit``: as for :meth:`read`).  A read-only or fenced server refuses at once, and so does a
        writer whose lease ran out and cannot be confirmed — checked again immediately before COMMIT, so a
        request that began before a stall and would commit after it is refused too."""
        if self.fence is not None:
            raise FencedMode(self.fence)
        if self.readonly:
            raise ReadOnlyMode()
        await self.ensure_writer()
        with _database_errors():
            async with self._bounded(limit), self.engine.begin() as conn:
                yield conn
                await self.ensure_writer()

    async def ensure_writer(self) -> None:
        """Return only if this server may acknowledge a write now: not fenced, and its write lease holds
        (after a stall: confirmed with a peer first).  Raises FencedMode or WriterUnconfirmed."""
        if self.fence is not None:
            raise FencedMode(self.fence)
        lease = self.lease
        if lease is None or lease.valid(clock()):
            return
        async with self._confirming:  # one confirmation at a time; the writers queued behind it reuse it
            if self.lease is not None and not self.lease.valid(clock()) and self.confirm_writer is not None:
                await self.confirm_writer()
        if self.fence is not None:
            raise FencedMode(self.fence)
        if self.lease is not None and not self.lease.valid(clock()):
            raise WriterUnconfirmed(self.lease.describe(clock()))

    def renew_lease(self, started: float, confirmation: Confirmation) -> None:
        if self.lease is not None:
            self.lease = self.lease.renew(started, confirmation)

    def begin_lease(self) -> None:
        """This server just became a writer of its cluster by its own act (promoted, or made the primary by
        'ha pack' / 'ha add-secondary'): its generation is the newest, so its lease starts confirmed."""
        self.lease = WriteLease(self.settings.ha.write_lease).renew(clock(), Confirmation.CONFIRMED)

    async def append_audit(self, conn: AsyncConnection, *events: AuditEvent, gated: bool = True) -> None:
        """Audit inside the caller's write transaction (the change and its record commit together).  ``gated``:
        refused while a fail-closed audit sink cannot take records (audit.gate); False: the caller checked."""
        if gated:
            await self.sink_gate.check(self.settings.audit, conn, events)
        await audit_store.append(conn, self.keys.audit_key, self.identity.id, self.identity.role, events)
        self.metrics.audit_records.inc(len(events))

    async def record_audit(self, event: AuditEvent) -> None:
        """Audit on its own (group commit, or the local spool on a read-only server); raises
        AuditUnavailable if it cannot be written."""
        await self.sink_gate.check(self.settings.audit, self.read, (event,))  # fail closed on an audit sink
        if self.spool is not None:
            await asyncio.to_thread(self.spool.append, event)
            self.metrics.audit_records.inc()
            return
        if self.audit is None:
            async with self.write() as conn:
                await self.append_audit(conn, event, gated=False)
            return
        try:
            await self.audit.record(event)
        except AuditUnavailable:
            self.metrics.audit_failures.inc()
            raise

    async def _commit_batch(self, events: list[AuditEvent]) -> None:
        await self.ensure_writer()
        async with self._bounded(), self.engine.begin() as conn:
            await self.append_audit(conn, *events, gated=False)  # record_audit checked the sinks
            await self.ensure_writer()  # a superseded primary's records would be lost at its rejoin
        self.metrics.audit_batches.inc()

    def start_background(self) -> None:
        if not self.readonly and self.audit is None:
            self.audit = AuditWriter(self._commit_batch)  # type: ignore[arg-type]
            self.audit.start()

    def _open_spool(self, head: tuple[int, bytes]) -> AuditSpool:
        return open_spool(self.settings, self.keys.audit_key, self.identity, head)

    async def become_fenced(self, fence: Fence) -> None:
        """Stop writing at once: later audit records go to the local spool (shipped once rejoined).
        Idempotent: the fence may already have been set by a write that found it out."""
        first = self.fence is None or self.audit is not None or self.spool is None
        self.fence = fence
        self.lease = None
        if not first:
            return
        if self.audit is not None:
            writer, self.audit = self.audit, None
            await writer.stop()
        if self.spool is None:
            async with self.read() as conn:
                head = await audit_store.head(conn, self.identity.id) or (0, GENESIS)
            self.spool = self._open_spool(head)
        log.error("FENCED: %s", fence.message())

    async def become_primary(self, settings: Settings, generation: int) -> int:
        """A read-only server whose replica was promoted takes over: its spool is replayed into its own
        (now writable) database, audit goes through the group commit again, it is the primary.
        Returns how many spooled records were replayed."""
        from safehold.audit.spool import ship

        replayed = 0
        if self.spool is not None:  # closed first: no other worker of this server appends to it any more
            await asyncio.to_thread(self.spool.close)
            replayed = await ship(self.spool, emergency.shipper(self.engine))  # its periods' events too
        self.settings = settings
        self.identity = ServerIdentity(self.identity.id, settings.server.name, ServerRole.PRIMARY)
        self.generation = generation
        self.fence = None
        self.begin_lease()
        self.spool = None
        self.local.clear()
        self.start_background()
        self.metrics.info.labels(self.identity.id, self.identity.name, self.identity.role.value, __version__).set(1)
        log.warning("this server is now the acting primary (generation %d); %d spooled audit record(s) "
                    "replayed into its database", generation, replayed)
        return replayed

    async def become_readonly(self, settings: Settings) -> None:
        """A primary whose database became a replica of the acting primary (switchover, rejoin)."""
        if self.audit is not None:
            writer, self.audit = self.audit, None
            await writer.stop()
        self.settings = settings
        self.identity = ServerIdentity(self.identity.id, settings.server.name, ServerRole.READONLY)
        self.fence = None
        self.lease = None
        if self.spool is None:
            async with self.read() as conn:
                head = await audit_store.head(conn, self.identity.id) or (0, GENESIS)
            self.spool = self._open_spool(head)
        log.warning("this server is now a read-only server of the acting primary")

    async def close(self) -> None:
        if self.audit is not None:
            await self.audit.stop()
        await self.engine.dispose()


class StartupFencing(Protocol):
    """How a primary or secondary finds out, before it writes anything, whether a newer primary superseded it
    (the HA layer's fencing, handed in by whoever opens the runtime: the runtime knows nothing of peers)."""

    async def check(self, settings: Settings, cluster_id: str, generation: int,
                    peer_urls: Sequence[str]) -> tuple[Fence | None, Confirmation]:
        """The fence, if a peer (or this server's memory of an earlier fence) says it was superseded; and
        whether the peers confirm its generation (its write lease)."""
        ...

    async def remember(self, settings: Settings, fence: Fence) -> None:
        """Keep the fence across restarts and make the database refuse writes too."""
        ...


async def open_runtime(settings: Settings, master: MasterKey, *, register: bool = True,
                       fencing: StartupFencing | None = None) -> Runtime:
    """Connect, check the key file against the database, unwrap the keys.  ``register``: this is the serving
    process (it registers and holds the write lease); a command's runtime checks the fence only.  Without
    ``fencing`` no peer is asked (a server that was never in a cluster, ``safehold init``): only a database
    that fencing set read-only fences it."""
    serving = register
    engine = make_engine(app_target(settings), pool_size=settings.database.pool_size,
                         connect_timeout=settings.database.connect_timeout)
    try:
        try:
            async with engine.begin() as conn:
                row = await check_key(conn, master)
                keys = unwrap_keys(master, await cluster_store.keys(conn))
                identity = ServerIdentity(settings.server.id, settings.server.name, settings.server.role)
                spool = None
                fence = None
                lease = None
                if in_cluster(settings) and identity.role != ServerRole.READONLY and not engine_managed(settings):
                    # before this server writes anything: was it superseded by a newer primary?
                    started = clock()
                    peers = [r.url for r in await server_store.all_servers(conn) if r.id != identity.id and r.url]
                    fence, confirmation = (await fencing.check(settings, row.cluster_id, row.generation, peers)
                                           if fencing is not None else (None, Confirmation.CONFIRMED))
                    fence = fence or await _read_only_fence(conn, row.generation)
                    # a writer starts with a lease only when a peer confirmed it (or it has none): after a
                    # restart it may have been away long enough for a standby to take over
                    lease = WriteLease(settings.ha.write_lease).renew(started, confirmation)
                if fence is not None or identity.role == ServerRole.READONLY:
                    # a fenced server cannot write; a read-only one's replica cannot be written (the others
                    # check it over HTTPS)
                    register = False
                    spool = open_spool(settings, keys.audit_key, identity,
                                       await audit_store.head(conn, identity.id) or (0, GENESIS))
                if register:
                    await server_store.register(
                        conn, id=identity.id, name=identity.name, role=identity.role,
                        hostname=socket.gethostname(), url=public_url(settings),
                        port=settings.http.port, version=__version__,
                    )
        except SQLAlchemyError as exc:
            raise DatabaseError(
                f"cannot connect to the database at {app_target(settings).where()} ({driver_reason(exc)})",
                hint="is the database running? 'safehold db status --data-dir ...' tells",
            ) from None
    except BaseException:
        await engine.dispose()
        raise
    rt = Runtime(settings=settings, engine=engine, keys=keys, identity=identity, cluster_id=row.cluster_id,
                 spool=spool, generation=row.generation, fence=fence, peer_key=master.peer_key(),
                 lease=lease if fence is None and serving else None)
    if fence is not None:
        log.error("FENCED at start-up: %s", fence.message())
        if fencing is not None:
            await fencing.remember(settings, fence)
    elif serving and lease is not None and not lease.valid(clock()):
        log.warning("no peer of the cluster answered at start-up: changes are refused until one confirms "
                    "this server's generation ('safehold ha override-lease' if no other server took over)")
    if register:
        await ship_leftover_spool(rt)
    rt.metrics.info.labels(identity.id, identity.name, identity.role.value, __version__).set(1)
    return rt


async def _read_only_fence(conn: AsyncConnection, generation: int) -> Fence | None:
    """A database that fencing set read-only (``default_transaction_read_only``) while no peer and no fence
    file says by whom: the server comes up fenced all the same, and never writes it."""
    if not await cluster_store.database_read_only(conn):
        return None
    return Fence(generation, "", "", "")


class FencedMode(Unavailable):
    code = "fenced"

    def __init__(self, fence: Fence) -> None:
        super().__init__(fence.message(),
                         hint=f"make the change on {fence.acting_primary_url}; an operator rejoins this server "
                              "with 'safehold ha rejoin'")


class WriterUnconfirmed(Unavailable):
    code = "writer_unconfirmed"

    def __init__(self, why: str) -> None:
        super().__init__(f"this server cannot confirm that it is still the cluster's writer ({why}); "
                         "changes are refused until a peer of the cluster answers",
                         hint="check that the other servers of the cluster are up and reachable; if you are sure "
                              "no other server took over, 'safehold ha override-lease --data-dir DIR' on this host "
                              "lets it write again")


class ReadOnlyMode(Unavailable):
    code = "read_only"

    def __init__(self) -> None:
        super().__init__("read-only emergency mode: this server serves passwords from its replica while "
                         "the primary and secondary servers are down; changes are not possible here",
                         hint="try again on the primary or a secondary server when it is back")


def in_cluster(settings: Settings) -> bool:
    return bool(settings.ha.cluster_id) and settings.server.role != ServerRole.STANDALONE


def engine_managed(settings: Settings) -> bool:
    """Whether the database's availability is another engine's (Patroni, CloudNativePG, a cloud service):
    it owns failover, so Safehold never promotes, fences, rewinds or reconfigures the database, and its app
    servers need no write lease (the engine lets one database accept writes; every app server writes it)."""
    return settings.database.mode == "external"


def public_url(settings: Settings) -> str:
    if settings.http.public_url:
        return settings.http.public_url
    host = settings.http.listen if settings.http.listen not in ("0.0.0.0", "::") else socket.gethostname()
    return f"https://{host}:{settings.http.port}"


def open_spool(settings: Settings, audit_key: bytes, identity: ServerIdentity, head: tuple[int, bytes]) -> AuditSpool:
    """The spool of a server that cannot write its database now (read-only, or fenced), open for appends."""
    return AuditSpool(settings.data_dir / names.SPOOL_DIR, audit_key, identity.id, identity.role, head=head,
                      reopen=True)


def system_event(action: str, *, detail: dict[str, object] | None = None) -> AuditEvent:
    return AuditEvent(actor="system", action=action, result=AuditResult.SUCCESS, target_type="server",
                      detail=dict(detail or {}))


async def ship_leftover_spool(rt: Runtime) -> int:
    """A primary or secondary that starts with audit records still pending in its spool (it was a read-only
    or fenced server and was stopped before they were shipped; then 'safehold ha promote' ran while it was
    stopped, or it was stopped in the middle of a promotion) ships them into its database before its audit
    writer starts, so new records never take their sequence numbers.  If they cannot be shipped (a record
    the database holds differently, a damaged spool, the database gone) the server does not start: the
    runtime is closed and the error says why.  Returns how many records were shipped."""
    from safehold.audit.spool import RECORDS, ship
    from safehold.errors import SafeholdError

    directory = rt.settings.data_dir / names.SPOOL_DIR
    if rt.readonly or not (directory / RECORDS).is_file():
        return 0
    try:
        async with rt.read() as conn:
            head = await audit_store.head(conn, rt.identity.id) or (0, GENESIS)
        spool = AuditSpool(directory, rt.keys.audit_key, rt.identity.id, rt.identity.role, head=head)
        if not spool.backlog().pending:
            return 0
        try:
            shipped = await ship(spool, emergency.shipper(rt.engine))
        except SQLAlchemyError as exc:
            raise DatabaseError(f"the audit records left in {directory} could not be shipped into the database "
                                f"({type(exc).__name__})") from None
        except OSError as exc:
            raise SafeholdError(f"the audit spool {directory} cannot be updated ({exc.strerror})") from None
    except BaseException:
        await rt.close()
        raise
    log.warning("shipped %d audit record(s) left in the spool %s into the database before starting",
                shipped, directory)
    return shipped
