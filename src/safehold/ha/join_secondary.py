"""Joining as a secondary server with the setup file from 'safehold ha add-secondary' ('safehold ha join').

:func:`join_secondary` checks the file (:mod:`safehold.ha.add_secondary` writes it), the key file and
the primary database, and only then writes the new data directory.  A refusal or a failure leaves no
data directory behind.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509

from safehold.config import (
    CONFIG_NAME,
    DatabaseSection,
    HaSection,
    HttpSection,
    SecuritySection,
    ServerSection,
    Settings,
    write_settings,
)
from safehold.crypto.keyfile import MasterKey, load_key_file
from safehold.domain import ServerRole
from safehold.errors import ConfigError, DatabaseError, KeyFileError
from safehold.files import nearest_existing, write_private
from safehold.ha.add_secondary import (
    CA_CERT,
    DB_PASSWORD,
    KIND,
    MANIFEST_FIELDS,
    PAYLOAD,
    SERVER_CERT,
    SERVER_KEY,
    Say,
)
from safehold.ha.addresses import is_loopback_address
from safehold.ha.setupfile import Manifest, SetupFileError, payload, read_setup_file, scratch_dir
from safehold.storage import cluster as cluster_store
from safehold.storage.db import app_target
from safehold.storage.short_lived import StatementFailed, one_connection


def _quiet(_: str) -> None:
    pass


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
    near = nearest_existing(data_dir.parent)
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
    absent = [f for f in MANIFEST_FIELDS if f not in manifest.fields]
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
    loopback = is_loopback_address(host)
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


def _stage(staged: Path, settings: Settings, content: _SetupContent) -> None:
    files = content.files
    write_private(settings.path(settings.http.tls_ca), files[CA_CERT], 0o644)
    write_private(settings.path(settings.http.tls_cert), files[SERVER_CERT], 0o644)
    write_private(settings.path(settings.http.tls_key), files[SERVER_KEY], 0o600)
    write_private(settings.path(settings.database.password_file), files[DB_PASSWORD].strip() + b"\n", 0o600)
    write_settings(settings)


async def _check_primary_database(settings: Settings, manifest: Manifest, master: MasterKey) -> None:
    db = settings.database
    try:
        async with one_connection(app_target(settings)) as primary:
            row = await primary.run(cluster_store.get)
    except StatementFailed as exc:
        raise DatabaseError(f"cannot reach the primary database at {db.host}:{db.port} as {db.user} "
                            f"({exc.cause})",
                            hint="is the primary's database running and reachable from this host, "
                                 "and was this setup file made for it?") from None
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
