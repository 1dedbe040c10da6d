"""Read-only servers: the setup pack the primary writes for one, and joining with it.

``create_pack`` runs on the primary while it keeps serving.  It makes a
replication role and a physical slot of the new server's own, lets that role
stream WAL (a ``hostssl replication`` line for the read-only host, and one
for the primary's own loopback address so it can back itself up), takes an
online base backup through the slot and seals everything the new server needs
into one setup pack (:mod:`safehold.ha.setupfile`)::

    manifest.json          kind "readonly": cluster id, key check, the primary
                           database's address, role, slot and the new server's id
    ca.crt                 the cluster CA (trust; never its key)
    server.crt, server.key the read-only server's own certificate, for HOST
    replication_password   its replication role's password
    db_password            the app login's password (it reads its replica and
                           ships its audit spool to the primary as that role)
    db_superuser_password  the database superuser's (once promoted, the server
                           administers its copy of the cluster)
    base.tar, pg_wal.tar   the base backup

Never the master key: the joining host brings its own copy, checked against
the manifest.  If anything fails midway, what was made (slot, role, hba lines,
the partial file) is removed again.

``join_readonly`` runs on the new host: it reads and checks the *whole* pack
before it changes anything, then writes the data directory, installs the
replica (a hot standby streaming over TLS verify-full against the pinned CA)
and checks that it streams.  It leaves the replica stopped: ``safehold serve``
starts it (and stops it again when it ends).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import ipaddress
import os
import secrets
import shutil
import socket
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from cryptography import x509
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection

from safehold import __version__
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
from safehold.crypto.certs import fingerprint, make_server_cert
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
from safehold.pg.errors import PgError
from safehold.storage import admin, replication
from safehold.storage import cluster as cluster_store
from safehold.storage import servers as server_store
from safehold.storage.db import DbTarget, app_target, make_engine, owner_target

Say = Callable[[str], None]
#: Called with (phase, bytes done, bytes expected) while a pack is written; phase is
#: "backup" (pg_basebackup copying the primary) or "seal" (encrypting into the pack).
PackProgress = Callable[[str, int, int], None]

KIND = "readonly"
CA_CERT, SERVER_CERT, SERVER_KEY = "ca.crt", "server.crt", "server.key"
REPLICATION_PASSWORD, DB_PASSWORD = "replication_password", "db_password"
# the database superuser's password: the replica is a copy of the primary's cluster, and once promoted
# (failover, switchover) this server administers it (replication roles and slots of its own replicas)
DB_SUPERUSER_PASSWORD = "db_superuser_password"
SMALL_MEMBERS = (CA_CERT, SERVER_CERT, SERVER_KEY, REPLICATION_PASSWORD, DB_PASSWORD, DB_SUPERUSER_PASSWORD)
LARGE_MEMBERS = (conf.BASE_TAR, conf.WAL_TAR)
_SMALL_LIMIT = 1 << 20
_MANIFEST_FIELDS: dict[str, type] = {
    "server_id": str, "server_name": str, "readonly_host": str, "primary_db_host": str,
    "primary_db_port": int, "replication_role": str, "slot": str, "application_name": str,
    "db_name": str, "db_user": str, "db_superuser": str,
}
DEFAULT_HTTP_PORT = 8443
STREAM_TIMEOUT = 60.0


def _no_say(_: str) -> None:
    pass


# --- addresses ---------------------------------------------------------------------------------------


def resolve_addresses(host: str) -> list[str]:
    """The IP addresses of `host` (itself when it is one), for pg_hba.conf lines.

    A DNS name that does not resolve is refused: the primary must know which
    address the read-only server connects from."""
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise ConfigError(f"cannot resolve {host!r} to an IP address",
                          hint="give the read-only server's IP address as the primary's database sees it, "
                               "or a DNS name that resolves on the primary") from None
    addresses = list(dict.fromkeys(str(ipaddress.ip_address(str(i[4][0]).split("%")[0])) for i in infos))
    if not addresses:
        raise ConfigError(f"{host!r} resolves to no IP address")
    return addresses


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _cert_names(pem: bytes) -> set[str]:
    cert = x509.load_pem_x509_certificate(pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {*san.get_values_for_type(x509.DNSName),
            *(str(ip) for ip in san.get_values_for_type(x509.IPAddress))}


def _dns_name(host: str) -> str:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host
    return ""


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _bindable(host: str) -> bool:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, 0))
        except OSError:
            return False
    return True


def _wait_replication_allowed(host: str, port: int, role: str, password: str, ca: Path,
                              timeout: float = 15) -> None:
    """Poll until the reloaded pg_hba.conf lets `role` open a replication connection (a reload is
    asynchronous: pg_ctl returns once the signal is sent)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(host=host, port=port, user=role, password=password, replication="true",
                                 dbname="replication", sslmode="verify-full", sslrootcert=str(ca),
                                 connect_timeout=5):
                return
        except psycopg.OperationalError as exc:
            said = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if "no pg_hba.conf entry" not in said or time.monotonic() > deadline:
                raise DatabaseError(f"the replication role {role} cannot connect to {host}:{port} ({said})") from None
        time.sleep(0.1)


