"""Talking to the other servers of the cluster: one HTTPS client, typed messages.

- :class:`LocalReport` is what a server says about itself at ``GET /api/v1/ha/local`` (its role,
  generation, mode, fence, database, audit backlog, write lease, alarm).  The endpoint answers
  :meth:`LocalReport.to_json`; a peer reads it back with :meth:`LocalReport.from_json`, which takes
  what an older (or broken) server sends without failing: a field it lacks, or of the wrong type,
  gets its default.
- :class:`PeerClient` holds one ``httpx.AsyncClient`` verified against the cluster CA, with the peer
  timeout: :meth:`PeerClient.local`, :meth:`PeerClient.reports`, :meth:`PeerClient.healthy`.
  :class:`SyncPeerClient` is the same for a command (the switchover's preflight).
- The pure judgements on reports that several loops share: :func:`writer_report` (the primary
  database's WAL position and write lease as the app servers on it report them) and
  :func:`primary_wal` (the furthest of those positions).  Fencing's judgements are
  :func:`safehold.ha.fencing.superseded_by` and ``confirmation_from``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import httpx

from safehold.config import Settings
from safehold.crypto import peerauth
from safehold.ha.failover import WriterReport
from safehold.ha.failover_inputs import InputState, inputs_from_json
from safehold.ha.lsn import parse_lsn

LOCAL_PATH = "/api/v1/ha/local"
HEALTH_PATH = "/api/v1/health"


# --- reading JSON from a peer without trusting its shape ------------------------------------------------


def _str(d: Mapping[str, Any], key: str, default: str = "") -> str:
    v = d.get(key)
    return v if isinstance(v, str) else default


def _opt_str(d: Mapping[str, Any], key: str) -> str | None:
    v = d.get(key)
    return v if isinstance(v, str) else None


def _int(d: Mapping[str, Any], key: str) -> int | None:
    v = d.get(key)
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _num(d: Mapping[str, Any], key: str) -> float | None:
    v = d.get(key)
    return v if isinstance(v, int | float) and not isinstance(v, bool) else None


def _bool(d: Mapping[str, Any], key: str) -> bool | None:
    v = d.get(key)
    return v if isinstance(v, bool) else None


def _map(d: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    v = d.get(key)
    return v if isinstance(v, Mapping) else None


# --- the message ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FenceReport:
    """The acting primary that superseded the reporting server (the fields of ``runtime.Fence``)."""

    generation: int
    acting_primary_id: str = ""
    acting_primary_name: str = ""
    acting_primary_url: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"generation": self.generation, "acting_primary_id": self.acting_primary_id,
                "acting_primary_name": self.acting_primary_name, "acting_primary_url": self.acting_primary_url}

    @classmethod
    def from_json(cls, d: Mapping[str, Any] | None) -> FenceReport | None:
        """None unless it names a generation (a fence without one says nothing)."""
        if d is None or (generation := _int(d, "generation")) is None:
            return None
        return cls(generation, _str(d, "acting_primary_id"), _str(d, "acting_primary_name"),
                   _str(d, "acting_primary_url"))


@dataclass(frozen=True)
class DatabaseReport:
    """The reporting server's database: its address, how it is run, and whether it is the primary one."""

    host: str = ""
    port: int = 0
    mode: str = ""  # bundled or external
    role: str = ""  # primary or replica

    def to_json(self) -> dict[str, Any]:
        return {"host": self.host, "port": self.port, "mode": self.mode, "role": self.role}

    @classmethod
    def from_json(cls, d: Mapping[str, Any] | None) -> DatabaseReport:
        d = d or {}
        return cls(_str(d, "host"), _int(d, "port") or 0, _str(d, "mode"), _str(d, "role"))


@dataclass(frozen=True)
class BacklogReport:
    """The reporting server's audit spool (a read-only server's): records not yet in the primary database."""

    pending: int = 0
    shipped: int = 0
    oldest_pending: str | None = None  # ISO 8601
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"pending": self.pending, "shipped": self.shipped, "oldest_pending": self.oldest_pending,
                "error": self.error}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> BacklogReport:
        return cls(_int(d, "pending") or 0, _int(d, "shipped") or 0, _opt_str(d, "oldest_pending"),
                   _opt_str(d, "error"))


