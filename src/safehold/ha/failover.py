"""Automatic failover as a pure decision (no I/O here).

A read-only server with automatic failover enabled pings the primary every ``ping_interval``
seconds: its database (what a promotion would replace) and its app (recorded for the message).
A round fails when the primary **database** is unreachable: promoting while that database is
alive would split the data, whatever its app does.

After ``ping_iterations`` consecutive failed rounds the standby promotes itself, unless:

- its gateway and every configured witness target are unreachable too: the fault is on its own
  side, so it only raises the alarm ``StandbyIsolated`` (once) and clears it when its side, or
  the primary, is reachable again;
- it may not promote (``may_promote = false``): it raises ``FailoverNotAllowed`` instead.

Two guards stand before every automatic promotion (DESIGN §7):

- the **lag guard**: at the last moment this server heard from the primary (an app server on the
  primary database reporting its WAL position), its replica was streaming and had received all but
  at most ``max_lag_bytes`` of it (counting what arrived since).  Otherwise the alarm
  ``FailoverLagTooHigh`` (once) and no promotion: ``safehold ha promote --force`` is the override;
- the **write-lease guard**: not before the primary's write lease (as it reported it) has surely run
  out, counted from the first failed ping of the current streak: a frozen primary that thaws refuses
  every write once its lease is out, so nothing it acknowledges afterwards can be lost.

A successful round resets the count (and clears a raised alarm). When no gateway is known and no
witness is configured, isolation cannot be detected and the standby promotes after the limit: the
operator is warned of that when configuring it ('safehold ha failover').

The executor (:mod:`safehold.ha.failover_agent`) gathers an :class:`Observation` each round and
carries out the one :class:`Decision` that :func:`decide` returns; the gateway and witnesses need
only be probed in a round where :func:`needs_witnesses` says so.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from safehold.config import FailoverSection, Settings
from safehold.ha.lsn import lag_bytes
from safehold.ha.probe import normalise_host, parse_target

#: Alarm conditions (the first argument of a ``RaiseAlarm`` event); the values never change.
STANDBY_ISOLATED = "StandbyIsolated"
FAILOVER_NOT_ALLOWED = "FailoverNotAllowed"
FAILOVER_LAG = "FailoverLagTooHigh"


class Action(StrEnum):
    NONE = "none"
    PROMOTE = "promote"
    RAISE_ALARM = "raise_alarm"
    CLEAR_ALARM = "clear_alarm"


@dataclass(frozen=True)
class Decision:
    """What to do after one round, with one human sentence that is logged (and asserted in tests).
    For RAISE_ALARM, ``condition`` and ``message`` are the event's arguments; for CLEAR_ALARM,
    ``message`` is its text."""

    action: Action
    message: str
    condition: str | None = None


@dataclass(frozen=True)
class WriterReport:
    """What an app server on the primary database said in this round: the database's WAL position and
    the server's write lease (seconds; None if it did not say)."""

    wal_lsn: str
    lease_seconds: float | None = None


@dataclass(frozen=True)
class ReplicaReport:
    """This server's replica in this round: is it streaming, how much WAL has it received, and how long
    ago its WAL receiver last heard from the primary (None: unknown)."""

    streaming: bool
    received_lsn: str | None
    heard_seconds_ago: float | None = 0.0


@dataclass(frozen=True)
class Contact:
    """The last moment this server heard from the primary, and where its replica stood then."""

    at: float
    primary_lsn: str
    streaming: bool
    lease_seconds: float | None


@dataclass(frozen=True)
class Observation:
    """One round of pings as the standby saw them.

    ``gateway_ok`` is None when no gateway is known (or it was not probed); ``witnesses_ok`` holds
    one result per configured witness target, empty when none is configured (or they were not
    probed: they are consulted only in a round where :func:`needs_witnesses` is true).  ``now`` is
    the round's start on a monotonic clock; ``writer`` is None when no app server on the primary
    database answered; ``replica`` None when the replica could not be read."""

    primary_db_ok: bool
    primary_app_ok: bool | None = None
    gateway_ok: bool | None = None
    witnesses_ok: tuple[bool, ...] = ()
    now: float = 0.0
    writer: WriterReport | None = None
    replica: ReplicaReport | None = None


@dataclass(frozen=True)
class FailoverState:
    """What the policy remembers between rounds. ``promoted`` means the promotion was ordered (once;
    after that the policy does nothing more)."""

    consecutive_failures: int = 0
    alarm: str | None = None  # the condition of the alarm raised, if any
    promoted: bool = False
    failing_since: float | None = None  # start of the first failed round of the current streak
    contact: Contact | None = None  # the last time the primary was heard from

    @property
    def alarm_raised(self) -> bool:
        return self.alarm is not None


