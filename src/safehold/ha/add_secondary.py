"""A new secondary server (a full read/write app server on the primary's database), prepared on the
primary ('safehold ha add-secondary').

:func:`add_secondary` gives the new server a database login of its own (:mod:`safehold.ha.names`),
lets it in through ``pg_hba.conf``, issues its HTTPS certificate from the cluster CA and seals all of
that in one setup file (never the master key); the new host joins with :mod:`safehold.ha.join_secondary`.
All-or-nothing: a refusal or a failure leaves no role, no pg_hba line and no setup file behind.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import secrets
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from safehold import names
from safehold.config import Settings
from safehold.crypto.certs import make_server_cert
from safehold.crypto.keyfile import MasterKey
from safehold.domain import ServerRole
from safehold.errors import ConfigError, DatabaseError, KeyFileError, SafeholdError
from safehold.ha.addresses import (
    certificate_names,
    is_loopback_address,
    login_hba_lines,
    resolve_addresses,
)
from safehold.ha.ca import cluster_ca_key
from safehold.ha.pack import Say, record_primary
from safehold.ha.setupfile import Manifest, add_bytes, write_setup_file
from safehold.pg import PgManager, conf
from safehold.storage import admin
from safehold.storage import cluster as cluster_store
from safehold.storage.db import app_target, owner_target
from safehold.storage.short_lived import StatementFailed, run_once

# --- the setup file's format (read back by ha.join_secondary) --------------------------------------------

KIND = "secondary"
CA_CERT, SERVER_CERT, SERVER_KEY, DB_PASSWORD = "ca.crt", "server.crt", "server.key", "db_password"
PAYLOAD = (CA_CERT, SERVER_CERT, SERVER_KEY, DB_PASSWORD)
MANIFEST_FIELDS = ("server_id", "host", "db_host", "db_port", "db_name", "db_user")
_RESOLVE_HINT = "give its IP address with --host, as the primary database sees it"


def _quiet(_: str) -> None:
    pass


@dataclass(frozen=True)
class AddedSecondary:
    server_id: str
    db_role: str
    out: Path
    hba_lines: tuple[str, ...]
    cluster_id: str


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
                          hint="on a database an HA engine runs, add app servers with 'safehold join --database-url "
                               "URL --key-file K' (docs/SCALE-OUT.md)")
    out = out.resolve()
    if out.exists() or out.with_name(out.name + ".part").exists():
        raise ConfigError(f"{out} exists; Safehold does not overwrite a setup file",
                          hint="remove it or choose another --out")
    if not out.parent.is_dir():
        raise ConfigError(f"the directory {out.parent} does not exist")
    ca_cert_path = settings.path(settings.http.tls_ca)
    ca_key_pem = cluster_ca_key(settings, master)
    addresses = resolve_addresses(host, hint=_RESOLVE_HINT)
    db_host = db_host or conf.connect_host(settings.database.host)
    _warn_about_reach(settings, host, addresses, db_host, say)

    cluster_id = _cluster_id(settings, master)
    if settings.ha.cluster_id not in (None, cluster_id):
        raise ConfigError(f"this server's settings name cluster {settings.ha.cluster_id}, but its database "
                          f"holds cluster {cluster_id}; refusing to mix them")
    server_id = str(uuid.uuid4())
    role = names.secondary_login(server_id)
    password = secrets.token_urlsafe(32)
    dbname = settings.database.name
    lines = login_hba_lines(dbname, role, addresses)
    superuser = owner_target(settings, dbname="postgres")

    with _undo_on_failure(say) as undo:
        say(f"creating the database login {role} for the secondary")
        admin.create_login(superuser, role, password, like=settings.database.user)
        undo.append(lambda: admin.drop_login(superuser, role))
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
        record_primary(settings, cluster_id)
    return AddedSecondary(server_id, role, out, tuple(lines), cluster_id)


def _warn_about_reach(settings: Settings, host: str, addresses: list[str], db_host: str, say: Say) -> None:
    """Say what would keep a secondary on another host from reaching the primary database."""
    remote = not all(ipaddress.ip_address(a).is_loopback for a in addresses)
    listen = conf.connect_host(settings.database.host)
    if remote and is_loopback_address(listen):
        say(f"warning: the primary database listens on {settings.database.host} only; a secondary on {host} "
            "cannot reach it until database.host is an address it can reach")
    if remote and is_loopback_address(db_host):
        say(f"warning: the setup file tells {host} to reach the primary database at {db_host}; "
            "give the primary's address with --db-host")
    try:
        # a certificate without names (or none at all) is left to the secondary to refuse
        cert_names = certificate_names(settings.path(settings.http.tls_cert).read_bytes()) or None
    except (OSError, ValueError):
        cert_names = None
    if cert_names is not None and db_host not in cert_names:
        say(f"warning: the primary database's certificate is not valid for {db_host} "
            f"(it names {', '.join(sorted(cert_names))}); the secondary will refuse the connection")


def _cluster_id(settings: Settings, master: MasterKey) -> str:
    try:
        row = run_once(app_target(settings), cluster_store.get)
    except StatementFailed as exc:
        raise DatabaseError(f"cannot read the cluster identity from the database ({exc.kind})") from None
    if row is None:
        raise DatabaseError("the database holds no Safehold cluster", hint="run 'safehold init' first")
    if row.key_check != master.check_value:
        raise KeyFileError(f"the key file does not match this database (key id {master.key_id})")
    return row.cluster_id


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
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
