"""Joining as a read-only server with a setup pack from the primary ('safehold ha join PACK').

:func:`join_readonly` reads and checks the *whole* pack (:mod:`safehold.ha.pack` writes it) before it
changes anything, then writes the data directory, installs the replica (a hot standby streaming over
TLS verify-full against the pinned CA) and checks that it streams.  It leaves the replica stopped:
``safehold serve`` starts it (and stops it again when it ends).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import shutil
import socket
import tarfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
from safehold.crypto.certs import fingerprint
from safehold.crypto.keyfile import MasterKey, load_key_file
from safehold.domain import ServerRole
from safehold.errors import ConfigError, DatabaseError, SafeholdError
from safehold.files import nearest_existing, write_private
from safehold.ha.addresses import dns_name
from safehold.ha.pack import (
    CA_CERT,
    DB_PASSWORD,
    DB_SUPERUSER_PASSWORD,
    KIND,
    LARGE_MEMBERS,
    MANIFEST_FIELDS,
    REPLICATION_PASSWORD,
    SERVER_CERT,
    SERVER_KEY,
    SMALL_MEMBERS,
    Say,
)
from safehold.ha.setupfile import Manifest, SetupFileError, payload, read_setup_file, scratch_dir
from safehold.pg import PgManager, conf
from safehold.pg.errors import PgError
from safehold.storage import cluster as cluster_store
from safehold.storage import replication
from safehold.storage import servers as server_store
from safehold.storage.db import DbTarget, app_target
from safehold.storage.short_lived import StatementFailed, one_connection, run_once

DEFAULT_HTTP_PORT = 8443
STREAM_TIMEOUT = 60.0
_SMALL_LIMIT = 1 << 20


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



@dataclass
class Pack:
    manifest: Manifest
    small: dict[str, bytes]
    base_tar: Path
    wal_tar: Path

    def text(self, name: str) -> str:
        return self.small[name].decode().strip()


def _check_manifest(manifest: Manifest, path: Path) -> None:
    if manifest.kind != KIND:
        raise SetupFileError(f"{path} is a setup file for a {manifest.kind} server, not a read-only server's pack")
    for name, kind in MANIFEST_FIELDS.items():
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


def read_whole_pack(path: Path, passphrase: str, master: MasterKey, scratch: Path,
                     check_target: Callable[[Manifest], None]) -> Pack:
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
    return Pack(manifest, small, large[conf.BASE_TAR], large[conf.WAL_TAR])


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
    near = nearest_existing(data_dir.parent)
    with scratch_dir(near) as scratch:
        pack = read_whole_pack(
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


def _settings_for(pack: Pack, data_dir: Path, key_file: Path, *, port: int | None, db_port: int | None,
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


def _install(pack: Pack, data_dir: Path, key_file: Path, master: MasterKey, *, port: int | None,
             db_port: int | None, name: str | None, say: Say) -> Settings:
    from safehold.runtime.database import manager  # the one place that builds a server's PgManager

    settings = _settings_for(pack, data_dir, key_file, port=port, db_port=db_port, name=name)
    f = pack.manifest.fields
    tls = data_dir / "tls"
    tls.mkdir(mode=0o700, exist_ok=True)
    write_private(settings.path(settings.http.tls_ca), pack.small[CA_CERT], 0o644)
    write_private(settings.path(settings.http.tls_cert), pack.small[SERVER_CERT], 0o644)
    write_private(settings.path(settings.http.tls_key), pack.small[SERVER_KEY])
    write_private(settings.path(settings.database.password_file), pack.text(DB_PASSWORD).encode() + b"\n")
    write_private(settings.path(settings.database.superuser_password_file),
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


def _register_at_primary(settings: Settings, pack: Pack, say: Say) -> None:
    """Put this server's name, URL and port into the registry on the primary database (its replica cannot
    be written), as the app login, the way its audit shipper reaches the primary.  Best effort: the
    server works without it; the others then list it without a URL."""
    f = pack.manifest.fields
    local = app_target(settings)
    target = DbTarget(f["primary_db_host"], f["primary_db_port"], local.dbname, local.user, local.password,
                      local.sslrootcert)
    host = str(f["readonly_host"])
    try:
        run_once(target, lambda conn: server_store.register(
            conn, id=settings.server.id, name=settings.server.name, role=ServerRole.READONLY.value,
            hostname=socket.gethostname(), dns_name=dns_name(host), url=settings.http.public_url or "",
            port=settings.http.port, version=__version__, cert_fingerprint=fingerprint(pack.small[SERVER_CERT])),
            write=True)
    except SafeholdError as exc:
        reason = exc.kind if isinstance(exc, StatementFailed) else exc.message
        say(f"warning: could not list this server in the primary's registry ({reason}); the other servers "
            "will not see its URL")


def _wait_streaming(settings: Settings, master: MasterKey, manifest: Manifest, pg: PgManager,
                    timeout: float = STREAM_TIMEOUT) -> replication.ReplicaView:
    """Poll the replica as the app login until its WAL receiver streams; check it holds this cluster."""

    async def poll() -> replication.ReplicaView:
        async with one_connection(app_target(settings)) as db:
            row = await db.run(cluster_store.get)
            if row is None or row.cluster_id != manifest.cluster_id or row.key_check != master.check_value:
                raise DatabaseError("the installed replica does not hold this cluster's data")
            deadline = time.monotonic() + timeout
            while True:
                view = await db.run(replication.replica_view)
                if view.streaming:
                    return view
                if not view.in_recovery:
                    raise DatabaseError("the installed replica is not a standby")
                if time.monotonic() > deadline:
                    raise DatabaseError(
                        f"the replica did not start streaming from {manifest.fields['primary_db_host']}:"
                        f"{manifest.fields['primary_db_port']} within {timeout:g}s "
                        f"(receiver: {view.receiver_status or 'not running'}); {last_log_error(pg)}",
                        hint="check that the primary's database is reachable from this host and that the "
                             "pack is fresh (its replication slot must still exist)")
                await asyncio.sleep(0.2)

    return asyncio.run(poll())


def last_log_error(pg: PgManager) -> str:
    """The last FATAL or ERROR line of the database's own log, for an error message."""
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
    from safehold.runtime.database import manager

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