@dataclass(frozen=True)
class FailoverPolicy:
    """The parts of the failover settings that the decision depends on."""

    ping_iterations: int = 12
    may_promote: bool = True
    max_lag_bytes: int = 1024 * 1024
    # a WAL receiver that says "streaming" but heard nothing for longer is cut off (the primary sends a
    # keepalive every wal_sender_timeout / 2 = 5 s when idle)
    stream_silence: float = 15.0
    probe_timeout: float = 2.0  # a ping that fails may have started just before the primary froze
    writer_lease: float = 10.0  # the primary's write lease when it did not report one

    @classmethod
    def from_section(cls, section: FailoverSection, *, probe_timeout: float = 2.0,
                     writer_lease: float = 10.0) -> FailoverPolicy:
        return cls(ping_iterations=section.ping_iterations, may_promote=section.may_promote,
                   max_lag_bytes=section.max_lag_bytes, probe_timeout=probe_timeout, writer_lease=writer_lease)


def _at_limit(failures: int, policy: FailoverPolicy) -> bool:
    return failures >= policy.ping_iterations


def needs_witnesses(state: FailoverState, primary_db_ok: bool, policy: FailoverPolicy) -> bool:
    """Whether this round's decision looks at the gateway and the witnesses: only when the primary
    database failed and the count reaches the limit while a promotion is still possible."""
    if state.promoted or primary_db_ok or not policy.may_promote:
        return False
    return _at_limit(state.consecutive_failures + 1, policy)


def isolation_detectable(obs: Observation) -> bool:
    return obs.gateway_ok is not None or bool(obs.witnesses_ok)


def isolated(obs: Observation) -> bool:
    """The gateway (if known) and every witness are unreachable: the fault is on this side."""
    return isolation_detectable(obs) and obs.gateway_ok is not True and not any(obs.witnesses_ok)


def _describe_primary(obs: Observation) -> str:
    app = {True: "its app answers", False: "its app does not answer either", None: "its app was not checked"}
    return f"primary database unreachable ({app[obs.primary_app_ok]})"


def _own_side(obs: Observation) -> str:
    parts = []
    if obs.gateway_ok is not None:
        parts.append(f"gateway {'reachable' if obs.gateway_ok else 'unreachable'}")
    if obs.witnesses_ok:
        up = sum(obs.witnesses_ok)
        parts.append(f"{up} of {len(obs.witnesses_ok)} witness targets reachable")
    return ", ".join(parts) or "no gateway known and no witness configured"


def streaming(replica: ReplicaReport | None, policy: FailoverPolicy) -> bool:
    """Whether the replica streams from its primary: its WAL receiver says so and heard from it lately."""
    return (replica is not None and replica.streaming and replica.heard_seconds_ago is not None
            and replica.heard_seconds_ago <= policy.stream_silence)


def remember_contact(state: FailoverState, obs: Observation, policy: FailoverPolicy) -> FailoverState:
    """The state with this round's contact with the primary, if there was one."""
    if obs.writer is None or not obs.primary_db_ok:
        return state
    return replace(state, contact=Contact(obs.now, obs.writer.wal_lsn, streaming(obs.replica, policy),
                                          obs.writer.lease_seconds))


def lag_problem(state: FailoverState, obs: Observation, policy: FailoverPolicy) -> str | None:
    """Why the lag guard forbids promoting now (None: it allows it)."""
    c = state.contact
    if c is None:
        return ("this server never heard from the primary since it started watching, so it cannot tell how far "
                "behind its replica is")
    if not c.streaming:
        return (f"when this server last heard from the primary ({obs.now - c.at:.0f} s ago) its replica was not "
                "streaming, so it may lack acknowledged writes")
    received = obs.replica.received_lsn if obs.replica is not None else None
    lag = lag_bytes(c.primary_lsn, received)
    if lag is None:
        return "this server's replica cannot be read, so how far behind it is is unknown"
    if lag > policy.max_lag_bytes:
        return (f"its replica lacks {lag} bytes of the WAL the primary had when last heard from, more than "
                f"max_lag_bytes = {policy.max_lag_bytes}")
    return None


def lease_wait(state: FailoverState, obs: Observation, policy: FailoverPolicy) -> float:
    """Seconds until the primary's write lease has surely run out (0: it has)."""
    if state.failing_since is None:
        return 0.0
    lease = (state.contact.lease_seconds if state.contact is not None and state.contact.lease_seconds is not None
             else policy.writer_lease)
    return max(0.0, state.failing_since + policy.probe_timeout + lease - obs.now)


