"""A secondary server: a full read/write app server on the primary's database.

On the primary, :func:`add_secondary` gives the new server a database login of
its own, lets it in through ``pg_hba.conf``, issues its HTTPS certificate from
the cluster CA and seals all of that in one setup file (never the master key).
On the secondary's host, :func:`join_secondary` checks the file, the key file
and the primary database, and only then writes the new data directory.

Both are all-or-nothing: a refusal or a failure leaves no role, no pg_hba line,
no setup file and no data directory behind.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import secrets
import shutil
import socket
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from psycopg import sql

from safehold.config import (
    CONFIG_NAME,
    DatabaseSection,
    HaSection,
    HttpSection,
    SecuritySection,
    ServerSection,
    Settings,
    load_settings,
    write_settings,
)
from safehold.crypto.certs import make_server_cert
from safehold.crypto.keyfile import MasterKey, load_key_file
from safehold.domain import ServerRole
from safehold.errors import ConfigError, DatabaseError, KeyFileError, SafeholdError
from safehold.ha.ca import cluster_ca_key
from safehold.ha.setupfile import (
    Manifest,
    SetupFileError,
    add_bytes,
    payload,
    read_setup_file,
    scratch_dir,
    write_setup_file,
)
from safehold.pg import PgManager, conf
from safehold.storage import admin
from safehold.storage import cluster as cluster_store
from safehold.storage.db import DbTarget, owner_target

Say = Callable[[str], None]

KIND = "secondary"
CA_CERT, SERVER_CERT, SERVER_KEY, DB_PASSWORD = "ca.crt", "server.crt", "server.key", "db_password"
PAYLOAD = (CA_CERT, SERVER_CERT, SERVER_KEY, DB_PASSWORD)
_MANIFEST_FIELDS = ("server_id", "host", "db_host", "db_port", "db_name", "db_user")


def _quiet(_: str) -> None:
    pass


# --- on the primary -------------------------------------------------------------------


@dataclass(frozen=True)
class AddedSecondary:
    server_id: str
    db_role: str
    out: Path
    hba_lines: tuple[str, ...]
    cluster_id: str


def login_role_name(server_id: str) -> str:
    """The database login of a secondary: ``app_`` and the first 12 hex digits of its id."""
    return "app_" + uuid.UUID(server_id).hex[:12]


def host_addresses(host: str) -> list[str]:
    """The IP addresses of HOST (itself if it is one); refuses a name that does not resolve."""
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        raise ConfigError(f"cannot resolve the secondary's host {host!r} ({exc})",
                          hint="give its IP address with --host, as the primary database sees it") from None
    return list(dict.fromkeys(str(ipaddress.ip_address(str(info[4][0]).split("%")[0])) for info in infos))


def hba_lines_for(dbname: str, role: str, addresses: list[str]) -> list[str]:
    lines = []
    for address in addresses:
        ip = ipaddress.ip_address(address)
        prefix = 32 if ip.version == 4 else 128
        lines.append(conf.validate_hba_line(
            f"hostssl {conf.check_role_name(dbname)} {conf.check_role_name(role)} {ip}/{prefix} scram-sha-256"))
    return lines


def add_secondary(
    settings: Settings, master: MasterKey, pg: PgManager, *, host: str, out: Path, passphrase: str,
    db_host: str | None = None, name: str | None = None, say: Say = _quiet,
) -> AddedSecondary:
    """Prepare a secondary server for HOST and write its setup file to ``out``; ``name`` is the
    display name it gets unless 'ha join --name' says otherwise.

    ``settings`` are the primary's; its bundled database must be running (``pg``).  On
    success the primary's own settings say ``role = primary`` and name the cluster."""
    if settings.server.role not in (ServerRole.STANDALONE, ServerRole.PRIMARY):
        raise ConfigError(f"this server is a {settings.server.role} server; run 'ha add-secondary' on the primary")
    if settings.database.mode != "bundled":
        raise ConfigError("'ha add-secondary' needs the primary's bundled database "
                          f"(database.mode is {settings.database.mode!r})",
                          hint="with an external database, point the new server's database.url at it")
    out = out.resolve()
    if out.exists() or out.with_name(out.name + ".part").exists():
        raise ConfigError(f"{out} exists; Safehold does not overwrite a setup file",
                          hint="remove it or choose another --out")
    if not out.parent.is_dir():
        raise ConfigError(f"the directory {out.parent} does not exist")
    ca_cert_path = settings.path(settings.http.tls_ca)
    ca_key_pem = cluster_ca_key(settings, master)
    addresses = host_addresses(host)
    db_host = db_host or conf.connect_host(settings.database.host)
    _warn_about_reach(settings, host, addresses, db_host, say)

    cluster_id = asyncio.run(_cluster_id(settings, master))
    if settings.ha.cluster_id not in (None, cluster_id):
        raise ConfigError(f"this server's settings name cluster {settings.ha.cluster_id}, but its database "
                          f"holds cluster {cluster_id}; refusing to mix them")
    server_id = str(uuid.uuid4())
    role = login_role_name(server_id)
    password = secrets.token_urlsafe(32)
    dbname = settings.database.name
    lines = hba_lines_for(dbname, role, addresses)
    superuser = owner_target(settings, dbname="postgres")

    with _undo_on_failure(say) as undo:
        say(f"creating the database login {role} for the secondary")
        create_login(superuser, role, password, like=settings.database.user)
        undo.append(lambda: drop_login(superuser, role))
        say(f"allowing {role} from {', '.join(addresses)} in pg_hba.conf")
        added = pg.add_hba_lines(lines)
        undo.append(lambda: pg.remove_hba_lines(added))

        ca_pem = ca_cert_path.read_bytes()
        say(f"issuing the secondary's HTTPS certificate for {host}")
        cert_pem, key_pem = make_server_cert(ca_pem, ca_key_pem,
                                             [host, *addresses, "localhost", "127.0.0.1"])
        manifest = Manifest(
            kind=KIND, cluster_id=cluster_id, key_check=master.check_value.hex(), key_id=master.key_id,
            created_at=_now(), fields={
                "server_id": server_id, "host": host, "db_host": db_host,
                "db_port": settings.database.port, "db_name": dbname, "db_user": role,
                "primary_server_id": settings.server.id, **({"name": name[:100]} if name else {}),
            })
        part = out.with_name(out.name + ".part")
        undo.append(lambda: _remove(part, out))
        say(f"writing the setup file {out}")
        with write_setup_file(out, passphrase, manifest) as tar:
            for name, data in ((CA_CERT, ca_pem), (SERVER_CERT, cert_pem), (SERVER_KEY, key_pem),
                               (DB_PASSWORD, password.encode())):
                add_bytes(tar, name, data)
        _become_primary(settings, cluster_id)
    return AddedSecondary(server_id, role, out, tuple(lines), cluster_id)