# --- the pack -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PackResult:
    out: Path
    size: int
    cluster_id: str
    server_id: str
    server_name: str
    readonly_host: str
    replication_role: str
    slot: str
    primary_db_host: str
    primary_db_port: int


async def _with_connection(target: DbTarget, fn: Callable[[AsyncConnection], Any], *, write: bool = False) -> Any:
    engine = make_engine(target, pool_size=1)
    try:
        async with (engine.begin() if write else engine.connect()) as conn:
            return await fn(conn)
    finally:
        await engine.dispose()


def _cluster_row(settings: Settings, master: MasterKey) -> cluster_store.ClusterRow:
    row = asyncio.run(_with_connection(app_target(settings), cluster_store.get))
    if row is None:
        raise DatabaseError("the database holds no Safehold cluster", hint="run 'safehold init' first")
    if row.key_check != master.check_value:
        raise KeyFileError(f"the key file does not match this database (key id {master.key_id})",
                           hint="use the key file created by 'safehold init' for this cluster")
    return row


def _add_file(tar: tarfile.TarFile, name: str, path: Path, on_bytes: Callable[[int], None]) -> None:
    """Stream a (large) file into the pack, reporting the bytes sealed."""
    info = tarfile.TarInfo(name)
    info.size, info.mode = path.stat().st_size, 0o600
    with open(path, "rb") as src:

        class Counting:
            def read(self, n: int = -1) -> bytes:
                data = src.read(n)
                on_bytes(len(data))
                return data

        tar.addfile(info, Counting())  # type: ignore[arg-type]


#: What the base backup holds that the read-only server must not get: the primary's TLS private key
#: (its HTTPS key too) and its server logs.  The standby gets its own key; it drops the logs anyway.
_PRIMARY_ONLY_FILES = (conf.SERVER_KEY,)
_PRIMARY_ONLY_DIRS = (conf.LOG_DIR,)


def _without_primary_secrets(src: Path, dst: Path) -> Path:
    """A copy of pg_basebackup's base.tar without the primary's private key and logs."""
    try:
        with tarfile.open(src, "r:") as tin, tarfile.open(dst, "x:", format=tin.format) as tout:
            for member in tin:
                rel = conf.archive_member_path(member.name) or ""
                top = rel.split("/")[0]
                if rel in _PRIMARY_ONLY_FILES or (top in _PRIMARY_ONLY_DIRS and rel != top):
                    continue
                tout.addfile(member, tin.extractfile(member) if member.isfile() else None)
    except (OSError, tarfile.TarError) as exc:
        raise PgError(f"cannot read the base backup {src}: {exc}") from None
    return dst


