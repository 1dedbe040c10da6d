"""Fencing: a primary or secondary that a newer primary superseded must not write a single row.

Promotion raises the cluster's generation (``cluster.generation``) in the promoted database.  The
servers on the old side still hold the old generation; before they write anything — at start-up,
before they register — and then every HA cycle, they ask the peers they know (the server registry of
their own database) what generation they hold.  A peer of the same cluster reporting a higher
generation, as the acting primary or as a server fenced by it, means this server was superseded: it
turns fenced (``Runtime.fence``), refuses every write, and — when its database is the bundled one —
sets that database read-only as well, so a secondary still connected to it cannot write either.

Which peer report fences is a pure function (:func:`superseded_by`); the rest gathers the reports.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import httpx
import psycopg

from safehold.config import Settings
from safehold.errors import SafeholdError
from safehold.services.ha_status import fetch_local
from safehold.services.runtime import Fence
from safehold.storage.db import DbTarget, owner_target

log = logging.getLogger(__name__)


def superseded_by(cluster_id: str, generation: int, reports: Iterable[Mapping[str, Any]]) -> Fence | None:
    """The newest primary among the peers' ``/ha/local`` reports that supersedes ``generation``."""
    best: Fence | None = None
    for r in reports:
        if r.get("cluster_id") != cluster_id:
            continue
        gen = r.get("generation")
        if not isinstance(gen, int) or gen <= generation:
            continue
        fence = r.get("fence")
        if r.get("role") == "primary" and not fence:
            candidate = Fence(gen, str(r.get("server_id", "")), str(r.get("server_name", "")), str(r.get("url", "")))
        elif isinstance(fence, dict) and isinstance(fence.get("generation"), int):
            candidate = Fence(fence["generation"], str(fence.get("acting_primary_id", "")),
                              str(fence.get("acting_primary_name", "")), str(fence.get("acting_primary_url", "")))
        else:
            continue
        if best is None or candidate.generation > best.generation:
            best = candidate
    return best


async def peer_reports(settings: Settings, urls: Sequence[str], client: httpx.AsyncClient | None = None
                       ) -> list[dict[str, Any]]:
    """``GET /api/v1/ha/local`` of every URL (TLS verified against the cluster CA), with ``client`` when the
    caller keeps one; unreachable ones are left out."""
    if not urls:
        return []
    if client is None:
        ctx = ssl.create_default_context(cafile=str(settings.path(settings.http.tls_ca)))
        async with httpx.AsyncClient(verify=ctx, timeout=settings.ha.peer_timeout) as own:
            return await peer_reports(settings, urls, own)
    got = await asyncio.gather(*(fetch_local(client, u) for u in urls))
    return [{"url": u, **g} for u, g in zip(urls, got, strict=True) if g is not None]  # its own url wins


async def find_newer_primary(settings: Settings, cluster_id: str, generation: int, peer_urls: Sequence[str],
                             client: httpx.AsyncClient | None = None) -> Fence | None:
    return superseded_by(cluster_id, generation, await peer_reports(settings, peer_urls, client))


def _set_read_only(target: DbTarget, on: bool) -> None:
    with psycopg.connect(host=target.host, port=target.port, user=target.user, password=target.password,
                         dbname="postgres", sslmode="verify-full", sslrootcert=str(target.sslrootcert),
                         autocommit=True, connect_timeout=5) as conn:
        if on:
            conn.execute("ALTER SYSTEM SET default_transaction_read_only = on")
        else:
            conn.execute("ALTER SYSTEM RESET default_transaction_read_only")
        conn.execute("SELECT pg_reload_conf()")
        if on:
            # sessions already in a transaction keep it; end them so nothing more commits
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = "
                         "'client backend' AND pid <> pg_backend_pid() AND datname = %s", (target.dbname,))


def fence_database(settings: Settings, on: bool = True) -> bool:
    """Make the bundled database refuse writes (or accept them again).  False when this server has no
    bundled database or it cannot be reached (the app-level fence still holds)."""
    if settings.database.mode != "bundled":
        return False
    try:
        target = owner_target(settings)
        _set_read_only(DbTarget(target.host, target.port, settings.database.name, target.user, target.password,
                                target.sslrootcert), on)
    except (SafeholdError, psycopg.Error, OSError) as exc:
        log.warning("could not %s the bundled database: %s", "fence" if on else "unfence",
                    exc.message if isinstance(exc, SafeholdError) else type(exc).__name__)
        return False
    return True