def _alarm_once(state: FailoverState, failed: FailoverState, condition: str, still: str,
                message: str) -> tuple[FailoverState, Decision]:
    """Raise the alarm ``condition`` with ``message`` unless it is raised already (then say ``still``)."""
    if state.alarm == condition:
        return failed, Decision(Action.NONE, still)
    return replace(failed, alarm=condition), Decision(Action.RAISE_ALARM, message, condition=condition)


def decide(state: FailoverState, obs: Observation,
           policy: FailoverPolicy) -> tuple[FailoverState, Decision]:
    """The next state and the one action to carry out after a round."""
    if state.promoted:
        return state, Decision(Action.NONE, "promotion already ordered; nothing more to do")
    if obs.primary_db_ok:
        fresh = remember_contact(FailoverState(contact=state.contact), obs, policy)
        if state.alarm is not None:
            return fresh, Decision(Action.CLEAR_ALARM, f"{state.alarm} cleared: the primary database is "
                                                       "reachable again")
        return fresh, Decision(Action.NONE, "primary database reachable")

    failures = min(state.consecutive_failures + 1, policy.ping_iterations)
    n = f"{failures}/{policy.ping_iterations}"
    failed = replace(state, consecutive_failures=failures,
                     failing_since=state.failing_since if state.failing_since is not None else obs.now)
    if not _at_limit(failures, policy):
        return failed, Decision(Action.NONE, f"ping {n} failed: {_describe_primary(obs)}")

    down = f"{_describe_primary(obs)} for {policy.ping_iterations} pings in a row"
    if not policy.may_promote:
        return _alarm_once(
            state, failed, FAILOVER_NOT_ALLOWED,
            f"ping {n} failed: {_describe_primary(obs)}; this server may not promote itself (alarm raised)",
            f"{down}, but this server may not promote itself (may_promote = false): promote a server by hand")

    if isolated(obs):
        return _alarm_once(
            state, failed, STANDBY_ISOLATED,
            f"ping {n} failed: {_describe_primary(obs)}; still isolated ({_own_side(obs)}), not promoting",
            f"{down}, but so is this server's own side ({_own_side(obs)}): the fault is probably here; "
            "not promoting")

    lagging = lag_problem(failed, obs, policy)
    if lagging is not None:
        return _alarm_once(
            state, failed, FAILOVER_LAG,
            f"ping {n} failed: {_describe_primary(obs)}; not promoting: {lagging} (alarm raised)",
            f"{down}, but this server does not promote itself: {lagging}; promote by hand if the loss is "
            "acceptable ('safehold ha promote --force')")

    if state.alarm is not None:
        # the own side is back while the primary is still down: clear first; the next round (with
        # fresh pings) promotes if the primary database is still unreachable
        return replace(failed, alarm=None), Decision(
            Action.CLEAR_ALARM, f"{state.alarm} cleared: this server's own side is reachable again "
                                f"({_own_side(obs)}); the primary database is still unreachable")

    wait = lease_wait(failed, obs, policy)
    if wait > 0:
        return failed, Decision(Action.NONE, f"ping {n} failed: {_describe_primary(obs)}; waiting {wait:.1f} s "
                                             "more for the primary's write lease to run out before promoting")

    why = (_own_side(obs) if isolation_detectable(obs)
           else "isolation cannot be detected: no gateway known and no witness configured")
    return replace(failed, promoted=True), Decision(
        Action.PROMOTE, f"{_describe_primary(obs)} for {policy.ping_iterations} pings in a row ({why}): "
                        "promoting this server")


# --- validation ---------------------------------------------------------------------


def _bounds(field: str) -> tuple[Any, Any]:
    lo = hi = None
    for m in FailoverSection.model_fields[field].metadata:
        lo = getattr(m, "ge", lo)
        hi = getattr(m, "le", hi)
    return lo, hi


PING_INTERVAL_BOUNDS = _bounds("ping_interval")
PING_ITERATIONS_BOUNDS = _bounds("ping_iterations")
MAX_WITNESSES = 3


def _fmt(v: Any) -> str:
    return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)


def range_problems(values: Mapping[str, Any]) -> list[tuple[str, str]]:
    """:func:`range_errors`, each message with the setting it is about."""
    problems = []
    for name, (lo, hi) in (("ping_interval", PING_INTERVAL_BOUNDS), ("ping_iterations", PING_ITERATIONS_BOUNDS)):
        if name in values and values[name] is not None and not lo <= values[name] <= hi:
            problems.append((name, f"{name} must be between {_fmt(lo)} and {_fmt(hi)} (got {_fmt(values[name])})"))
    return problems


