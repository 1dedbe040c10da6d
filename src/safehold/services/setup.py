"""``safehold init``: a new server with its key file, certificates, database and first administrator."""

from __future__ import annotations

import asyncio
import secrets
import shutil
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from safehold.config import (
    DatabaseSection,
    HttpSection,
    SecuritySection,
    ServerSection,
    Settings,
    write_settings,
)
from safehold.crypto.certs import write_tls_bundle
from safehold.crypto.keyfile import MasterKey, create_key_file, load_key_file
from safehold.domain import UserRole
from safehold.errors import ConfigError, SafeholdError
from safehold.runtime import bootstrap_cluster, database, open_runtime
from safehold.services.users import Actor, create_user
from safehold.storage import admin
from safehold.storage.db import app_target, make_engine, owner_target

Say = Callable[[str], None]


@dataclass(frozen=True)
class InitOptions:
    data_dir: Path
    port: int = 8443
    listen: str = "127.0.0.1"
    name: str | None = None
    db_port: int | None = None
    database_url: str | None = None
    key_file: Path | None = None
    admin_username: str = "admin"
    admin_password: str | None = None
    hostnames: tuple[str, ...] = ()
    bin_dir: Path | None = None


@dataclass(frozen=True)
class InitResult:
    settings: Settings
    admin_username: str
    admin_password: str | None  # set only when it was generated (print it once)
    key_file: Path
    key_created: bool


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _write_secret(path: Path, value: str) -> None:
    """A private file (0600), written whole through a new file and renamed: a link planted at ``path`` is
    replaced, never followed."""
    from safehold.pg.runas import write_file

    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_file(path, (value + "\n").encode(), mode=0o600, owner=None)


def initialise(opts: InitOptions, say: Say = lambda _: None) -> InitResult:
    data_dir = opts.data_dir.resolve()
    if (data_dir / "safehold.toml").exists():
        raise ConfigError(f"{data_dir} is already a Safehold data directory",
                          hint="use 'safehold serve --data-dir ...' to start it")
    was_empty = not data_dir.exists() or not any(data_dir.iterdir())
    if not was_empty:
        raise ConfigError(f"{data_dir} is not empty; 'safehold init' needs an empty or new directory")
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        return _initialise(opts, data_dir, say)
    except BaseException:
        say("init failed; removing what it created")
        _undo(data_dir)
        raise


def _undo(data_dir: Path) -> None:
    try:
        settings = Settings(server=ServerSection(id=str(uuid.uuid4()), name="x"), data_dir=data_dir)
        pg = database.manager(settings)
        if pg.status().running:
            pg.stop()
    except (SafeholdError, OSError):
        pass
    for child in data_dir.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def _initialise(opts: InitOptions, data_dir: Path, say: Say) -> InitResult:
    hostname = socket.gethostname()
    external = opts.database_url is not None
    settings = Settings(
        server=ServerSection(id=str(uuid.uuid4()), name=(opts.name or hostname)[:100]),
        http=HttpSection(listen=opts.listen, port=opts.port),
        database=DatabaseSection(
            mode="external" if external else "bundled", url=opts.database_url,
            port=opts.db_port or free_port(), bin_dir=opts.bin_dir,
        ),
        security=SecuritySection(key_file=opts.key_file or Path("safehold.key")),
        data_dir=data_dir,
    )
    key_path = settings.key_file
    if key_path.exists():
        say(f"using the existing key file {key_path}")
        master, key_created = load_key_file(key_path), False
    else:
        say(f"creating the master key file {key_path} (mode 0600; keep a copy offline)")
        master, key_created = create_key_file(key_path), True

    names = [hostname, "localhost", "127.0.0.1", "::1", *opts.hostnames]
    if opts.listen not in ("0.0.0.0", "::", "127.0.0.1"):
        names.append(opts.listen)
    say("creating the TLS certificates")
    write_tls_bundle(data_dir / "tls", names, cluster_name=settings.server.name)

    if not external:
        _write_secret(settings.path(settings.database.password_file), secrets.token_urlsafe(32))
        _write_secret(settings.path(settings.database.superuser_password_file), secrets.token_urlsafe(32))
        pg = database.manager(settings)
        say(f"initialising the bundled PostgreSQL {pg.binaries.major} in {settings.pg_data_dir}")
        pg.initdb(settings.read_secret(settings.database.superuser_password_file))
        say(f"starting PostgreSQL on {settings.database.host}:{settings.database.port}")
        pg.start()
        try:
            pg.wait_ready()
            su = owner_target(settings, dbname="postgres")
            admin.create_app_database(su, settings.database.name, settings.database.user,
                                      settings.read_secret(settings.database.password_file))
            say("creating the schema")
            database.migrate(settings)
            result = asyncio.run(_bootstrap(settings, master, opts))
        finally:
            pg.stop()
    else:
        say("creating the schema in the external database")
        database.migrate(settings)
        result = asyncio.run(_bootstrap(settings, master, opts))
    write_settings(settings)
    admin_password = None if opts.admin_password else result
    return InitResult(settings, opts.admin_username, admin_password, key_path, key_created)


async def _bootstrap(settings: Settings, master: MasterKey, opts: InitOptions) -> str:
    engine = make_engine(app_target(settings), pool_size=1)
    try:
        async with engine.begin() as conn:
            from safehold.storage import cluster

            if await cluster.get(conn) is not None:
                raise ConfigError("the database already holds a Safehold cluster",
                                  hint="to add this server to it: safehold join --database-url URL --key-file "
                                       "THE-CLUSTER'S-KEY-FILE --data-dir DIR; for a new cluster, point "
                                       "--database-url at an empty database")
            await bootstrap_cluster(conn, master)
            from safehold.ha.ca import ca_key_path, store_ca_key

            await store_ca_key(conn, master, ca_key_path(settings).read_bytes(),
                               settings.path(settings.http.tls_ca).read_bytes())
    finally:
        await engine.dispose()
    password = opts.admin_password or _generate_admin_password()
    rt = await open_runtime(settings, master)
    try:
        await create_user(rt, Actor("init"), username=opts.admin_username, password=password,
                          role=UserRole.ADMINISTRATOR, full_name="Safehold administrator")
    finally:
        await rt.close()
    return password


def _generate_admin_password() -> str:
    from safehold.services.passwords import PasswordPolicy, generate

    return generate(PasswordPolicy(length=24, symbols=False, exclude_ambiguous=True))