def _warn_about_reach(settings: Settings, host: str, addresses: list[str], db_host: str, say: Say) -> None:
    """Say what would keep a secondary on another host from reaching the primary database."""
    remote = not all(ipaddress.ip_address(a).is_loopback for a in addresses)
    listen = conf.connect_host(settings.database.host)
    if remote and _is_loopback(listen):
        say(f"warning: the primary database listens on {settings.database.host} only; a secondary on {host} "
            "cannot reach it until database.host is an address it can reach")
    if remote and _is_loopback(db_host):
        say(f"warning: the setup file tells {host} to reach the primary database at {db_host}; "
            "give the primary's address with --db-host")
    names = _cert_names(settings.path(settings.http.tls_cert))
    if names is not None and db_host not in names:
        say(f"warning: the primary database's certificate is not valid for {db_host} "
            f"(it names {', '.join(sorted(names))}); the secondary will refuse the connection")


def _is_loopback(text: str) -> bool:
    return _is_ip(text) and ipaddress.ip_address(text).is_loopback


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _cert_names(path: Path) -> set[str] | None:
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return None
    return {*san.get_values_for_type(x509.DNSName), *(str(ip) for ip in san.get_values_for_type(x509.IPAddress))}


async def _cluster_id(settings: Settings, master: MasterKey) -> str:
    from sqlalchemy.exc import SQLAlchemyError

    from safehold.storage.db import app_target, make_engine

    engine = make_engine(app_target(settings), pool_size=1)
    try:
        async with engine.connect() as conn:
            row = await cluster_store.get(conn)
    except SQLAlchemyError as exc:
        raise DatabaseError(f"cannot read the cluster identity from the database ({type(exc).__name__})") from None
    finally:
        await engine.dispose()
    if row is None:
        raise DatabaseError("the database holds no Safehold cluster", hint="run 'safehold init' first")
    if row.key_check != master.check_value:
        raise KeyFileError(f"the key file does not match this database (key id {master.key_id})")
    return row.cluster_id


