"""A running server's context: configuration, database engine, keys, audit writer.

Built once per process by :func:`open_runtime` (no work at import time) and
passed to the services and the web layer.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field

from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from safehold import __version__
from safehold.audit.chain import GENESIS, AuditEvent
from safehold.audit.spool import AuditSpool
from safehold.audit.writer import AuditWriter
from safehold.config import Settings
from safehold.crypto.envelope import Keyring, new_data_key
from safehold.crypto.keyfile import MasterKey
from safehold.domain import AuditResult, ServerRole
from safehold.errors import AuditUnavailable, DatabaseError, InvalidInput, KeyFileError, Unavailable
from safehold.metrics import Metrics
from safehold.services.local_state import LocalState
from safehold.storage import audit as audit_store
from safehold.storage import cluster as cluster_store
from safehold.storage import servers as server_store
from safehold.storage.db import app_target, make_engine

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
        raise DatabaseError(f"database unavailable ({type(exc).__name__})") from None


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
    local: LocalState = field(default_factory=LocalState)

    def __post_init__(self) -> None:
        self._autocommit = self.engine.execution_options(isolation_level="AUTOCOMMIT")

    @property
    def readonly(self) -> bool:
        return self.identity.role == ServerRole.READONLY

    @property
    def keyring(self) -> Keyring:
        return self.keys.keyring

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A connection in autocommit: each statement sees the newest committed data, without the
        BEGIN/ROLLBACK round trips of a transaction."""
        with _database_errors():
            async with self._autocommit.connect() as conn:
                yield conn

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A transaction; commit on success.  A read-only server refuses at once."""
        if self.readonly:
            raise ReadOnlyMode()
        with _database_errors():
            async with self.engine.begin() as conn:
                yield conn

    async def append_audit(self, conn: AsyncConnection, *events: AuditEvent) -> None:
        """Audit inside the caller's write transaction (the change and its record commit together)."""
        await audit_store.append(conn, self.keys.audit_key, self.identity.id, self.identity.role, events)
        self.metrics.audit_records.inc(len(events))

    async def record_audit(self, event: AuditEvent) -> None:
        """Audit on its own (group commit, or the local spool on a read-only server); raises
        AuditUnavailable if it cannot be written."""
        if self.spool is not None:
            await asyncio.to_thread(self.spool.append, event)
            self.metrics.audit_records.inc()
            return
        if self.audit is None:
            async with self.write() as conn:
                await self.append_audit(conn, event)
            return
        try:
            await self.audit.record(event)
        except AuditUnavailable:
            self.metrics.audit_failures.inc()
            raise

    async def _commit_batch(self, events: list[AuditEvent]) -> None:
        async with self.engine.begin() as conn:
            await self.append_audit(conn, *events)
        self.metrics.audit_batches.inc()

    def start_background(self) -> None:
        if not self.readonly:
            self.audit = AuditWriter(self._commit_batch)  # type: ignore[arg-type]
            self.audit.start()

    async def close(self) -> None:
        if self.audit is not None:
            await self.audit.stop()
        await self.engine.dispose()


async def open_runtime(settings: Settings, master: MasterKey, *, register: bool = True) -> Runtime:
    """Connect, check the key file against the database, unwrap the keys."""
    engine = make_engine(app_target(settings), pool_size=settings.database.pool_size)
    try:
        try:
            async with engine.begin() as conn:
                row = await check_key(conn, master)
                keys = unwrap_keys(master, await cluster_store.keys(conn))
                identity = ServerIdentity(settings.server.id, settings.server.name, settings.server.role)
                spool = None
                if identity.role == ServerRole.READONLY:
                    register = False  # its replica cannot be written; the others check it over HTTPS
                    spool = AuditSpool(settings.data_dir / "spool", keys.audit_key, identity.id, identity.role,
                                       head=await audit_store.head(conn, identity.id) or (0, GENESIS))
                if register:
                    await server_store.register(
                        conn, id=identity.id, name=identity.name, role=identity.role,
                        hostname=socket.gethostname(), url=public_url(settings),
                        port=settings.http.port, version=__version__,
                    )
        except SQLAlchemyError as exc:
            raise DatabaseError(
                f"cannot connect to the database at {settings.database.host}:{settings.database.port} "
                f"({type(exc).__name__})",
                hint="is the database running? 'safehold db status --data-dir ...' tells",
            ) from None
    except BaseException:
        await engine.dispose()
        raise
    rt = Runtime(settings=settings, engine=engine, keys=keys, identity=identity, cluster_id=row.cluster_id,
                 spool=spool)
    rt.metrics.info.labels(identity.id, identity.name, identity.role.value, __version__).set(1)
    return rt


class ReadOnlyMode(Unavailable):
    code = "read_only"

    def __init__(self) -> None:
        super().__init__("read-only emergency mode: this server serves passwords from its replica while "
                         "the primary and secondary servers are down; changes are not possible here",
                         hint="try again on the primary or a secondary server when it is back")


def public_url(settings: Settings) -> str:
    if settings.http.public_url:
        return settings.http.public_url
    host = settings.http.listen if settings.http.listen not in ("0.0.0.0", "::") else socket.gethostname()
    return f"https://{host}:{settings.http.port}"


def system_event(action: str, *, detail: dict[str, object] | None = None) -> AuditEvent:
    return AuditEvent(actor="system", action=action, result=AuditResult.SUCCESS, target_type="server",
                      detail=dict(detail or {}))