@dataclass(frozen=True)
class _Plan:
    """What a pack will make, decided (and checked) before anything is made."""

    out: Path
    readonly_host: str
    addresses: list[str]  # the read-only server's, as the primary's database sees it
    local_host: str  # where this process reaches the primary's database (and backs it up from)
    primary_host: str  # where the read-only server reaches it
    ca_path: Path
    ca_pem: bytes
    ca_key_pem: bytes
    server_id: str
    server_name: str  # in the registry until it joins
    name_given: bool
    role: str
    slot: str
    hba: list[str]


def _plan(settings: Settings, *, readonly_host: str, out: Path, name: str | None,
          primary_db_host: str | None) -> _Plan:
    if settings.server.role not in (ServerRole.STANDALONE, ServerRole.PRIMARY):
        raise ConfigError(f"this server is a {settings.server.role} server; "
                          "run 'safehold ha pack' on the primary")
    if settings.database.mode != "bundled":
        raise ConfigError("'safehold ha pack' needs the bundled database: a read-only server replicates it",
                          hint="with an external PostgreSQL, make its replicas with that database's own tools")
    out = out.expanduser().resolve()
    if out.exists():
        raise ConfigError(f"{out} already exists; choose another --out (a setup pack is never overwritten)")
    if not out.parent.is_dir():
        raise ConfigError(f"the directory of {out} does not exist")
    readonly_host = readonly_host.strip()
    addresses = resolve_addresses(readonly_host)
    db = settings.database
    local_host = conf.connect_host(db.host)
    primary_host = primary_db_host or local_host
    if _is_loopback(primary_host) and not all(ipaddress.ip_address(a).is_loopback for a in addresses):
        raise ConfigError(f"this primary's database listens on {primary_host} only; the read-only server at "
                          f"{readonly_host} could not reach it",
                          hint="set database.host to an address the read-only host can reach (then restart), "
                               "or give it with --db-host")
    ca_path = settings.path(settings.http.tls_ca)
    try:
        ca_pem = ca_path.read_bytes()
        primary_names = _cert_names(settings.path(settings.http.tls_cert).read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot read the cluster CA or certificate: {exc.filename}: {exc.strerror}",
                          hint="'safehold ha pack' runs on the primary, which holds the cluster CA") from None
    if primary_host not in primary_names:
        raise ConfigError(f"the primary database's certificate does not name {primary_host}: the read-only "
                          "server verifies it (verify-full) and would refuse it",
                          hint=f"use one of its names with --db-host: {', '.join(sorted(primary_names))}")
    server_id = str(uuid.uuid4())
    short = server_id.replace("-", "")[:12]
    role = f"repl_{short}"
    streaming_from = dict.fromkeys([*addresses, *resolve_addresses(local_host)])
    hba = [conf.replication_hba_line(role, a) for a in streaming_from]
    # the read-only server ships its audit spool to the primary database as the app login
    hba += [conf.validate_hba_line(f"hostssl {db.name} {db.user} {a}/{32 if ipaddress.ip_address(a).version == 4 else 128} "
                                   "scram-sha-256")
            for a in addresses if not ipaddress.ip_address(a).is_loopback]
    return _Plan(out=out, readonly_host=readonly_host, addresses=addresses, local_host=local_host,
                 primary_host=primary_host, ca_path=ca_path, ca_pem=ca_pem, ca_key_pem=b"",
                 server_id=server_id, server_name=(name or readonly_host)[:100], name_given=bool(name), role=role,
                 slot=f"ro_{short}", hba=hba)