def _become_primary(settings: Settings, cluster_id: str) -> None:
    """Record in safehold.toml (as written, without environment overrides) that this server is the
    primary of ``cluster_id``; a running server takes the role at its next start."""
    stored = load_settings(settings.data_dir, env={})
    server = stored.server
    if server.role == ServerRole.STANDALONE:
        server = server.model_copy(update={"role": ServerRole.PRIMARY})
    write_settings(stored.model_copy(update={
        "server": server, "ha": stored.ha.model_copy(update={"cluster_id": cluster_id})}))


@contextmanager
def _undo_on_failure(say: Say) -> Iterator[list[Callable[[], object]]]:
    """Collect undo steps; on any failure run them newest first, then re-raise."""
    steps: list[Callable[[], object]] = []
    try:
        yield steps
    except BaseException:
        if steps:
            say("failed; undoing what was done")
        for step in reversed(steps):
            try:
                step()
            except (SafeholdError, OSError) as exc:
                say(f"could not undo a step: {exc}")
        raise


def _remove(*paths: Path) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def _now() -> str:
    import datetime as dt

    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


# These belong in storage.admin (they are cluster-level administration as the superuser);
# they live here until that module grows them.

def create_login(superuser: DbTarget, role: str, password: str, *, like: str) -> None:
    """A new LOGIN role holding exactly the privileges of the app login ``like``: it is made a
    member of it (INHERIT), so whatever migrations grant to (or revoke from) the app login later
    applies to this login too; it gets no privilege of its own."""
    admin._check_name("role", role)
    with admin._connect(superuser) as conn:
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
            raise DatabaseError(f"the database role {role} exists already")
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN INHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE "
                             "NOREPLICATION NOBYPASSRLS").format(sql.Identifier(role)))
        try:
            admin._set_password(conn, role, password)
            conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(like), sql.Identifier(role)))
        except BaseException:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
            raise


def drop_login(superuser: DbTarget, role: str) -> None:
    """Drop a secondary's login, ending its sessions first."""
    admin._check_name("role", role)
    with admin._connect(superuser) as conn:
        conn.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(sql.Identifier(role)))
        conn.execute("SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
                     "WHERE usename = %s AND pid <> pg_backend_pid()", (role,))
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


# --- on the secondary -------------------------------------------------------------------


@dataclass(frozen=True)
class _SetupContent:
    manifest: Manifest
    files: dict[str, bytes]

    def field(self, name: str) -> Any:
        return self.manifest.fields[name]


