"""Rejoin: a lost server — typically a fenced old primary — becomes a read-only server (a replica) of
the acting primary, without a manual backup and restore.

The acting primary's side (:func:`attach_replica`, behind ``POST /api/v1/ha/peer/replicas``, a request
signed with the cluster's peer key): a replication role and slot of the rejoining server's own, the
pg_hba.conf lines for its host, and its entry in the registry as read-only.

The rejoining side (:func:`rejoin`, ``safehold ha rejoin --from URL``):

1. asks the acting primary for its replication credentials and checks the key file against its cluster;
2. **reports what only it has**: every row of its database that the acting primary lacks or holds
   differently (changes that never replicated before the failover) is exported to a file beside the
   data directory, before anything is changed — nothing is dropped silently;
3. stops its database cleanly and rewinds it onto the acting primary's timeline with ``pg_rewind``;
   where that is impossible (or the rewound copy does not stream), takes a fresh base backup instead;
4. configures it as a hot standby streaming over TLS (verify-full) through its own slot, checks that it
   streams, and writes its settings as a read-only server.  A running server follows on its own.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from safehold import names
from safehold.config import Settings, load_settings, write_settings
from safehold.crypto.keyfile import MasterKey
from safehold.domain import ServerRole
from safehold.errors import ConfigError, Conflict, DatabaseError, SafeholdError
from safehold.files import write_private
from safehold.ha.peers import PeerUnreachable, SyncPeerClient
from safehold.pg import conf
from safehold.pg.errors import PgError
from safehold.runtime import Runtime
from safehold.storage import admin, divergence, roles
from safehold.storage import cluster as cluster_store
from safehold.storage.db import DB_ERRORS, DbTarget, app_target, owner_target
from safehold.storage.replication import receiver_state

Say = Callable[[str], None]
PEER_REPLICAS = "/api/v1/ha/peer/replicas"
STREAM_TIMEOUT = 60.0
#: Tables whose rows differ between servers by nature (heartbeats, sessions, the monitor's snapshot):
#: not reported as divergent.
VOLATILE_TABLES = {"servers", "auth_tokens", "alembic_version"}


# --- the acting primary's side ---------------------------------------------------------------------


@dataclass(frozen=True)
class ReplicaGrant:
    replication_role: str
    replication_password: str
    slot: str
    primary_db_host: str
    primary_db_port: int
    cluster_id: str
    key_check: str
    generation: int
    primary_name: str

    def __repr__(self) -> str:
        return f"ReplicaGrant({self.replication_role}, slot {self.slot})"


def attach_replica(settings: Settings, *, cluster_id: str, key_check: bytes, generation: int, server_id: str,
                   host: str, db_host: str | None = None) -> ReplicaGrant:
    """Make a replication role and slot for server ``server_id`` at ``host`` on this (acting primary's)
    bundled database and let it stream (and be rewound) from there.  Idempotent per server id."""
    from safehold.ha.addresses import resolve_addresses
    from safehold.runtime.database import manager

    if settings.database.mode != "bundled" or settings.server.role != ServerRole.PRIMARY:
        raise ConfigError("only the acting primary, with its bundled database, can take a replica")
    role, slot = names.replication_role(server_id), names.readonly_slot(server_id)
    su = owner_target(settings, dbname="postgres")
    password = secrets.token_urlsafe(32)
    admin.create_replication_role(su, role, password)
    admin.create_slot(su, slot)
    admin.grant_monitoring(su, settings.database.user)
    pg = manager(settings)
    lines = []
    for a in resolve_addresses(host):
        lines.append(conf.replication_hba_line(role, a))
        bits = 32 if ipaddress.ip_address(a).version == 4 else 128
        if not ipaddress.ip_address(a).is_loopback:
            lines.append(conf.validate_hba_line(f"hostssl postgres {role} {a}/{bits} scram-sha-256"))
            lines.append(conf.validate_hba_line(
                f"hostssl {settings.database.name} {settings.database.user} {a}/{bits} scram-sha-256"))
    pg.add_hba_lines(lines)
    return ReplicaGrant(role, password, slot, db_host or conf.connect_host(settings.database.host),
                        settings.database.port, cluster_id, key_check.hex(), generation, settings.server.name)


@dataclass(frozen=True)
class SecondaryGrant:
    db_host: str
    db_port: int
    cluster_id: str
    key_check: str
    generation: int
    primary_name: str


def attach_secondary(settings: Settings, *, cluster_id: str, key_check: bytes, generation: int, host: str,
                     db_user: str) -> SecondaryGrant:
    """Let a secondary of this cluster use this (acting primary's) bundled database: its login exists here
    already (roles replicate with the rest of the catalog); it needs the pg_hba.conf lines for its host."""
    from safehold.ha.addresses import login_hba_lines, resolve_addresses
    from safehold.runtime.database import manager

    if settings.database.mode != "bundled" or settings.server.role != ServerRole.PRIMARY:
        raise ConfigError("only the acting primary, with its bundled database, can take a secondary")
    if not roles.is_member(owner_target(settings, dbname="postgres"), db_user, settings.database.user):
        raise ConfigError(f"{db_user} is not a secondary's database login of this cluster",
                          hint="add the server again with 'safehold ha add-secondary'")
    addresses = [a for a in resolve_addresses(host) if not ipaddress.ip_address(a).is_loopback]
    if addresses:
        manager(settings).add_hba_lines(login_hba_lines(settings.database.name, db_user, addresses))
    return SecondaryGrant(conf.connect_host(settings.database.host), settings.database.port, cluster_id,
                          key_check.hex(), generation, settings.server.name)


# --- the rejoining side ----------------------------------------------------------------------------


def request_replica(settings: Settings, master: MasterKey, source_url: str, say: Say) -> ReplicaGrant:
    """Ask the acting primary at ``source_url`` for replication credentials (a signed request)."""
    from safehold.runtime import public_url

    say(f"asking {source_url} for a replication slot of this server's own")
    d = _signed_post(settings, master, source_url, PEER_REPLICAS, {
        "server_id": settings.server.id, "server_name": settings.server.name,
        "host": _host_of(public_url(settings)), "url": public_url(settings), "port": settings.http.port})
    return ReplicaGrant(d["replication_role"], d["replication_password"], d["slot"], d["primary_db_host"],
                        int(d["primary_db_port"]), d["cluster_id"], d["key_check"], int(d["generation"]),
                        d.get("primary_name", ""))


def _host_of(url: str) -> str:
    return urlsplit(url).hostname or ""


def export_divergence(local: DbTarget, source: DbTarget, out: Path) -> dict[str, int]:
    """Write every row the local database holds that the source lacks or holds differently, as JSON lines
    ``{"table", "key", "status": "only-here" | "differs", "row"}``; returns counts per table (the file is
    written only when there is something to report).  Rows hold ciphertext, never a clear password."""
    counts: dict[str, int] = {}
    lines: list[str] = []
    for d in divergence.divergent_rows(local, source, skip=VOLATILE_TABLES):
        counts[d.table] = counts.get(d.table, 0) + 1
        lines.append(json.dumps({"table": d.table, "key": d.key, "status": d.status, "row": d.row},
                                default=str, sort_keys=True))
    if lines:
        write_private(out, ("\n".join(lines) + "\n").encode())
    return counts


@dataclass(frozen=True)
class RejoinResult:
    settings: Settings
    method: str  # "pg_rewind" or "base backup"
    divergent: dict[str, int]
    divergence_file: Path | None


@dataclass(frozen=True)
class PackSource:
    """What a setup pack ('safehold ha pack' on the acting primary) gives a rejoining server: the
    credentials, its new identity and certificate, and a base backup for when pg_rewind cannot."""

    grant: ReplicaGrant
    server_id: str
    cert_pem: bytes
    key_pem: bytes
    base_tar: Path
    wal_tar: Path


def _signed_post(settings: Settings, master: MasterKey, source_url: str, path: str, body: dict[str, Any]) -> Any:
    try:
        with SyncPeerClient(settings, timeout=60) as client:
            answer = client.post_signed(source_url, path, body, master.peer_key())
    except PeerUnreachable as exc:
        raise SafeholdError(f"cannot reach the acting primary at {source_url} ({exc.reason})",
                            hint="check the URL, and that the server there runs and its certificate is from this "
                                 "cluster's CA") from None
    if answer.status != 200:
        message, hint = answer.error()
        raise SafeholdError(f"the acting primary refused ({answer.status}): {message}", hint=hint)
    return answer.body


PEER_SECONDARIES = "/api/v1/ha/peer/secondaries"


def rejoin_secondary(settings: Settings, master: MasterKey, source_url: str, *, say: Say) -> Settings:
    """A secondary (no database of its own) follows the acting primary: its login exists there already; the
    acting primary lets it in from its host, and its settings point at that database from now on."""
    from safehold.runtime import public_url

    say(f"asking {source_url} to let this secondary use its database")
    d = _signed_post(settings, master, source_url, PEER_SECONDARIES, {
        "server_id": settings.server.id, "server_name": settings.server.name,
        "host": _host_of(public_url(settings)), "url": public_url(settings), "port": settings.http.port,
        "db_user": settings.database.user})
    if d["key_check"] != master.check_value.hex():
        raise ConfigError("the key file does not match the acting primary's cluster; nothing was changed")
    if settings.ha.cluster_id and d["cluster_id"] != settings.ha.cluster_id:
        raise ConfigError(f"{source_url} serves another cluster ({d['cluster_id']}); nothing was changed")
    current = load_settings(settings.data_dir, env={})
    new = current.model_copy(update={
        "database": current.database.model_copy(update={"host": d["db_host"], "port": int(d["db_port"])}),
        "ha": current.ha.model_copy(update={"cluster_id": d["cluster_id"]}),
    })
    write_settings(new)
    say(f"this secondary now uses the database of {d['primary_name']} at {d['db_host']}:{d['db_port']} "
        f"(generation {d['generation']})")
    return load_settings(settings.data_dir)


def rejoin(settings: Settings, master: MasterKey, source_url: str, *, say: Say,
           report_divergence: bool = True) -> RejoinResult:
    """Turn this server into a read-only server of the acting primary at ``source_url``."""
    _require_bundled(settings)
    grant = request_replica(settings, master, source_url, say)
    if grant.key_check != master.check_value.hex():
        raise ConfigError("the key file does not match the acting primary's cluster; nothing was changed")
    if settings.ha.cluster_id and grant.cluster_id != settings.ha.cluster_id:
        raise ConfigError(f"{source_url} serves another cluster ({grant.cluster_id}); nothing was changed")
    return _rejoin(settings, grant, None, say=say, report_divergence=report_divergence)


def rejoin_from_pack(settings: Settings, master: MasterKey, pack_path: Path, passphrase: str, *,
                     say: Say) -> RejoinResult:
    """The same from a setup pack of the acting primary: the server takes the pack's identity (its
    replication slot and certificate are made for that id) and its base backup is the fallback."""
    from safehold.ha.join_readonly import read_whole_pack
    from safehold.ha.pack import DB_PASSWORD, REPLICATION_PASSWORD, SERVER_CERT, SERVER_KEY
    from safehold.ha.setupfile import SetupFileError, scratch_dir

    _require_bundled(settings)

    def same_cluster(manifest: Any) -> None:
        if settings.ha.cluster_id and manifest.cluster_id != settings.ha.cluster_id:
            raise SetupFileError(f"{pack_path} is a pack of another cluster ({manifest.cluster_id}); "
                                 "nothing was changed")

    say(f"reading and checking {pack_path.name}")
    with scratch_dir(settings.data_dir) as scratch:
        pack = read_whole_pack(pack_path, passphrase, master, Path(scratch), same_cluster)
        f = pack.manifest.fields
        if pack.text(DB_PASSWORD) != settings.read_secret(settings.database.password_file):
            raise ConfigError("the pack's app login is not this server's; nothing was changed")
        grant = ReplicaGrant(f["replication_role"], pack.text(REPLICATION_PASSWORD), f["slot"], f["primary_db_host"],
                             int(f["primary_db_port"]), pack.manifest.cluster_id, pack.manifest.key_check, 0,
                             f"the primary at {f['primary_db_host']}:{f['primary_db_port']}")
        source = PackSource(grant, f["server_id"], pack.small[SERVER_CERT], pack.small[SERVER_KEY], pack.base_tar,
                            pack.wal_tar)
        return _rejoin(settings, grant, source, say=say, report_divergence=True)


def _require_bundled(settings: Settings) -> None:
    if settings.database.mode != "bundled":
        raise ConfigError("only a server with its own bundled database can be rejoined as a replica",
                          hint="a secondary has none: add it again with 'safehold ha add-secondary' on the "
                               "acting primary")


def _rejoin(settings: Settings, grant: ReplicaGrant, pack: PackSource | None, *, say: Say,
            report_divergence: bool) -> RejoinResult:
    from safehold.runtime.database import manager

    say(f"the acting primary is {grant.primary_name}" + (f" (generation {grant.generation})" if grant.generation
                                                          else "") +
        f", database {grant.primary_db_host}:{grant.primary_db_port}")
    pg = manager(settings)
    pg.check_data_dir()
    application_name = pack.server_id if pack is not None else settings.server.id
    local = DbTarget(*_hostport(settings), settings.database.name, settings.database.superuser,
                     settings.read_secret(settings.database.superuser_password_file), settings.path(settings.http.tls_ca))
    app = app_target(settings)
    source = DbTarget(grant.primary_db_host, grant.primary_db_port, app.dbname, app.user, app.password,
                      app.sslrootcert)
    divergent: dict[str, int] = {}
    out: Path | None = None
    if report_divergence and pg.is_initialized() and not pg.is_standby():
        if not pg.status().running:
            pg.start()
        pg.wait_ready()
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        out = settings.data_dir / f"rejoin-divergent-{stamp}.jsonl"
        say("comparing this database with the acting primary's (changes that never replicated are exported)")
        divergent = export_divergence(local, source, out)
        if divergent:
            say(f"warning: {sum(divergent.values())} row(s) exist only here or differ "
                f"({', '.join(f'{t}: {n}' for t, n in sorted(divergent.items()))}); exported to {out} for the "
                "operator to inspect and re-enter on the acting primary")
        else:
            out = None
            say("nothing diverged: every row here is on the acting primary")
    if pg.status().running:
        say("stopping this server's database")
        pg.stop(mode="fast")
    method = "pg_rewind"
    try:
        say("rewinding the database onto the acting primary's timeline (pg_rewind)")
        pg.rewind(host=grant.primary_db_host, port=grant.primary_db_port, user=grant.replication_role,
                  password=grant.replication_password)
        _configure_and_stream(pg, settings, grant, application_name, say)
    except (PgError, DatabaseError) as exc:
        say(f"pg_rewind was not possible ({exc.message.splitlines()[0][:200]}); taking a fresh base backup")
        method = "base backup"
        with contextlib.suppress(PgError):
            pg.stop(mode="immediate")
        _fresh_copy(pg, settings, grant, application_name, pack, say)
        _configure_and_stream(pg, settings, grant, application_name, say, configured=True)
    if pack is not None:
        tls = settings.data_dir / "tls"
        for name, data in (("server.crt", pack.cert_pem), ("server.key", pack.key_pem)):
            write_private(tls / name, data, 0o644 if name.endswith(".crt") else 0o600, replace=True)
    new = _write_readonly_settings(settings, grant, server_id=application_name)
    from safehold.ha.fencing import clear_fence

    clear_fence(settings)  # a read-only server now: the fence it may have remembered is over
    return RejoinResult(new, method, divergent, out)


def _hostport(settings: Settings) -> tuple[str, int]:
    return conf.connect_host(settings.database.host), settings.database.port


def _configure_and_stream(pg: Any, settings: Settings, grant: ReplicaGrant, application_name: str, say: Say, *,
                          configured: bool = False) -> None:
    if not configured:
        pg.make_standby(primary_host=grant.primary_db_host, primary_port=grant.primary_db_port,
                        user=grant.replication_role, password=grant.replication_password, slot=grant.slot,
                        application_name=application_name)
    say(f"starting the replica on port {settings.database.port}")
    pg.start()
    pg.wait_ready()
    _wait_streaming(settings, pg)
    say(f"the replica streams from {grant.primary_db_host}:{grant.primary_db_port} (slot {grant.slot})")


def _wait_streaming(settings: Settings, pg: Any, timeout: float = STREAM_TIMEOUT) -> None:
    target = app_target(settings)
    deadline = time.monotonic() + timeout
    last = "not connected"
    while time.monotonic() < deadline:
        try:
            in_recovery, status = receiver_state(target)
            if in_recovery and status == "streaming":
                return
            last = f"receiver {status}"
        except DatabaseError:  # no connection (yet)
            last = "not connected"
        except DB_ERRORS as exc:
            last = type(exc).__name__
        time.sleep(0.2)
    from safehold.ha.join_readonly import last_log_error

    raise DatabaseError(f"the replica did not stream within {timeout:g} s ({last}); {last_log_error(pg)}")


def _fresh_copy(pg: Any, settings: Settings, grant: ReplicaGrant, application_name: str,
                pack: PackSource | None, say: Say) -> None:
    """A fresh base backup of the acting primary (the pack's, or taken now) into this data directory; the
    old one is kept aside until the new one is installed."""
    aside = pg.data_dir.with_name(pg.data_dir.name + ".before-rejoin")
    with tempfile.TemporaryDirectory(prefix=".safehold-rejoin-", dir=settings.data_dir) as scratch:
        if pack is not None:
            base_tar, wal_tar = pack.base_tar, pack.wal_tar
            say("installing the pack's base backup")
        else:
            backup = pg.base_backup(Path(scratch) / "backup", host=grant.primary_db_host,
                                    port=grant.primary_db_port, user=grant.replication_role,
                                    password=grant.replication_password, slot=grant.slot,
                                    sslrootcert=settings.path(settings.http.tls_ca))
            say(f"base backup done (WAL {backup.start_lsn} to {backup.end_lsn}); installing it")
            base_tar, wal_tar = backup.base_tar, backup.wal_tar
        if aside.exists():
            shutil.rmtree(aside)
        pg.data_dir.rename(aside)
        try:
            pg.install_standby(base_tar, wal_tar, primary_host=grant.primary_db_host,
                               primary_port=grant.primary_db_port, user=grant.replication_role,
                               password=grant.replication_password, slot=grant.slot,
                               application_name=application_name)
        except BaseException:
            shutil.rmtree(pg.data_dir, ignore_errors=True)
            aside.rename(pg.data_dir)
            raise
        shutil.rmtree(aside, ignore_errors=True)


def _write_readonly_settings(settings: Settings, grant: ReplicaGrant, *, server_id: str) -> Settings:
    current = load_settings(settings.data_dir, env={})
    new = current.model_copy(update={
        "server": current.server.model_copy(update={"role": ServerRole.READONLY, "id": server_id}),
        "ha": current.ha.model_copy(update={"cluster_id": grant.cluster_id, "primary_db_host": grant.primary_db_host,
                                            "primary_db_port": grant.primary_db_port}),
    })
    write_settings(new)
    return load_settings(settings.data_dir)


async def acting_primary_cluster(rt: Runtime) -> cluster_store.ClusterRow:
    """The cluster's row, when this server is the acting primary that servers (re)join; else Conflict."""
    if rt.readonly or rt.identity.role != ServerRole.PRIMARY:
        raise Conflict("this server is not the acting primary", hint="ask the acting primary")
    async with rt.read() as conn:
        row = await cluster_store.get(conn)
    assert row is not None  # open_runtime checked it
    return row
