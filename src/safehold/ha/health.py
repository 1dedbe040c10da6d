"""What each health endpoint answers for a server's state: pure decisions, state in, status code out.

Load balancers and orchestrators poll a server every second or two to know whether to send it traffic, and
which traffic: writes go to the server that takes them now, reads may go to a read-only server serving in
emergency mode.  Two conventions are answered, each as its users expect it:

1. Patroni's (``/api/v1/health/<check>``): one endpoint per question, 200 when the answer is yes, 503 when
   it is no, with the reason in one sentence (:data:`CHECKS`):

   | check | 200 when |
   |---|---|
   | ``live`` | the process serves HTTP |
   | ``ready`` | it can do its role's job now: database up (and for a read-only server, its replica streams) |
   | ``writable`` | a primary, secondary or standalone server that accepts writes now: not fenced, database up and read-write, write lease valid |
   | ``primary`` | the acting primary (or a standalone server), writable as above |
   | ``readonly`` | a read-only server that serves users itself (read-only emergency mode) |
   | ``replica`` | its database is a replica that streams, with data no older than the limit |

2. Vault's (``/v1/sys/health``): one endpoint, one code per state (:func:`vault_answer`): active (writable)
   200, standby (a read-only server that sends users on, or a writer that cannot write now) 429,
   performance standby (a read-only server serving users itself) 473, sealed (fenced, or the database does not
   answer) 503; the query parameters change the codes as Vault's do (:func:`vault_codes`).

No I/O here: the web layer gathers a :class:`ServerState` (``web/api/health.py``) and answers what these say.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from safehold.domain import ServerRole

WRITERS = frozenset({ServerRole.PRIMARY, ServerRole.SECONDARY, ServerRole.STANDALONE})
OK, UNAVAILABLE = 200, 503


class Database(StrEnum):
    """The server's own database as a health check saw it (the values never change: they are in the body)."""

    OK = "ok"                    # accepts connections and answered a query
    REFUSING = "refusing"        # answers, but refuses new connections (starting up, shutting down, recovering)
    UNAVAILABLE = "unavailable"  # no answer
    UNCHECKED = "unchecked"      # not asked (``live`` never asks)


@dataclass(frozen=True)
class ServerState:
    """One server at one moment, as the health endpoints need it."""

    role: ServerRole
    database: Database
    fenced: bool = False             # superseded by a newer primary: it writes nothing
    in_recovery: bool = False        # its database is a replica (hot standby)
    database_read_only: bool = False  # its database refuses writes by default (fencing sets it)
    lease_valid: bool = True         # its write lease holds (True where no lease is needed)
    redirecting: bool = False        # users are sent to another server (a read-only or fenced server)
    streaming: bool = False          # its replica streams from the primary database
    data_age: float | None = None    # how old its replica's data may be, in seconds (None: unknown)


@dataclass(frozen=True)
class Verdict:
    """A check's answer: yes or no, and why (one sentence, no secret)."""

    ok: bool
    reason: str

    @property
    def status(self) -> int:
        return OK if self.ok else UNAVAILABLE


FENCED = ("fenced: a newer primary took over the cluster; this server refuses every change until an operator "
          "rejoins it")


def _yes(reason: str) -> Verdict:
    return Verdict(True, reason)


def _no(reason: str) -> Verdict:
    return Verdict(False, reason)


def _database_down(s: ServerState) -> Verdict | None:
    if s.database is Database.REFUSING:
        return _no("the database refuses connections now (it is starting up, shutting down or recovering)")
    if s.database is not Database.OK:
        return _no("the database does not answer")
    return None


def live(s: ServerState) -> Verdict:
    return _yes("the server answers HTTP")


def ready(s: ServerState) -> Verdict:
    """Can the server do its role's job now: a writer's database answers; a read-only server's replica also
    streams from the primary database (a fenced server's job is over until it is rejoined)."""
    if s.fenced:
        return _no(FENCED)
    if (down := _database_down(s)) is not None:
        return down
    if s.role is ServerRole.READONLY:
        if not s.in_recovery:
            return _no("its database is not a replica any more (promoted: the server takes over in a moment)")
        if not s.streaming:
            return _no("its replica is not streaming from the primary database")
        return _yes("its replica streams from the primary database")
    return _yes("its database answers")


def writable(s: ServerState) -> Verdict:
    """Does the server accept writes now: what ``Runtime.write`` would let through, and a database that takes
    them."""
    if s.role not in WRITERS:
        return _no("a read-only server takes no writes")
    if s.fenced:
        return _no(FENCED)
    if (down := _database_down(s)) is not None:
        return down
    if s.in_recovery:
        return _no("its database is a replica (read-only)")
    if s.database_read_only:
        return _no("its database refuses writes (default_transaction_read_only is on)")
    if not s.lease_valid:
        return _no("its write lease ran out: it cannot confirm that it is still the cluster's writer until a "
                   "peer answers")
    return _yes("it accepts writes")


def primary(s: ServerState) -> Verdict:
    """Is this the acting primary: the primary (or a standalone server, its own primary), writable now."""
    if s.role is ServerRole.SECONDARY:
        return _no("a secondary: the acting primary is another server")
    if s.role is ServerRole.READONLY:
        return _no("a read-only server is not the primary")
    w = writable(s)
    return _yes("the acting primary: it accepts writes") if w.ok else w