def join_secondary(
    setup_file: Path, passphrase: str, *, data_dir: Path, key_file: Path, port: int | None = None,
    name: str | None = None, say: Say = _quiet,
) -> Settings:
    """Configure DATA_DIR as a secondary server from a setup file written by 'ha add-secondary'
    (its display name: ``name``, else the one the primary gave, else this host's name).

    Everything is checked before anything is written: the whole file (passphrase, integrity,
    kind), the key file against it, and the primary database (reachable with the file's login,
    holding the same cluster and key check).  DATA_DIR must be new or empty (it may hold the
    key file alone).  On any refusal nothing on disk changes."""
    data_dir = data_dir.resolve()
    key_file = key_file.resolve()
    _check_target(data_dir, key_file)
    try:
        master = load_key_file(key_file)
    except KeyFileError as exc:
        raise KeyFileError(exc.message, hint=exc.hint if key_file.exists() else
                           "copy the master key file of the primary to this host and pass it with --key-file") from None
    near = _existing_ancestor(data_dir.parent)
    with scratch_dir(near) as scratch:
        say(f"reading {setup_file}")
        content = _read(setup_file, passphrase)
        content.manifest.check_key(master)
        _check_certificates(content.files)
        staged = Path(scratch) / "data"
        staged.mkdir(mode=0o700)
        settings = _secondary_settings(content, staged, data_dir, key_file, port, name)
        _stage(staged, settings, content)
        say(f"checking the primary database at {settings.database.host}:{settings.database.port}")
        asyncio.run(_check_primary_database(settings, content.manifest, master))
        _install(staged, data_dir)
    final = settings.model_copy(update={"data_dir": data_dir})
    say(f"configured {data_dir} as secondary server {final.server.id}")
    return final


def _check_target(data_dir: Path, key_file: Path) -> None:
    if data_dir.exists() and not data_dir.is_dir():
        raise ConfigError(f"{data_dir} exists and is not a directory")
    if data_dir.is_dir():
        others = [p for p in data_dir.iterdir() if p != key_file]
        if others:
            what = ("already a Safehold data directory" if (data_dir / CONFIG_NAME).exists()
                    else "not empty")
            raise ConfigError(f"{data_dir} is {what}; 'ha join' needs a new or empty directory "
                              "(it may hold the key file alone)")


def _existing_ancestor(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path


def _read(setup_file: Path, passphrase: str) -> _SetupContent:
    with read_setup_file(setup_file, passphrase) as (manifest, tar):
        if manifest.kind != KIND:
            raise SetupFileError(f"{setup_file} is a {manifest.kind} setup pack, not a secondary's setup file")
        files: dict[str, bytes] = {}
        for member, stream in payload(tar):
            if member not in PAYLOAD or member in files:
                raise SetupFileError(f"unexpected member {member!r} in {setup_file}")
            files[member] = stream.read()
    missing = [m for m in PAYLOAD if m not in files]
    if missing:
        raise SetupFileError(f"{setup_file} is incomplete (no {', '.join(missing)})")
    absent = [f for f in _MANIFEST_FIELDS if f not in manifest.fields]
    if absent:
        raise SetupFileError(f"{setup_file} is incomplete (its manifest has no {', '.join(absent)})")
    try:
        uuid.UUID(str(manifest.fields["server_id"]))
        uuid.UUID(manifest.cluster_id)
        int(manifest.fields["db_port"])
    except ValueError:
        raise SetupFileError(f"{setup_file} has a malformed manifest") from None
    if not files[DB_PASSWORD].strip():
        raise SetupFileError(f"{setup_file} holds an empty database password")
    return _SetupContent(manifest, files)


def _check_certificates(files: dict[str, bytes]) -> None:
    try:
        ca = x509.load_pem_x509_certificate(files[CA_CERT])
        cert = x509.load_pem_x509_certificate(files[SERVER_CERT])
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError) as exc:
        raise SetupFileError(f"the certificates in the setup file do not belong together ({exc})") from None
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_private_key(files[SERVER_KEY], password=None)
    except (ValueError, TypeError):
        raise SetupFileError("the setup file's private key is damaged") from None
    if key.public_key() != cert.public_key():
        raise SetupFileError("the setup file's private key does not match its certificate")