def create_pack(settings: Settings, master: MasterKey, pg: PgManager, *, readonly_host: str, out: Path,
                passphrase: str, name: str | None = None, primary_db_host: str | None = None,
                say: Say = _no_say, progress: PackProgress | None = None) -> PackResult:
    """Write a setup pack for a new read-only server at `out`, from this primary (running at `pg`).

    The server keeps serving meanwhile; its role becomes ``primary`` in its settings (effective at its
    next start).  On any failure the slot, role and hba lines made here are removed and no file is left.
    """
    if not passphrase:
        raise ConfigError("the passphrase of the pack must not be empty")
    plan = _plan(settings, readonly_host=readonly_host, out=out, name=name, primary_db_host=primary_db_host)
    plan = dataclasses.replace(plan, ca_key_pem=cluster_ca_key(settings, master))
    cluster = _cluster_row(settings, master)
    db = settings.database
    su = owner_target(settings, dbname="postgres")
    repl_password = secrets.token_urlsafe(32)
    made: dict[str, Any] = {}
    try:
        say(f"creating the replication role {plan.role} and the slot {plan.slot}")
        admin.create_replication_role(su, plan.role, repl_password)
        made["role"] = plan.role
        if not admin.create_slot(su, plan.slot):
            raise DatabaseError(f"a replication slot {plan.slot} exists already; try again")
        made["slot"] = plan.slot
        say(f"allowing {plan.role} to stream from {', '.join(plan.addresses)}")
        made["hba"] = pg.add_hba_lines(plan.hba)
        _wait_replication_allowed(plan.local_host, db.port, plan.role, repl_password, plan.ca_path)
        admin.grant_monitoring(su, db.user)
        cert_pem = _backup_and_seal(settings, master, pg, plan, cluster.cluster_id, repl_password, passphrase,
                                    say, progress)
        # listed (inactive) from now on; its URL and port are filled in when it joins
        asyncio.run(_with_connection(app_target(settings), lambda conn: server_store.register(
            conn, id=plan.server_id, name=plan.server_name, role=ServerRole.READONLY.value,
            hostname=plan.readonly_host, dns_name=_dns_name(plan.readonly_host), url="", port=0,
            cert_fingerprint=fingerprint(cert_pem)), write=True))
        _record_primary(settings, cluster.cluster_id)
    except BaseException:
        say("the pack failed; removing what it made")
        for path in (plan.out.with_name(plan.out.name + ".part"), plan.out):
            path.unlink(missing_ok=True)
        _undo_pack(su, pg, made.get("role"), made.get("slot"), made.get("hba", []))
        raise
    return PackResult(out=plan.out, size=plan.out.stat().st_size, cluster_id=cluster.cluster_id,
                      server_id=plan.server_id, server_name=plan.server_name, readonly_host=plan.readonly_host,
                      replication_role=plan.role, slot=plan.slot, primary_db_host=plan.primary_host,
                      primary_db_port=db.port)


def _backup_and_seal(settings: Settings, master: MasterKey, pg: PgManager, plan: _Plan, cluster_id: str,
                     repl_password: str, passphrase: str, say: Say, progress: PackProgress | None) -> bytes:
    """Take the base backup through the new slot and seal it with everything else into the pack;
    returns the read-only server's new certificate."""
    db = settings.database
    with tempfile.TemporaryDirectory(prefix=".safehold-pack-", dir=settings.data_dir) as scratch:
        say("taking an online base backup (the server keeps serving)")
        backup = pg.base_backup(
            Path(scratch) / "backup", host=plan.local_host, port=db.port, user=plan.role, password=repl_password,
            slot=plan.slot, sslrootcert=plan.ca_path,
            progress=(lambda d, t: progress("backup", d, t)) if progress is not None else None,
        )
        say(f"base backup done (WAL {backup.start_lsn} to {backup.end_lsn})")
        base_tar = _without_primary_secrets(backup.base_tar, Path(scratch) / conf.BASE_TAR)
        cert_pem, key_pem = make_server_cert(plan.ca_pem, plan.ca_key_pem,
                                             [plan.readonly_host, "localhost", "127.0.0.1"])
        manifest = Manifest(
            kind=KIND, cluster_id=cluster_id, key_check=master.check_value.hex(), key_id=master.key_id,
            created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            fields={"server_id": plan.server_id, "server_name": plan.server_name if plan.name_given else "",
                    "readonly_host": plan.readonly_host, "primary_db_host": plan.primary_host,
                    "primary_db_port": db.port, "replication_role": plan.role, "slot": plan.slot,
                    "application_name": plan.server_id, "db_name": db.name, "db_user": db.user,
                    "db_superuser": db.superuser, "primary_server_id": settings.server.id,
                    "start_lsn": backup.start_lsn, "end_lsn": backup.end_lsn},
        )
        total = sum(p.stat().st_size for p in (base_tar, backup.wal_tar))
        sealed = 0

        def sealed_bytes(n: int) -> None:
            nonlocal sealed
            sealed += n
            if progress is not None:
                progress("seal", sealed, total)

        say(f"sealing the pack into {plan.out}")
        with write_setup_file(plan.out, passphrase, manifest) as tar:
            for member, data in ((CA_CERT, plan.ca_pem), (SERVER_CERT, cert_pem), (SERVER_KEY, key_pem),
                                 (REPLICATION_PASSWORD, repl_password.encode()),
                                 (DB_PASSWORD, settings.read_secret(db.password_file).encode()),
                                 (DB_SUPERUSER_PASSWORD, settings.read_secret(db.superuser_password_file).encode())):
                add_bytes(tar, member, data)
            _add_file(tar, conf.BASE_TAR, base_tar, sealed_bytes)
            _add_file(tar, conf.WAL_TAR, backup.wal_tar, sealed_bytes)
    return cert_pem


