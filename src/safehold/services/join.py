"""``safehold join``: one more Safehold server on a cluster whose database an HA engine already runs.

With the database's URL and the cluster's key file — nothing else travels — the new server checks the key
against the database, takes the cluster's identity and CA certificate from it, issues itself a certificate
signed by the cluster CA (the CA key, wrapped by the master key, is in the database's keyring), and writes
its settings.  An app server (every one of them reads and writes) registers itself when it starts; a
read-only server (its URL leads to a replica, which cannot be written) is registered now through the
writable database, so that the app servers see it from the start.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from safehold import __version__
from safehold.config import (
    DatabaseSection,
    HaSection,
    HttpSection,
    SecuritySection,
    ServerSection,
    Settings,
    write_settings,
)
from safehold.crypto.certs import make_server_cert
from safehold.crypto.keyfile import MasterKey, load_key_file
from safehold.domain import ServerRole
from safehold.errors import ConfigError, DatabaseError
from safehold.files import write_private
from safehold.ha.ca import kept_ca
from safehold.runtime import check_key, public_url
from safehold.storage import dburl
from safehold.storage import servers as server_store
from safehold.storage.db import (
    DB_ERRORS,
    DbTarget,
    app_target,
    driver_reason,
    make_engine,
    primary_target,
)

Say = Callable[[str], None]


@dataclass(frozen=True)
class JoinOptions:
    data_dir: Path
    database_url: str
    key_file: Path
    name: str | None = None
    listen: str = "127.0.0.1"
    port: int = 8443
    hostnames: tuple[str, ...] = ()
    readonly: bool = False
    primary_url: str | None = None  # a read-only server: where the writable database is (default: the URL, read-write)


@dataclass(frozen=True)
class Joined:
    settings: Settings
    cluster_id: str
    role: ServerRole


@dataclass(frozen=True)
class _Cluster:
    cluster_id: str
    ca_cert: bytes
    ca_key: bytes


def join(opts: JoinOptions, say: Say = lambda _: None) -> Joined:
    data_dir = opts.data_dir.resolve()
    if data_dir.exists() and any(data_dir.iterdir()):
        raise ConfigError(f"{data_dir} is not empty; 'safehold join' needs an empty or new directory")
    for url in (opts.database_url, opts.primary_url):
        if url is not None:
            dburl.conninfo(url)  # a clear error now, before anything is written
    if opts.primary_url is not None and not opts.readonly:
        raise ConfigError("--primary-url is for a read-only server (--readonly): an app server's URL leads to the "
                          "writable database itself")
    master = load_key_file(opts.key_file)
    role = ServerRole.READONLY if opts.readonly else ServerRole.SECONDARY
    settings = Settings(
        server=ServerSection(id=str(uuid.uuid4()), name=(opts.name or socket.gethostname())[:100], role=role),
        http=HttpSection(listen=opts.listen, port=opts.port),
        database=DatabaseSection(mode="external", url=opts.database_url, primary_url=opts.primary_url),
        security=SecuritySection(key_file=opts.key_file.resolve()),
        data_dir=data_dir,
    )
    say(f"reading the cluster from the database at {app_target(settings).where()}")
    found = asyncio.run(_read_cluster(app_target(settings), master))
    settings = settings.model_copy(update={"ha": HaSection(cluster_id=found.cluster_id)})
    created = not data_dir.exists()
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        say("issuing this server's certificate from the cluster CA")
        names = [socket.gethostname(), "localhost", "127.0.0.1", "::1", *opts.hostnames]
        if opts.listen not in ("0.0.0.0", "::", "127.0.0.1"):  # noqa: S104 - compared, not bound
            names.append(opts.listen)
        cert, key = make_server_cert(found.ca_cert, found.ca_key, list(dict.fromkeys(names)))
        write_private(settings.path(settings.http.tls_ca), found.ca_cert, 0o644)
        write_private(settings.path(settings.http.tls_cert), cert, 0o644)
        write_private(settings.path(settings.http.tls_key), key)
        if opts.readonly:
            say(f"registering this read-only server through the writable database at "
                f"{primary_target(settings).where()}")
            asyncio.run(_register_readonly(settings))
        write_settings(settings)
    except BaseException:
        if created:
            shutil.rmtree(data_dir, ignore_errors=True)
        else:
            for child in data_dir.iterdir():
                shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)
        raise
    return Joined(settings, found.cluster_id, role)


async def _read_cluster(target: DbTarget, master: MasterKey) -> _Cluster:
    engine = make_engine(target, pool_size=1, connect_timeout=10)
    try:
        async with engine.connect() as conn:
            row = await check_key(conn, master)
            ca = await kept_ca(conn, master)
    except DB_ERRORS as exc:
        raise DatabaseError(f"cannot read the cluster from the database at {target.where()} "
                            f"({driver_reason(exc)})",
                            hint="is the URL right, and does the database hold a Safehold cluster "
                                 "('safehold init --database-url' makes one)?") from None
    finally:
        await engine.dispose()
    if ca is None:
        raise ConfigError("the database does not hold the cluster CA yet (it was made by an older Safehold)",
                          hint="start the first server of the cluster ('safehold serve') once with this version, "
                               "then join again")
    return _Cluster(row.cluster_id, *ca)


async def _register_readonly(settings: Settings) -> None:
    engine = make_engine(primary_target(settings), pool_size=1, connect_timeout=10)
    try:
        async with engine.begin() as conn:
            await server_store.register(conn, id=settings.server.id, name=settings.server.name,
                                        role=ServerRole.READONLY, hostname=socket.gethostname(),
                                        url=public_url(settings), port=settings.http.port, version=__version__)
    except DB_ERRORS as exc:
        raise DatabaseError(f"cannot register this server through the writable database "
                            f"({driver_reason(exc)})",
                            hint="give the writable database with --primary-url") from None
    finally:
        await engine.dispose()
