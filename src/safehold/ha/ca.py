"""The cluster CA's private key, where every server that may become the primary can reach it.

``safehold init`` writes it to ``tls/ca.key`` on the first primary and also keeps it in the keyring,
wrapped by the master key like the data keys (purpose ``ca``; ``safehold key rotate`` rewraps it with
them).  A promoted read-only server has no such file — setup files and packs never carry the CA key —
so 'ha pack' and 'ha add-secondary' there unwrap it from its (replicated) database with the key file.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from safehold.config import Settings
from safehold.crypto.keyfile import MasterKey
from safehold.errors import ConfigError
from safehold.runtime import Runtime, wrap_label
from safehold.storage import cluster as cluster_store
from safehold.storage.db import AsyncConnection, app_target, make_engine

CA = "ca"


def ca_key_path(settings: Settings) -> Path:
    return settings.path(settings.http.tls_ca).with_name("ca.key")


async def store_ca_key(conn: AsyncConnection, master: MasterKey, pem: bytes, cert_pem: bytes | None = None) -> None:
    """Keep the CA key in the keyring, and its certificate in the cluster row (each once)."""
    if not any(k.purpose == CA and k.active for k in await cluster_store.keys(conn)):
        await cluster_store.add_key(conn, CA, 1, master.wrap(pem, wrap_label(CA, 1)), active=True)
    if cert_pem is not None:
        await cluster_store.keep_ca_cert(conn, cert_pem)


async def keep_cluster_ca(rt: Runtime, master: MasterKey) -> None:
    """On a writer that holds the CA's files (the server that ran 'safehold init'): make sure the database
    keeps the CA key and certificate, so that servers can join with the key file alone ('safehold join')."""
    key, cert = ca_key_path(rt.settings), rt.settings.path(rt.settings.http.tls_ca)
    if rt.readonly or not key.is_file() or not cert.is_file():
        return
    async with rt.read() as conn:
        kept = await cluster_store.ca_cert(conn) is not None
    if not kept:
        async with rt.write() as conn:
            await store_ca_key(conn, master, key.read_bytes(), cert.read_bytes())


async def kept_ca(conn: AsyncConnection, master: MasterKey) -> tuple[bytes, bytes] | None:
    """The CA certificate and key (PEM) the database keeps, the key unwrapped; None when it keeps none."""
    cert = await cluster_store.ca_cert(conn)
    stored = next((k for k in await cluster_store.keys(conn) if k.purpose == CA and k.active), None)
    if cert is None or stored is None:
        return None
    return cert, master.unwrap(stored.wrapped, wrap_label(CA, stored.version))


async def _ca_key(settings: Settings, master: MasterKey) -> bytes:
    path = ca_key_path(settings)
    engine = make_engine(app_target(settings), pool_size=1)
    try:
        async with engine.begin() as conn:
            if path.is_file():
                pem = path.read_bytes()
                # clusters made before the keyring held it
                await store_ca_key(conn, master, pem, settings.path(settings.http.tls_ca).read_bytes())
                return pem
            stored = next((k for k in await cluster_store.keys(conn) if k.purpose == CA and k.active), None)
    finally:
        await engine.dispose()
    if stored is None:
        raise ConfigError(f"the cluster CA key is neither in {path} nor in this database's keyring",
                          hint="run this on the server that ran 'safehold init' once, so that it is kept in the "
                               "keyring, then here again")
    return master.unwrap(stored.wrapped, wrap_label(CA, stored.version))


def cluster_ca_key(settings: Settings, master: MasterKey) -> bytes:
    """The CA key (PEM), from the file where there is one, else unwrapped from the keyring."""
    return asyncio.run(_ca_key(settings, master))