def _undo_pack(su: DbTarget, pg: PgManager, role: str | None, slot: str | None, hba: list[str]) -> None:
    """Best effort: each step is tried even when an earlier one fails."""
    steps: list[Callable[[], object]] = []
    if hba:
        steps.append(lambda: pg.remove_hba_lines(hba))
    if role is not None:
        steps.append(lambda: admin.drop_replication_role(su, role))
    if slot is not None:
        steps.append(lambda: admin.drop_slot(su, slot))
    for step in steps:
        with contextlib.suppress(SafeholdError, OSError):
            step()


def _record_primary(settings: Settings, cluster_id: str) -> None:
    """The server's own settings say it is the primary of this cluster (from its file, without the
    environment's overrides, which must not be written into it)."""
    current = load_settings(settings.data_dir, env={})
    server = current.server
    if server.role == ServerRole.STANDALONE:
        server = server.model_copy(update={"role": ServerRole.PRIMARY})
    if server is current.server and current.ha.cluster_id == cluster_id:
        return
    write_settings(current.model_copy(update={
        "server": server, "ha": current.ha.model_copy(update={"cluster_id": cluster_id})}))


# --- joining ----------------------------------------------------------------------------------------------


@dataclass
class _Pack:
    manifest: Manifest
    small: dict[str, bytes]
    base_tar: Path
    wal_tar: Path

    def text(self, name: str) -> str:
        return self.small[name].decode().strip()


def _check_manifest(manifest: Manifest, path: Path) -> None:
    if manifest.kind != KIND:
        raise SetupFileError(f"{path} is a setup file for a {manifest.kind} server, not a read-only server's pack")
    for name, kind in _MANIFEST_FIELDS.items():
        if not isinstance(manifest.fields.get(name), kind):
            raise SetupFileError(f"{path} is not a read-only setup pack this version understands "
                                 f"(its manifest has no valid {name})")
    try:
        uuid.UUID(manifest.fields["server_id"])
        conf.check_role_name(manifest.fields["replication_role"])
        conf.check_slot_name(manifest.fields["slot"])
        conf.check_application_name(manifest.fields["application_name"])
    except (ValueError, PgError):
        raise SetupFileError(f"{path} is not a valid read-only setup pack (bad names in its manifest)") from None