def _secondary_settings(content: _SetupContent, staged: Path, data_dir: Path, key_file: Path,
                        port: int | None, name: str | None) -> Settings:
    host = str(content.field("host"))
    loopback = _is_loopback(host)
    http_port = port or HttpSection().port
    shown = f"[{host}]" if ":" in host else host
    key_path = key_file.relative_to(data_dir) if key_file.is_relative_to(data_dir) else key_file
    return Settings(
        server=ServerSection(id=str(content.field("server_id")),
                             name=(name or content.manifest.fields.get("name") or socket.gethostname())[:100],
                             role=ServerRole.SECONDARY),
        http=HttpSection(listen=host if loopback else "0.0.0.0", port=http_port,  # noqa: S104 - a remote host
                         public_url=f"https://{shown}:{http_port}"),
        database=DatabaseSection(mode="remote", host=str(content.field("db_host")),
                                 port=int(content.field("db_port")), name=str(content.field("db_name")),
                                 user=str(content.field("db_user"))),
        security=SecuritySection(key_file=key_path),
        ha=HaSection(cluster_id=content.manifest.cluster_id),
        data_dir=staged,
    )


def _write_private(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _stage(staged: Path, settings: Settings, content: _SetupContent) -> None:
    files = content.files
    _write_private(settings.path(settings.http.tls_ca), files[CA_CERT], 0o644)
    _write_private(settings.path(settings.http.tls_cert), files[SERVER_CERT], 0o644)
    _write_private(settings.path(settings.http.tls_key), files[SERVER_KEY], 0o600)
    _write_private(settings.path(settings.database.password_file), files[DB_PASSWORD].strip() + b"\n", 0o600)
    write_settings(settings)


async def _check_primary_database(settings: Settings, manifest: Manifest, master: MasterKey) -> None:
    from sqlalchemy.exc import SQLAlchemyError

    from safehold.storage.db import app_target, make_engine

    db = settings.database
    engine = make_engine(app_target(settings), pool_size=1)
    try:
        async with engine.connect() as conn:
            row = await cluster_store.get(conn)
    except SQLAlchemyError as exc:
        cause = str(getattr(exc, "orig", None) or type(exc).__name__).strip().splitlines()
        raise DatabaseError(f"cannot reach the primary database at {db.host}:{db.port} as {db.user} "
                            f"({cause[-1] if cause else type(exc).__name__})",
                            hint="is the primary's database running and reachable from this host, "
                                 "and was this setup file made for it?") from None
    finally:
        await engine.dispose()
    if row is None:
        raise DatabaseError(f"the database at {db.host}:{db.port} holds no Safehold cluster")
    if row.cluster_id != manifest.cluster_id:
        raise SetupFileError(f"the setup file is for cluster {manifest.cluster_id}, but the database at "
                             f"{db.host}:{db.port} holds cluster {row.cluster_id}; refusing to join",
                             hint="make a new setup file with 'safehold ha add-secondary' on the primary")
    if row.key_check != master.check_value:
        raise KeyFileError(f"the key file (key id {master.key_id}) does not match the primary database",
                           hint="copy the master key file of the primary to this host and pass it with --key-file")


def _install(staged: Path, data_dir: Path) -> None:
    """Move the staged directory into place: a rename when DATA_DIR is new, else its entries one by
    one into the empty DATA_DIR (taken back if one fails)."""
    if not data_dir.exists():
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        staged.rename(data_dir)
        return
    moved: list[Path] = []
    try:
        for entry in sorted(staged.iterdir()):
            target = data_dir / entry.name
            if target.exists():
                raise ConfigError(f"{target} appeared while joining; leaving {data_dir} as it was")
            entry.rename(target)
            moved.append(target)
    except BaseException:
        for target in moved:
            if target.is_dir():
                shutil.rmtree(target, ignore_errors=True)
            else:
                target.unlink(missing_ok=True)
        raise
