"""The setup pack of a new read-only server, made on the primary while it keeps serving ('safehold ha pack').

:func:`create_pack` makes a replication role and a physical slot of the new server's own
(:mod:`safehold.ha.names`), lets that role stream WAL (a ``hostssl replication`` line for the read-only
host, and one for the primary's own loopback address so it can back itself up), takes an online base
backup through the slot and seals everything the new server needs into one setup pack
(:mod:`safehold.ha.setupfile`)::

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
the partial file) is removed again.  The new host joins with :mod:`safehold.ha.join_readonly`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import ipaddress
import secrets
import tarfile
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safehold import names
from safehold.config import Settings, load_settings, write_settings
from safehold.crypto.certs import fingerprint, make_server_cert
from safehold.crypto.keyfile import MasterKey
from safehold.domain import ServerRole
from safehold.errors import ConfigError, DatabaseError, KeyFileError, SafeholdError
from safehold.ha.addresses import (
    certificate_names,
    dns_name,
    is_loopback_host,
    login_hba_lines,
    resolve_addresses,
)
from safehold.ha.ca import cluster_ca_key
from safehold.ha.setupfile import Manifest, add_bytes, write_setup_file
from safehold.pg import PgManager, conf
from safehold.pg.errors import PgError
from safehold.storage import admin
from safehold.storage import cluster as cluster_store
from safehold.storage import servers as server_store
from safehold.storage.db import DbTarget, app_target, owner_target
from safehold.storage.short_lived import run_once

#: How a setup command tells the operator what it does (a line each; the CLI prints it).
Say = Callable[[str], None]
#: Called with (phase, bytes done, bytes expected) while a pack is written; phase is
#: "backup" (pg_basebackup copying the primary) or "seal" (encrypting into the pack).
PackProgress = Callable[[str, int, int], None]

# --- the pack's format (read back by ha.join_readonly and ha.rejoin) ---------------------------------------

KIND = "readonly"
CA_CERT, SERVER_CERT, SERVER_KEY = "ca.crt", "server.crt", "server.key"
REPLICATION_PASSWORD, DB_PASSWORD = "replication_password", "db_password"
# the database superuser's password: the replica is a copy of the primary's cluster, and once promoted
# (failover, switchover) this server administers it (replication roles and slots of its own replicas)
DB_SUPERUSER_PASSWORD = "db_superuser_password"
SMALL_MEMBERS = (CA_CERT, SERVER_CERT, SERVER_KEY, REPLICATION_PASSWORD, DB_PASSWORD, DB_SUPERUSER_PASSWORD)
LARGE_MEMBERS = (conf.BASE_TAR, conf.WAL_TAR)
MANIFEST_FIELDS: dict[str, type] = {
    "server_id": str, "server_name": str, "readonly_host": str, "primary_db_host": str,
    "primary_db_port": int, "replication_role": str, "slot": str, "application_name": str,
    "db_name": str, "db_user": str, "db_superuser": str,
}


def _no_say(_: str) -> None:
    pass


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


def _cluster_row(settings: Settings, master: MasterKey) -> cluster_store.ClusterRow:
    row = run_once(app_target(settings), cluster_store.get)
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
                          hint="on a database an HA engine runs, put a read-only server on one of its replicas: "
                               "'safehold join --readonly --database-url URL --key-file K' (docs/SCALE-OUT.md)")
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
    if is_loopback_host(primary_host) and not all(ipaddress.ip_address(a).is_loopback for a in addresses):
        raise ConfigError(f"this primary's database listens on {primary_host} only; the read-only server at "
                          f"{readonly_host} could not reach it",
                          hint="set database.host to an address the read-only host can reach (then restart), "
                               "or give it with --db-host")
    ca_path = settings.path(settings.http.tls_ca)
    try:
        ca_pem = ca_path.read_bytes()
        primary_names = certificate_names(settings.path(settings.http.tls_cert).read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot read the cluster CA or certificate: {exc.filename}: {exc.strerror}",
                          hint="'safehold ha pack' runs on the primary, which holds the cluster CA") from None
    if primary_host not in primary_names:
        raise ConfigError(f"the primary database's certificate does not name {primary_host}: the read-only "
                          "server verifies it (verify-full) and would refuse it",
                          hint=f"use one of its names with --db-host: {', '.join(sorted(primary_names))}")
    server_id = str(uuid.uuid4())
    role = names.replication_role(server_id)
    streaming_from = dict.fromkeys([*addresses, *resolve_addresses(local_host)])
    hba = [conf.replication_hba_line(role, a) for a in streaming_from]
    # the read-only server ships its audit spool to the primary database as the app login
    hba += login_hba_lines(db.name, db.user, [a for a in addresses if not ipaddress.ip_address(a).is_loopback])
    return _Plan(out=out, readonly_host=readonly_host, addresses=addresses, local_host=local_host,
                 primary_host=primary_host, ca_path=ca_path, ca_pem=ca_pem, ca_key_pem=b"",
                 server_id=server_id, server_name=(name or readonly_host)[:100], name_given=bool(name), role=role,
                 slot=names.readonly_slot(server_id), hba=hba)


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
        admin.wait_replication_allowed(plan.local_host, db.port, plan.role, repl_password, str(plan.ca_path))
        admin.grant_monitoring(su, db.user)
        cert_pem = _backup_and_seal(settings, master, pg, plan, cluster.cluster_id, repl_password, passphrase,
                                    say, progress)
        # listed (inactive) from now on; its URL and port are filled in when it joins
        run_once(app_target(settings), lambda conn: server_store.register(
            conn, id=plan.server_id, name=plan.server_name, role=ServerRole.READONLY.value,
            hostname=plan.readonly_host, dns_name=dns_name(plan.readonly_host), url="", port=0,
            cert_fingerprint=fingerprint(cert_pem)), write=True)
        record_primary(settings, cluster.cluster_id)
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
                    "application_name": names.application_name(plan.server_id), "db_name": db.name, "db_user": db.user,
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


def record_primary(settings: Settings, cluster_id: str) -> None:
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