def _read_whole_pack(path: Path, passphrase: str, master: MasterKey, scratch: Path,
                     check_target: Callable[[Manifest], None]) -> _Pack:
    """Decrypt and check the pack from its first byte to its last, keeping the payload in `scratch`.

    The manifest is checked as soon as it is read (kind, key, target directory), so a wrong key file
    is refused before the base backup is copied."""
    small: dict[str, bytes] = {}
    large: dict[str, Path] = {}
    with read_setup_file(path, passphrase) as (manifest, tar):
        _check_manifest(manifest, path)
        manifest.check_key(master)
        check_target(manifest)
        for name, stream in payload(tar):
            if name in small or name in large:
                raise SetupFileError(f"{path} holds {name} twice")
            if name in SMALL_MEMBERS:
                data = stream.read(_SMALL_LIMIT + 1)
                if len(data) > _SMALL_LIMIT:
                    raise SetupFileError(f"{path}: {name} is too large")
                small[name] = data
            elif name in LARGE_MEMBERS:
                target = scratch / name
                with open(target, "xb") as f:
                    shutil.copyfileobj(stream, f, 1 << 20)
                large[name] = target
            else:
                raise SetupFileError(f"{path} holds an unexpected member {name!r}")
        _drain(tar)
    missing = [n for n in (*SMALL_MEMBERS, *LARGE_MEMBERS) if n not in small and n not in large]
    if missing:
        raise SetupFileError(f"{path} is incomplete (no {', '.join(missing)})")
    return _Pack(manifest, small, large[conf.BASE_TAR], large[conf.WAL_TAR])


def _drain(tar: tarfile.TarFile) -> None:
    """Read the sealed stream to its very end: its last chunk proves nothing was cut off."""
    stream: Any = tar.fileobj  # tarfile's internal stream over the SealedReader
    if stream is not None:
        while stream.read(1 << 20):
            pass


def _refuse_taken_data_dir(data_dir: Path, allowed: set[Path], cluster_id: str) -> None:
    """A new server's directory must be missing or empty (the key file or the pack itself may sit in it)."""
    try:
        entries = [data_dir / e for e in os.listdir(data_dir)]
    except FileNotFoundError:
        return
    except NotADirectoryError:
        raise ConfigError(f"{data_dir} is not a directory") from None
    taken = [e for e in entries if e.resolve() not in allowed]
    if not taken:
        return
    if (data_dir / CONFIG_NAME).is_file():
        try:
            other = load_settings(data_dir, env={})
        except ConfigError:
            other = None
        if other is not None and other.ha.cluster_id == cluster_id:
            raise ConfigError(f"{data_dir} is already the {other.server.role} server {other.server.name!r} of "
                              "this cluster; nothing was changed",
                              hint="join into a new, empty data directory (to reuse this one, move it away first)")
        if other is not None and other.ha.cluster_id:
            raise ConfigError(f"{data_dir} belongs to another Safehold cluster ({other.ha.cluster_id}); "
                              "nothing was changed", hint="choose a new, empty data directory")
        raise ConfigError(f"{data_dir} already holds a Safehold server; nothing was changed",
                          hint="choose a new, empty data directory")
    raise ConfigError(f"{data_dir} is not empty; nothing was changed",
                      hint="a read-only server needs a new or empty data directory")