def range_errors(values: Mapping[str, Any]) -> list[str]:
    """Clear messages for out-of-range ``ping_interval`` / ``ping_iterations`` values (before a
    FailoverSection is built from them)."""
    return [m for _, m in range_problems(values)]


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host.lower().rstrip(".") in ("localhost", "localhost.localdomain")


def validate_policy(section: FailoverSection, own_addresses: Iterable[str] | Mapping[str, str],
                    resolved: Mapping[str, Iterable[str]] | None = None) -> list[str]:
    """Everything wrong with a failover configuration, as messages (empty: fine).

    ``own_addresses`` are the cluster's own hosts and their IP addresses (this server's public URL
    and listen address, the primary database, every registered server), optionally mapped to what
    they are ("the primary database"); ``resolved`` may give the addresses a witness host name
    resolves to (looked up by the caller) so that a name of one of the cluster's own servers is
    caught too. A loopback witness pinged with ICMP is refused as well: it always answers (with a
    port it is a TCP check of something that can go away, e.g. a local probe agent)."""
    return [m for _, m in policy_problems(section, own_addresses, resolved)]


def policy_problems(section: FailoverSection, own_addresses: Iterable[str] | Mapping[str, str],
                    resolved: Mapping[str, Iterable[str]] | None = None) -> list[tuple[str, str]]:
    """:func:`validate_policy`, each message with the setting it is about: ``ping_interval``,
    ``ping_iterations``, ``witness_targets`` (their number), ``witness_targets.<index>`` (one of
    them) or ``gateway`` (for a form that shows each message next to its field)."""
    problems = range_problems(section.model_dump())
    what = dict(own_addresses) if isinstance(own_addresses, Mapping) else {a: "" for a in own_addresses}
    own = {normalise_host(a): w for a, w in what.items() if a}
    seen: dict[str, str] = {}
    if len(section.witness_targets) > MAX_WITNESSES:
        problems.append(("witness_targets",
                         f"at most {MAX_WITNESSES} witness targets (got {len(section.witness_targets)})"))
    for i, text in enumerate(section.witness_targets):
        where = f"witness_targets.{i}"
        try:
            t = parse_target(text)
        except ValueError as exc:
            problems.append((where, f"witness {exc}"))
            continue
        if t.key in seen:
            problems.append((where, f"witness {text!r} is given twice (as {seen[t.key]!r} too)"))
            continue
        seen[t.key] = text
        addresses = {normalise_host(t.host)} | {normalise_host(a) for a in (resolved or {}).get(t.host, ())}
        clash = sorted(addresses & own.keys())
        if clash:
            named = ", ".join(f"{a}: {own[a]}" if own[a] else a for a in clash)
            problems.append((where, f"witness {text!r} is one of this cluster's own addresses ({named}): a "
                                    "witness must tell that this server's own side of the network is up, "
                                    "independently of the cluster"))
        elif t.port is None and any(_loopback(a) for a in addresses):
            problems.append((where, f"witness {text!r} is a loopback address: it always answers, so it tells "
                                    "nothing about the network"))
    if section.gateway is not None:
        try:
            gw = parse_target(section.gateway)
        except ValueError as exc:
            problems.append(("gateway", f"gateway {exc}"))
        else:
            if gw.port is None and _loopback(gw.host):
                problems.append(("gateway", f"gateway {section.gateway!r} is a loopback address: it always answers"))
    return problems


def warnings_for(section: FailoverSection, *, default_gateway: str | None,
                 ping_available: bool) -> list[str]:
    """What the operator should know about a (valid) configuration."""
    out = []
    if section.gateway is None and default_gateway is None and not section.witness_targets:
        out.append("no gateway is known and no witness target is configured: this server cannot tell its "
                   "own network failure from the primary's, and would promote itself after "
                   f"{section.ping_iterations} failed pings even when it is the one cut off "
                   "(add --witness or --gateway)")
    if not ping_available:
        icmp = [t for t in [*section.witness_targets, *([section.gateway] if section.gateway else [])]
                if _is_icmp(t)]
        if icmp:
            out.append(f"there is no 'ping' program on this host: {', '.join(icmp)} cannot be pinged and count "
                       "as unreachable (give host:port for a TCP check instead)")
        elif section.gateway is None and default_gateway is not None:
            out.append(f"there is no 'ping' program on this host: the default gateway {default_gateway} cannot "
                       "be checked")
    return out


def _is_icmp(text: str) -> bool:
    try:
        return parse_target(text).port is None
    except ValueError:
        return False