def readonly(s: ServerState) -> Verdict:
    """Is this a read-only server that serves users itself (read-only emergency mode)."""
    if s.role is not ServerRole.READONLY:
        return _no(f"not a read-only server (a {s.role.value} server{', fenced' if s.fenced else ''})")
    if (down := _database_down(s)) is not None:
        return down
    if s.redirecting:
        return _no("it sends users to the primary or a secondary, which serve them")
    return _yes("it serves users itself in read-only emergency mode")


def replica(s: ServerState, max_lag: float) -> Verdict:
    """Is its database a replica that streams, with data at most ``max_lag`` seconds old (whatever the role:
    what is asked is the database)."""
    if (down := _database_down(s)) is not None:
        return down
    if not s.in_recovery:
        return _no("its database is not a replica")
    if not s.streaming:
        return _no("its replica is not streaming from the primary database")
    if s.data_age is None:
        return _no("how old its replica's data is, is unknown")
    if s.data_age > max_lag:
        return _no(f"its data may be {s.data_age:.1f} s old, over the limit of {max_lag:g} s")
    return _yes(f"streaming; its data is at most {s.data_age:.1f} s old (limit {max_lag:g} s)")


#: the checks without a parameter, by the name in their path (``replica`` takes its lag limit)
CHECKS: Mapping[str, Callable[[ServerState], Verdict]] = {
    "live": live, "ready": ready, "writable": writable, "primary": primary, "readonly": readonly,
}


# --- Vault's convention ------------------------------------------------------------------------------


class BadParameter(ValueError):
    """A query parameter Vault would refuse with 400 (its name, and why)."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name, self.message = name, message


@dataclass(frozen=True)
class VaultCodes:
    """The codes ``/v1/sys/health`` answers, as its query parameters set them (Vault's defaults)."""

    standbyok: bool = False
    perfstandbyok: bool = False
    active: int = 200
    standby: int = 429
    perfstandby: int = 473
    sealed: int = 503
    uninit: int = 501          # never answered: a serving Safehold server is always initialised
    drsecondary: int = 472     # never answered: Safehold has no disaster-recovery secondaries


#: the strings Vault takes as booleans (Go's ``strconv.ParseBool``; an empty value is false)
TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
FALSE = frozenset({"", "0", "f", "F", "FALSE", "false", "False"})
#: a code must be a final HTTP status (Vault takes any integer, but anything else breaks the HTTP exchange)
LOWEST, HIGHEST = 200, 599
_INTEGER = re.compile(r"[+-]?[0-9]{1,9}")


def _flag(query: Mapping[str, str], name: str) -> bool:
    value = query.get(name, "")
    if value not in TRUE and value not in FALSE:
        raise BadParameter(name, f"{name} must be true or false")
    return value in TRUE


def _code(query: Mapping[str, str], default: int, *names: str) -> int:
    """The code the first of ``names`` in the query gives (``perfstandbycode`` is taken as another spelling of
    Vault's ``performancestandbycode``), else ``default``."""
    name = next((n for n in names if n in query), None)
    if name is None:
        return default
    value = query[name]
    code = int(value) if _INTEGER.fullmatch(value) else None
    if code is None or not LOWEST <= code <= HIGHEST:
        raise BadParameter(name, f"{name} must be an HTTP status code from {LOWEST} to {HIGHEST}")
    return code


def vault_codes(query: Mapping[str, str]) -> VaultCodes:
    """The codes as the query asks (each parameter's first value; others are ignored, as Vault does); raises
    :class:`BadParameter` for a value Vault refuses too (a boolean or a code that is not one), or for a code
    that is not a final HTTP status."""
    d = VaultCodes()
    return VaultCodes(
        standbyok=_flag(query, "standbyok"), perfstandbyok=_flag(query, "perfstandbyok"),
        active=_code(query, d.active, "activecode"), standby=_code(query, d.standby, "standbycode"),
        perfstandby=_code(query, d.perfstandby, "performancestandbycode", "perfstandbycode"),
        sealed=_code(query, d.sealed, "sealedcode"), uninit=_code(query, d.uninit, "uninitcode"),
        drsecondary=_code(query, d.drsecondary, "drsecondarycode"))


@dataclass(frozen=True)
class VaultAnswer:
    """The code and the state flags of Vault's body."""

    status: int
    sealed: bool
    standby: bool
    performance_standby: bool


def vault_answer(s: ServerState, codes: VaultCodes = VaultCodes()) -> VaultAnswer:
    """Vault's order: sealed (fenced, or the database does not answer), then a performance standby (a
    read-only server serving users itself; ``standbyok`` does not apply to it), then a standby (a read-only
    server that sends users on, or a writer that cannot write now), else active."""
    sealed = s.fenced or s.database is not Database.OK
    active = not sealed and writable(s).ok
    performance = not sealed and s.role is ServerRole.READONLY and not s.redirecting
    if sealed:
        status = codes.sealed
    elif active:
        status = codes.active
    elif performance:
        status = codes.active if codes.perfstandbyok else codes.perfstandby
    else:
        status = codes.active if codes.standbyok else codes.standby
    return VaultAnswer(status, sealed=sealed, standby=not active, performance_standby=performance)