def _nearest_existing(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path


def _write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def join_readonly(setup_file: Path, passphrase: str, *, data_dir: Path, key_file: Path, port: int | None,
                  db_port: int | None, name: str | None, say: Say) -> Settings:
    """Configure `data_dir` as a read-only server from a pack written by 'safehold ha pack'.

    A damaged pack, a wrong passphrase, a key file of another cluster, or a data directory that is
    taken is refused before anything on disk changes.  The replica is installed, started, checked to
    stream from the primary and to hold this cluster, then stopped again ('safehold serve' starts it).
    """
    setup_file = setup_file.expanduser().resolve()
    data_dir = data_dir.expanduser().resolve()
    key_file = key_file.expanduser().resolve()
    master = load_key_file(key_file)
    say(f"reading and checking {setup_file.name}")
    near = _nearest_existing(data_dir.parent)
    with scratch_dir(near) as scratch:
        pack = _read_whole_pack(
            setup_file, passphrase, master, Path(scratch),
            lambda m: _refuse_taken_data_dir(data_dir, {key_file, setup_file}, m.cluster_id))
        say(f"the pack is intact: cluster {pack.manifest.cluster_id}, made {pack.manifest.created_at}")
        _refuse_taken_data_dir(data_dir, {key_file, setup_file}, pack.manifest.cluster_id)
        made = [p for p in (data_dir, *data_dir.parents) if not p.exists()]
        before = set(os.listdir(data_dir)) if data_dir.exists() else set()
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            return _install(pack, data_dir, key_file, master, port=port, db_port=db_port, name=name, say=say)
        except BaseException:
            say("joining failed; removing what it wrote")
            _undo_join(data_dir, before, made)
            raise


def _settings_for(pack: _Pack, data_dir: Path, key_file: Path, *, port: int | None, db_port: int | None,
                  name: str | None) -> Settings:
    f = pack.manifest.fields
    host = str(f["readonly_host"])
    http_port = port or DEFAULT_HTTP_PORT
    # users reach it as HOST: listen there when that is an address of this host, else on every address
    listen = "127.0.0.1" if host == "localhost" else host if _bindable(host) else "0.0.0.0"  # noqa: S104
    public = f"https://[{host}]:{http_port}" if ":" in host else f"https://{host}:{http_port}"
    return Settings(
        server=ServerSection(id=f["server_id"], name=(name or f["server_name"] or socket.gethostname())[:100],
                             role=ServerRole.READONLY),
        http=HttpSection(listen=listen, port=http_port, public_url=public),
        database=DatabaseSection(mode="bundled", host="127.0.0.1", port=db_port or _free_port(),
                                 name=f["db_name"], user=f["db_user"], superuser=f["db_superuser"]),
        security=SecuritySection(key_file=key_file),
        ha=HaSection(cluster_id=pack.manifest.cluster_id, primary_db_host=f["primary_db_host"],
                     primary_db_port=f["primary_db_port"]),
        data_dir=data_dir,
    )


def _install(pack: _Pack, data_dir: Path, key_file: Path, master: MasterKey, *, port: int | None,
             db_port: int | None, name: str | None, say: Say) -> Settings:
    from safehold.services.database import manager  # the one place that builds a server's PgManager

    settings = _settings_for(pack, data_dir, key_file, port=port, db_port=db_port, name=name)
    f = pack.manifest.fields
    tls = data_dir / "tls"
    tls.mkdir(mode=0o700, exist_ok=True)
    _write_private(settings.path(settings.http.tls_ca), pack.small[CA_CERT], 0o644)
    _write_private(settings.path(settings.http.tls_cert), pack.small[SERVER_CERT], 0o644)
    _write_private(settings.path(settings.http.tls_key), pack.small[SERVER_KEY])
    _write_private(settings.path(settings.database.password_file), pack.text(DB_PASSWORD).encode() + b"\n")
    _write_private(settings.path(settings.database.superuser_password_file),
                   pack.text(DB_SUPERUSER_PASSWORD).encode() + b"\n")
    pg = manager(settings)
    say(f"installing the replica of {f['primary_db_host']}:{f['primary_db_port']} in {settings.pg_data_dir}")
    pg.install_standby(pack.base_tar, pack.wal_tar, primary_host=f["primary_db_host"],
                       primary_port=f["primary_db_port"], user=f["replication_role"],
                       password=pack.text(REPLICATION_PASSWORD), slot=f["slot"],
                       application_name=f["application_name"])
    for tar in (pack.base_tar, pack.wal_tar):
        tar.unlink()  # it holds the primary's files: gone as soon as it is installed
    say(f"starting the replica on 127.0.0.1:{settings.database.port}")
    pg.start()
    try:
        pg.wait_ready()
        view = _wait_streaming(settings, master, pack.manifest, pg)
        say(f"the replica streams from {view.sender_host}:{view.sender_port} (slot {view.slot_name})")
    finally:
        pg.stop()
    _register_at_primary(settings, pack, say)
    write_settings(settings)
    return settings


def _register_at_primary(settings: Settings, pack: _Pack, say: Say) -> None:
    """Put this server's name, URL and port into the registry on the primary database (its replica cannot
    be written), as the app login, the way its audit shipper reaches the primary.  Best effort: the
    server works without it; the others then list it without a URL."""
    f = pack.manifest.fields
    local = app_target(settings)
    target = DbTarget(f["primary_db_host"], f["primary_db_port"], local.dbname, local.user, local.password,
                      local.sslrootcert)
    host = str(f["readonly_host"])
    try:
        asyncio.run(_with_connection(target, lambda conn: server_store.register(
            conn, id=settings.server.id, name=settings.server.name, role=ServerRole.READONLY.value,
            hostname=socket.gethostname(), dns_name=_dns_name(host), url=settings.http.public_url or "",
            port=settings.http.port, version=__version__, cert_fingerprint=fingerprint(pack.small[SERVER_CERT])),
            write=True))
    except (SafeholdError, SQLAlchemyError) as exc:
        reason = exc.message if isinstance(exc, SafeholdError) else type(exc).__name__
        say(f"warning: could not list this server in the primary's registry ({reason}); the other servers "
            "will not see its URL")


def _wait_streaming(settings: Settings, master: MasterKey, manifest: Manifest, pg: PgManager,
                    timeout: float = STREAM_TIMEOUT) -> replication.ReplicaView:
    """Poll the replica as the app login until its WAL receiver streams; check it holds this cluster."""

    async def poll() -> replication.ReplicaView:
        engine = make_engine(app_target(settings), pool_size=1)
        try:
            async with engine.connect() as conn:
                row = await cluster_store.get(conn)
                await conn.rollback()
            if row is None or row.cluster_id != manifest.cluster_id or row.key_check != master.check_value:
                raise DatabaseError("the installed replica does not hold this cluster's data")
            deadline = time.monotonic() + timeout
            while True:
                async with engine.connect() as conn:
                    view = await replication.replica_view(conn)
                if view.streaming:
                    return view
                if not view.in_recovery:
                    raise DatabaseError("the installed replica is not a standby")
                if time.monotonic() > deadline:
                    raise DatabaseError(
                        f"the replica did not start streaming from {manifest.fields['primary_db_host']}:"
                        f"{manifest.fields['primary_db_port']} within {timeout:g}s "
                        f"(receiver: {view.receiver_status or 'not running'}); {_last_error(pg)}",
                        hint="check that the primary's database is reachable from this host and that the "
                             "pack is fresh (its replication slot must still exist)")
                await asyncio.sleep(0.2)
        finally:
            await engine.dispose()

    return asyncio.run(poll())


def _last_error(pg: PgManager) -> str:
    log_dir = pg.data_dir / conf.LOG_DIR
    with contextlib.suppress(OSError):
        logs = sorted((p for p in log_dir.iterdir() if p.is_file()), key=lambda p: p.stat().st_mtime)
        for log in reversed(logs):
            lines = [line for line in log.read_text(errors="replace").splitlines() if "FATAL" in line
                     or "ERROR" in line]
            if lines:
                return f"its log says: {lines[-1].strip()[:300]}"
    return "its log says nothing about it"


def _undo_join(data_dir: Path, before: set[str], made: list[Path]) -> None:
    from safehold.services.database import manager

    with contextlib.suppress(SafeholdError, OSError, ValueError):
        pg = manager(Settings(server=ServerSection(id=str(uuid.uuid4()), name="x"), data_dir=data_dir))
        if pg.status().running:
            try:
                pg.stop(mode="immediate", timeout=20)
            except SafeholdError:
                pg.kill()
    for entry in _listdir(data_dir):
        if entry.name in before:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    for path in made:  # the directories this join created, innermost first
        with contextlib.suppress(OSError):
            path.rmdir()


def _listdir(path: Path) -> Iterator[Path]:
    try:
        yield from (path / e for e in os.listdir(path))
    except OSError:
        return