# --- checking a policy against this server and its cluster ('safehold ha failover', the settings page) ---


def resolve_host(host: str) -> set[str]:
    """The IP addresses ``host`` resolves to (empty when it does not); blocking (DNS)."""
    try:
        return {str(info[4][0]) for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)}
    except (OSError, UnicodeError):
        return set()


def cluster_addresses(settings: Settings, servers: Iterable[Any]) -> dict[str, str]:
    """The cluster's own hosts and the IP addresses they resolve to, each with what it is (``servers``:
    the registered servers, rows with ``name``, ``url``, ``hostname`` and ``dns_name``); blocking (DNS)."""
    from safehold.runtime import public_url

    named: dict[str, list[str]] = {}

    def add(host: str | None, what: str) -> None:
        if host and host not in ("0.0.0.0", "::"):  # noqa: S104 - compared, not bound
            named.setdefault(host, [])
            if what not in named[host]:
                named[host].append(what)

    add(settings.ha.primary_db_host, "the primary database")
    add(urlsplit(public_url(settings)).hostname, "this server")
    add(settings.http.listen, "this server")
    if settings.database.mode != "external":
        add(settings.database.host, "this server's database")
    for s in servers:
        for host in (urlsplit(s.url).hostname if s.url else None, s.hostname, getattr(s, "dns_name", "")):
            add(host, f"server {s.name}")
    out = {h: ", ".join(w) for h, w in named.items()}
    for host, what in list(named.items()):
        for ip in resolve_host(host):
            out.setdefault(ip, ", ".join(what))
    return out


def witnesses_checkable(candidate: FailoverSection) -> bool:
    """Whether the witness targets are checked against the cluster's own addresses: there are some, and
    every one of them parses (otherwise their own messages come first)."""
    try:
        for t in candidate.witness_targets:
            parse_target(t)
    except ValueError:
        return False
    return bool(candidate.witness_targets)


def witness_addresses(settings: Settings, candidate: FailoverSection,
                      servers: Iterable[Any]) -> tuple[dict[str, str], dict[str, set[str]]]:
    """The ``own_addresses`` and ``resolved`` arguments of :func:`policy_problems` for ``candidate`` on
    the server of ``settings`` whose cluster registers ``servers`` (both empty unless
    :func:`witnesses_checkable`); blocking (DNS)."""
    if not witnesses_checkable(candidate):
        return {}, {}
    own = cluster_addresses(settings, servers)
    return own, {h: resolve_host(h) for h in {parse_target(w).host for w in candidate.witness_targets}}


def role_problems(settings: Settings, enabling: bool) -> list[tuple[str, str]]:
    """Why automatic failover cannot be turned on on this server (field ``enabled``)."""
    from safehold.domain import ServerRole

    if not enabling:
        return []
    role = settings.server.role
    if role != ServerRole.READONLY:
        return [("enabled", f"automatic failover runs on a read-only server only, and this is a {role} server: "
                            "only a read-only server has a replica of the primary database to promote")]
    if not (settings.ha.primary_db_host and settings.ha.primary_db_port):
        return [("enabled", "the primary database is not known (ha.primary_db_host/ha.primary_db_port): join "
                            "this server with 'safehold ha join' first")]
    return []


def check_policy(settings: Settings, candidate: FailoverSection, servers: Iterable[Any], *,
                 enabling: bool) -> list[tuple[str, str]]:
    """Everything wrong with ``candidate`` (built with ``model_copy(update=...)``, not yet validated) as
    the failover policy of the server of ``settings``, whose cluster registers ``servers``: ranges,
    witnesses (also against the cluster's own addresses, resolved), gateway, and whether it may be
    turned on here (``enabling``).  Each message comes with its field (see :func:`policy_problems`).
    Blocking: it resolves host names."""
    problems = policy_problems(candidate, *witness_addresses(settings, candidate, servers))
    return problems or role_problems(settings, enabling) or lease_problems(settings, candidate, enabling)


def lease_problems(settings: Settings, candidate: FailoverSection, enabling: bool) -> list[tuple[str, str]]:
    """The write lease of the cluster's writers (this server's ``ha.write_lease_seconds``, the same on every
    server) must run out before this standby may promote itself (field ``ping_interval``)."""
    from safehold.config import lease_problem

    if not (enabling or candidate.enabled):
        return []
    problem = lease_problem(settings.ha.write_lease, settings.ha.check_interval, candidate.model_copy(
        update={"enabled": True}), settings.ha.peer_timeout)
    return [("ping_interval", problem + " (or lower ha.write_lease_seconds on every server of the cluster)")] \
        if problem else []