@dataclass(frozen=True)
class LeaseReport:
    """A writer's lease: its length (a standby never promotes itself before it ran out), whether it holds."""

    seconds: float | None = None
    valid: bool = False
    remaining: float = 0.0
    confirmed_by: str | None = None  # a Confirmation's value

    def to_json(self) -> dict[str, Any]:
        return {"seconds": self.seconds, "valid": self.valid, "remaining": self.remaining,
                "confirmed_by": self.confirmed_by}

    @classmethod
    def from_json(cls, d: Mapping[str, Any] | None) -> LeaseReport | None:
        if d is None:
            return None
        return cls(_num(d, "seconds"), _bool(d, "valid") or False, _num(d, "remaining") or 0.0,
                   _opt_str(d, "confirmed_by"))


@dataclass(frozen=True)
class AlarmReport:
    """An alarm only the reporting server knows of (automatic failover, its audit spool, its write lease)."""

    condition: str
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"condition": self.condition, "message": self.message}

    @classmethod
    def from_json(cls, d: Mapping[str, Any] | None) -> AlarmReport | None:
        return None if d is None else cls(_str(d, "condition"), _str(d, "message"))


@dataclass(frozen=True)
class LocalReport:
    """What a server says about itself at /api/v1/ha/local (no secrets: counts and addresses)."""

    server_id: str = ""
    server_name: str = ""
    role: str = ""
    cluster_id: str = ""
    generation: int | None = None  # None: the server did not say
    mode: str = ""  # read-write, read-only-emergency or fenced
    fence: FenceReport | None = None  # the acting primary that superseded this server
    database: DatabaseReport = DatabaseReport()
    audit_backlog: BacklogReport | None = None
    data_age_seconds: float | None = None
    url: str = ""
    alarm: AlarmReport | None = None
    # whether its database answered just now, and its WAL position: a writable database's current one, a
    # replica's received one (a standby compares it with its own: the lag guard of automatic failover)
    database_ok: bool | None = None
    wal_lsn: str | None = None
    write_lease: LeaseReport | None = None
    # a read-only server being promoted: it confirms no writer's lease until it is the acting primary
    promoting: bool = False
    # a read-only server's automatic failover inputs (its gateway and witnesses) as its watch last confirmed
    failover_inputs: tuple[InputState, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The JSON of ``GET /api/v1/ha/local`` (its field names and shapes are read by older peers)."""
        return {
            "server_id": self.server_id, "server_name": self.server_name, "role": self.role,
            "cluster_id": self.cluster_id, "generation": self.generation, "mode": self.mode,
            "fence": self.fence.to_json() if self.fence is not None else None,
            "database": self.database.to_json(),
            "audit_backlog": self.audit_backlog.to_json() if self.audit_backlog is not None else None,
            "data_age_seconds": self.data_age_seconds, "url": self.url,
            "alarm": self.alarm.to_json() if self.alarm is not None else None,
            "database_ok": self.database_ok, "wal_lsn": self.wal_lsn,
            "write_lease": self.write_lease.to_json() if self.write_lease is not None else None,
            "promoting": self.promoting, "failover_inputs": [i.to_json() for i in self.failover_inputs],
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> LocalReport:
        """A peer's report; what it lacks (an older version) or sends malformed gets the default."""
        return cls(
            server_id=_str(d, "server_id"), server_name=_str(d, "server_name"), role=_str(d, "role"),
            cluster_id=_str(d, "cluster_id"), generation=_int(d, "generation"), mode=_str(d, "mode"),
            fence=FenceReport.from_json(_map(d, "fence")), database=DatabaseReport.from_json(_map(d, "database")),
            audit_backlog=BacklogReport.from_json(backlog) if (backlog := _map(d, "audit_backlog")) is not None
            else None,
            data_age_seconds=_num(d, "data_age_seconds"), url=_str(d, "url"),
            alarm=AlarmReport.from_json(_map(d, "alarm")), database_ok=_bool(d, "database_ok"),
            wal_lsn=_opt_str(d, "wal_lsn"), write_lease=LeaseReport.from_json(_map(d, "write_lease")),
            promoting=_bool(d, "promoting") is True, failover_inputs=inputs_from_json(d.get("failover_inputs")),
        )

    @property
    def writes_primary(self) -> bool:
        """Whether it reports a WAL position of the primary database and is not fenced."""
        return bool(self.wal_lsn) and self.mode != "fenced" and self.database.role == "primary"


@dataclass(frozen=True)
class PromoteAnswer:
    """What a read-only server answers to ``POST /api/v1/ha/peer/promote`` once it took over."""

    generation: int
    server_id: str
    name: str
    url: str

    def to_json(self) -> dict[str, Any]:
        return {"generation": self.generation, "server_id": self.server_id, "name": self.name, "url": self.url}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> PromoteAnswer:
        """Raises KeyError, TypeError or ValueError when it does not name the new generation."""
        return cls(int(d["generation"]), _str(d, "server_id"), _str(d, "name"), _str(d, "url"))


# --- judgements on reports (pure) --------------------------------------------------------------------------


def _furthest(positions: Iterable[str]) -> str | None:
    return max(positions, key=lambda p: parse_lsn(p) or 0, default=None)


def primary_wal(reports: Iterable[LocalReport | None]) -> str | None:
    """The primary database's WAL position as the app servers on it reported it (the furthest)."""
    return _furthest(r.wal_lsn for r in reports if r is not None and r.wal_lsn and r.database.role == "primary")


def writer_report(reports: Iterable[LocalReport | None]) -> WriterReport | None:
    """The primary database's WAL position as the app servers writing to it report it (the furthest; fenced
    servers do not count), with the write lease of the one reporting it."""
    best: WriterReport | None = None
    for r in reports:
        if r is None or not r.writes_primary:
            continue
        assert r.wal_lsn is not None
        candidate = WriterReport(r.wal_lsn, r.write_lease.seconds if r.write_lease is not None else None)
        if best is None or (parse_lsn(candidate.wal_lsn) or 0) > (parse_lsn(best.wal_lsn) or 0):
            best = candidate
    return best


# --- the clients ----------------------------------------------------------------------------------------------


def cluster_ssl_context(settings: Settings) -> ssl.SSLContext:
    """Verifies a peer's certificate against the cluster CA (OSError, ssl.SSLError when it cannot be read)."""
    return ssl.create_default_context(cafile=str(settings.path(settings.http.tls_ca)))


def no_answer(exc: BaseException) -> str:
    """Why a peer did not answer, in a few words."""
    if isinstance(exc, TimeoutError | httpx.TimeoutException):
        return "timed out"
    if isinstance(exc, httpx.ConnectError):
        return f"cannot connect ({str(exc).splitlines()[0] if str(exc) else 'refused'})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


@dataclass(frozen=True)
class HealthAnswer:
    """A peer's health check: the status it answered (None: it did not answer, ``error`` says why)."""

    status: int | None
    error: str | None = None
    server_id: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200

    @classmethod
    def of(cls, status: int, body: Callable[[], Any]) -> HealthAnswer:
        """From a status and the JSON body (read only for a 200), whose ``server.id`` names the server."""
        server_id = None
        if status == 200:
            with contextlib.suppress(ValueError):
                parsed = body()
                server = parsed.get("server") if isinstance(parsed, Mapping) else None
                sid = server.get("id") if isinstance(server, Mapping) else None
                server_id = sid if isinstance(sid, str) else None
        return cls(status, server_id=server_id)


def _url(base: str, path: str) -> str:
    return base.rstrip("/") + path


def _report(status: int, body: Any) -> LocalReport | None:
    return LocalReport.from_json(body) if status == 200 and isinstance(body, Mapping) else None


class PeerClient:
    """One HTTPS client for the peers of a server (TLS verified against the cluster CA); close it, or use it
    as an async context manager."""

    def __init__(self, ssl_context: ssl.SSLContext, timeout: float) -> None:
        self._http = httpx.AsyncClient(verify=ssl_context, timeout=timeout)

    @classmethod
    def for_settings(cls, settings: Settings, timeout: float | None = None) -> PeerClient:
        """With the cluster CA and ``ha.peer_timeout`` (or ``timeout``)."""
        return cls(cluster_ssl_context(settings), settings.ha.peer_timeout if timeout is None else timeout)

    async def __aenter__(self) -> PeerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def local(self, url: str) -> LocalReport | None:
        """The server's ``GET /api/v1/ha/local``, or None when it does not answer it."""
        try:
            r = await self._http.get(_url(url, LOCAL_PATH))
            return _report(r.status_code, r.json() if r.status_code == 200 else None)
        except (httpx.HTTPError, ssl.SSLError, OSError, ValueError):
            return None

    async def locals(self, urls: Sequence[str]) -> list[LocalReport | None]:
        """:meth:`local` of every URL at once, in their order."""
        return list(await asyncio.gather(*(self.local(u) for u in urls)))

    async def reports(self, urls: Sequence[str]) -> list[LocalReport]:
        """The reports of the URLs that answered; one that does not say its own URL gets the one asked."""
        got = await self.locals(urls)
        return [g if g.url else replace(g, url=u) for u, g in zip(urls, got, strict=True) if g is not None]

    async def health(self, url: str) -> HealthAnswer:
        try:
            r = await self._http.get(_url(url, HEALTH_PATH))
        except (httpx.HTTPError, ssl.SSLError, OSError) as exc:
            return HealthAnswer(None, no_answer(exc))
        return HealthAnswer.of(r.status_code, r.json)

    async def healthy(self, url: str) -> bool:
        """Whether the server's health check answers 200."""
        return (await self.health(url)).ok


@dataclass(frozen=True)
class PeerAnswer:
    """A peer's answer to a signed request: its status and JSON body (None when it sent no JSON)."""

    status: int
    body: Any
    text: str

    def error(self) -> tuple[str, str | None]:
        """The message and hint of an error answer (the start of its text when it is not an error JSON)."""
        err = self.body.get("error") if isinstance(self.body, Mapping) else None
        if isinstance(err, Mapping) and isinstance(err.get("message"), str):
            hint = err.get("hint")
            return err["message"], hint if isinstance(hint, str) else None
        return self.text[:200], None


class PeerUnreachable(Exception):  # noqa: N818 - the peer's state, not a bug
    """A request did not reach the peer (or no answer came back); ``reason`` names the transport error."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SyncPeerClient:
    """:class:`PeerClient` for a command that runs without an event loop."""

    def __init__(self, settings: Settings | ssl.SSLContext, timeout: float) -> None:
        """With the cluster CA of ``settings`` (or the given TLS context)."""
        ctx = settings if isinstance(settings, ssl.SSLContext) else cluster_ssl_context(settings)
        self._http = httpx.Client(verify=ctx, timeout=timeout)

    def __enter__(self) -> SyncPeerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.close()

    def local(self, url: str) -> LocalReport | None:
        try:
            r = self._http.get(_url(url, LOCAL_PATH))
            return _report(r.status_code, r.json() if r.status_code == 200 else None)
        except (httpx.HTTPError, ssl.SSLError, OSError, ValueError):
            return None

    def health(self, url: str) -> HealthAnswer:
        """The server's health check (and the server id it names)."""
        try:
            r = self._http.get(_url(url, HEALTH_PATH))
        except (httpx.HTTPError, ssl.SSLError, OSError) as exc:
            return HealthAnswer(None, no_answer(exc))
        return HealthAnswer.of(r.status_code, r.json)

    def post_signed(self, url: str, path: str, body: Mapping[str, Any], peer_key: bytes) -> PeerAnswer:
        """POST ``body`` to ``url`` + ``path``, signed with the cluster's peer key (crypto.peerauth); raises
        :class:`PeerUnreachable`."""
        raw = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", peerauth.HEADER: peerauth.sign(peer_key, "POST", path, raw)}
        try:
            r = self._http.post(_url(url, path), content=raw, headers=headers)
        except (httpx.HTTPError, OSError) as exc:
            raise PeerUnreachable(type(exc).__name__) from None
        try:
            parsed = r.json()
        except ValueError:
            parsed = None
        return PeerAnswer(r.status_code, parsed, r.text)
