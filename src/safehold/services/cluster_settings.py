"""The cluster's alert settings and automatic failover policy, stored in the database.

Every server follows the same settings: they live in ``cluster_settings``, which replicates to every
read-only server like all data, so a promoted server alerts the same receivers and follows the same
policy as the primary it replaces.

1. **Import once.** At the start of a writable server (and when a read-only server becomes one), an
   ``[alerts]`` / ``[ha.failover]`` section of its safehold.toml that configures something (not just
   the defaults) is stored if the database has none yet (secrets read from their files and sealed);
   from then on the database wins and the sections in safehold.toml are ignored (the log says so).
2. **Read.** :func:`alerts_in_force` / :func:`failover_in_force` give what the database holds; while it
   holds nothing (nothing imported yet: a read-only server of a primary that never started with this
   version), this server's own safehold.toml.
3. **Change.** :func:`change_alerts` / :func:`change_failover` on a writable server: one transaction
   that reads the row locked, applies a pure change, seals the secrets (the row's key as associated
   data), stores it as a compare-and-set on its version, and audits.
4. **Follow.** :func:`follow_alerts` re-reads the versions every cycle and reconfigures the alert
   dispatcher when they change; :func:`follow_failover` runs the failover watch of a read-only server
   with the policy its replica holds, restarting it when the policy changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import ValidationError

from safehold.alerts.dispatch import Dispatcher
from safehold.alerts.settings import (
    AlertConfig,
    AlertsSection,
    from_stored,
    inline_secrets,
    secret_problems,
    to_stored,
)
from safehold.audit.chain import AuditEvent
from safehold.config import FailoverSection, Settings
from safehold.crypto.barrier import Barrier, Secret
from safehold.crypto.envelope import Keyring
from safehold.domain import AuditAction, AuditResult
from safehold.errors import Conflict, DatabaseError, InvalidInput, SafeholdError
from safehold.runtime import Runtime
from safehold.storage import cluster_settings as store
from safehold.storage.db import AsyncConnection

log = logging.getLogger(__name__)

ALERTS = "alerts"
FAILOVER = "failover"
KEYS = (ALERTS, FAILOVER)
FROM_FILE = "safehold.toml"
T = TypeVar("T")


@dataclass(frozen=True)
class InForce(Generic[T]):
    """Settings in force and where they come from: the database (``version`` set) or, while it holds
    none, this server's safehold.toml (``version`` None)."""

    value: T
    version: int | None = None
    updated_at: dt.datetime | None = None
    updated_by: str = ""

    @property
    def source(self) -> str:
        return "database" if self.version is not None else FROM_FILE

    def describe(self) -> str:
        if self.version is None:
            return f"from this server's {FROM_FILE} (the database holds none yet)"
        at = self.updated_at.strftime("%Y-%m-%d %H:%M:%S UTC") if self.updated_at else "?"
        return f"cluster-wide (database), version {self.version}, changed {at} by {self.updated_by or '?'}"


def seal(keyring: Keyring, key: str, values: dict[str, str]) -> bytes | None:
    """The secrets of the setting ``key``, sealed for its row (None when it has none)."""
    if not values:
        return None
    return Barrier(keyring).seal(Secret.CLUSTER_SETTING, key, json.dumps(values, sort_keys=True).encode())


def unseal(keyring: Keyring, key: str, blob: bytes | None) -> dict[str, str]:
    if blob is None:
        return {}
    values = json.loads(Barrier(keyring).open(Secret.CLUSTER_SETTING, key, blob))
    return {str(k): str(v) for k, v in values.items()}


# --- reading ------------------------------------------------------------------------------------------


def _alerts_of(row: store.StoredSetting, keyring: Keyring) -> AlertConfig:
    try:
        return from_stored(row.value, unseal(keyring, ALERTS, row.secrets_enc))
    except ValidationError:
        raise DatabaseError("the stored alert settings are not valid (edited by hand?)",
                            hint="set them again with 'safehold alerts set'") from None


def _failover_of(row: store.StoredSetting) -> FailoverSection:
    try:
        return FailoverSection.model_validate(row.value)
    except ValidationError:
        raise DatabaseError("the stored failover policy is not valid (edited by hand?)",
                            hint="set it again with 'safehold ha failover'") from None


async def read_alerts(conn: AsyncConnection, keyring: Keyring) -> InForce[AlertConfig] | None:
    row = await store.get(conn, ALERTS)
    if row is None:
        return None
    return InForce(_alerts_of(row, keyring), row.version, row.updated_at, row.updated_by)


async def read_failover(conn: AsyncConnection) -> InForce[FailoverSection] | None:
    row = await store.get(conn, FAILOVER)
    if row is None:
        return None
    return InForce(_failover_of(row), row.version, row.updated_at, row.updated_by)


async def alerts_in_force(rt: Runtime) -> InForce[AlertConfig]:
    async with rt.read() as conn:
        stored = await read_alerts(conn, rt.keyring)
    return stored or InForce(AlertConfig(rt.settings.alerts))


async def failover_in_force(rt: Runtime) -> InForce[FailoverSection]:
    async with rt.read() as conn:
        stored = await read_failover(conn)
    return stored or InForce(rt.settings.ha.failover)


async def effective_alerts(rt: Runtime) -> AlertConfig:
    """The alert settings this server follows."""
    return (await alerts_in_force(rt)).value


async def effective_failover(rt: Runtime) -> FailoverSection:
    """The automatic failover policy this server follows."""
    return (await failover_in_force(rt)).value


def with_failover(settings: Settings, policy: FailoverSection) -> Settings:
    """``settings`` with ``policy`` as ``ha.failover`` (for the code that reads it there)."""
    return settings.model_copy(update={"ha": settings.ha.model_copy(update={"failover": policy})})


# --- importing safehold.toml once ----------------------------------------------------------------------


def _file_alerts(settings: Settings) -> AlertConfig | None:
    """The ``[alerts]`` section of safehold.toml with its secrets read, if it configures anything (a file
    written by 'safehold init' holds the defaults); a channel whose secret file cannot be read is left out
    (logged)."""
    section = settings.alerts
    if section == AlertsSection():
        return None
    for channel in section.configured():
        try:
            inline_secrets(section.model_copy(update={n: None for n in section.configured() if n != channel}),
                           settings.path)
        except ValueError as exc:
            log.error("alerts: the %s channel of %s is not imported: %s", channel, FROM_FILE, exc)
            section = section.model_copy(update={channel: None})
    return inline_secrets(section, settings.path)


async def import_from_file(rt: Runtime) -> list[str]:
    """Store the ``[alerts]`` and ``[ha.failover]`` sections of this server's safehold.toml where the
    database holds none yet (a writable server only); returns what was imported, each logged."""
    if rt.readonly:
        return []
    settings = rt.settings
    wanted: dict[str, tuple[dict[str, Any], bytes | None]] = {}
    alerts = _file_alerts(settings)
    if alerts is not None:
        data, sealed = to_stored(alerts)
        wanted[ALERTS] = (data, seal(rt.keyring, ALERTS, sealed))
    if settings.ha.failover != FailoverSection():
        wanted[FAILOVER] = (settings.ha.failover.model_dump(mode="json"), None)
    if not wanted:
        return []
    done = []
    async with rt.write() as conn:
        present = await store.versions(conn)
        for key, (value, sealed_blob) in wanted.items():
            if key in present or not await store.insert_if_absent(conn, key, value, sealed_blob,
                                                                  f"import:{settings.server.name}"):
                continue
            done.append(key)
            await rt.append_audit(conn, AuditEvent(
                actor="system", action=AuditAction.SETTINGS_CHANGED, result=AuditResult.SUCCESS,
                target_type="settings", target_name=key, detail={"imported_from": FROM_FILE}))
    section = {ALERTS: "[alerts]", FAILOVER: "[ha.failover]"}
    for key in done:
        log.warning("cluster settings: imported the %s section of %s into the database (once); from now on "
                    "the database's %s settings are used by every server and that section is ignored (change "
                    "them with '%s')", section[key], FROM_FILE, key,
                    "safehold alerts set" if key == ALERTS else "safehold ha failover")
    return done


# --- changing -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Actor:
    name: str
    source_ip: str = ""


async def _change(rt: Runtime, key: str, actor: Actor, expected_version: int | None,
                  change: Callable[[Any], Any], load: Callable[[store.StoredSetting | None], Any],
                  dump: Callable[[Any], tuple[dict[str, Any], bytes | None]],
                  detail: Callable[[Any, Any], dict[str, Any]]) -> int:
    async with rt.write() as conn:
        row = await store.get(conn, key, for_update=True)
        if expected_version is not None and (row is None or row.version != expected_version):
            raise Conflict(f"the {key} settings were changed meanwhile (now version "
                           f"{row.version if row else 'none'}); read them again and retry")
        before = load(row)
        after = change(before)
        value, sealed = dump(after)
        version = await store.put(conn, key, value, sealed, actor.name[:200],
                                  expected_version=row.version if row is not None else None)
        if version is None:
            raise Conflict(f"the {key} settings were changed meanwhile; read them again and retry")
        await rt.append_audit(conn, AuditEvent(
            actor=actor.name[:64], action=AuditAction.SETTINGS_CHANGED, result=AuditResult.SUCCESS,
            source_ip=actor.source_ip, target_type="settings", target_name=key,
            detail={"version": version, **detail(before, after)}))
    return version


async def change_alerts(rt: Runtime, actor: Actor, change: Callable[[AlertConfig], AlertConfig], *,
                        expected_version: int | None = None) -> int:
    """Apply ``change`` (pure; raises InvalidInput) to the cluster's alert settings; the new version."""
    def load(row: store.StoredSetting | None) -> AlertConfig:
        if row is not None:
            return _alerts_of(row, rt.keyring)
        # nothing stored yet: start from safehold.toml's section (its secrets read) or from nothing
        return _file_alerts(rt.settings) or AlertConfig()

    def checked(before: AlertConfig) -> AlertConfig:
        after = change(before)
        problems = secret_problems(after)
        if problems:
            channel, message = problems[0]
            raise InvalidInput(f"{channel}: {message}", field="secret")
        return after

    def dump(config: AlertConfig) -> tuple[dict[str, Any], bytes | None]:
        data, sealed = to_stored(config)
        return data, seal(rt.keyring, ALERTS, sealed)

    def detail(before: AlertConfig, after: AlertConfig) -> dict[str, Any]:
        changed = [n for n in ("email", "syslog", "snmp", "webhook", "script", "retry", "queue_size")
                   if getattr(before.section, n) != getattr(after.section, n)
                   or before.secret(n) != after.secret(n)]
        return {"channels": after.section.configured(), "changed": changed}

    return await _change(rt, ALERTS, actor, expected_version, checked, load, dump, detail)


async def change_failover(rt: Runtime, actor: Actor, change: Callable[[FailoverSection], FailoverSection], *,
                          expected_version: int | None = None) -> int:
    """Apply ``change`` (raises InvalidInput) to the cluster's failover policy; the new version."""

    def load(row: store.StoredSetting | None) -> FailoverSection:
        return _failover_of(row) if row is not None else rt.settings.ha.failover

    def dump(policy: FailoverSection) -> tuple[dict[str, Any], bytes | None]:
        return FailoverSection.model_validate(policy.model_dump()).model_dump(mode="json"), None

    def detail(before: FailoverSection, after: FailoverSection) -> dict[str, Any]:
        return {"policy": after.model_dump(mode="json"),
                "changed": sorted(k for k in after.model_dump() if getattr(before, k) != getattr(after, k))}

    return await _change(rt, FAILOVER, actor, expected_version, change, load, dump, detail)


# --- following ------------------------------------------------------------------------------------------


def _interval(rt: Runtime) -> float:
    return max(0.5, min(rt.settings.ha.check_interval, 5.0))


async def refresh_alerts(rt: Runtime, dispatcher: Dispatcher, seen: object = None) -> object:
    """One round: import safehold.toml's sections if this server is writable and the database has none;
    when the stored version differs from ``seen`` (what the last round returned), give the dispatcher the
    settings in force.  Returns what to pass as ``seen`` next time."""
    async with rt.read() as conn:
        versions = await store.versions(conn)
    if not rt.readonly and set(KEYS) - set(versions):
        await import_from_file(rt)
        async with rt.read() as conn:
            versions = await store.versions(conn)
    now = (versions.get(ALERTS), id(rt.settings))  # nothing stored: safehold.toml's, which a role change reloads
    if now != seen:
        dispatcher.reconfigure(await effective_alerts(rt))
    return now


@dataclass
class AlertsRunner:
    """The alert dispatcher of a running server and the task that keeps it on the cluster's settings."""

    dispatcher: Dispatcher
    task: asyncio.Task[None] | None = None

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
        await asyncio.to_thread(self.dispatcher.stop)


async def follow_alerts(rt: Runtime, dispatcher: Dispatcher, every: float | None = None) -> None:
    """Keep ``dispatcher`` on the cluster's alert settings (never raises; cancelled at stop)."""
    last_error = ""
    seen: object = None
    while True:
        await asyncio.sleep(every if every is not None else _interval(rt))
        try:
            seen = await refresh_alerts(rt, dispatcher, seen)
            last_error = ""
        except (SafeholdError, OSError) as exc:
            text = exc.message if isinstance(exc, SafeholdError) else str(exc)
            if text != last_error:
                log.warning("alerts: could not read the cluster's alert settings: %s", text)
            last_error = text


async def start_alerts(rt: Runtime) -> AlertsRunner:
    """At serve start: import safehold.toml's sections once (a writable server), start the dispatcher on the
    settings in force and the task that follows them."""
    try:
        await import_from_file(rt)
    except SafeholdError as exc:
        log.error("cluster settings: importing safehold.toml's [alerts]/[ha.failover] failed (tried again "
                  "later): %s", exc.message)
    try:
        config = await effective_alerts(rt)
    except SafeholdError as exc:
        log.error("alerts: could not read the cluster's alert settings (tried again later): %s", exc.message)
        config = AlertConfig(rt.settings.alerts)
    dispatcher = Dispatcher(rt.settings, config, counted=rt.metrics.count_alert)
    dispatcher.start()
    task = asyncio.get_running_loop().create_task(follow_alerts(rt, dispatcher), name="alerts-settings")
    return AlertsRunner(dispatcher, task)


async def follow_failover(rt: Runtime, make_watch: Callable[[Settings], Any], every: float | None = None) -> None:
    """On a read-only server: run the automatic failover watch (``make_watch(settings)``) while the cluster's
    policy, as this server's replica holds it, is enabled; re-read every cycle, and restart the watch
    when the policy changes (its count of failed pings starts over).  Never raises; cancelled with the
    server's loops (its watch with it, unless that watch has ordered a promotion)."""
    current: FailoverSection | None = None
    watch: Any = None
    task: asyncio.Task[None] | None = None
    last_error = ""

    def promoting() -> bool:
        return bool(watch is not None and getattr(getattr(watch, "state", None), "promoted", False))

    try:
        while True:
            try:
                policy: FailoverSection | None = await effective_failover(rt)
                last_error = ""
            except SafeholdError as exc:
                if exc.message != last_error:
                    log.warning("automatic failover: could not read the cluster's policy (keeping the one in "
                                "force): %s", exc.message)
                last_error = exc.message
                policy = current
            if policy is not None and policy != current and not promoting():
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
                    task = watch = None
                if current is not None:
                    log.warning("automatic failover: the cluster's policy changed (%s)",
                                "enabled" if policy.enabled else "disabled")
                current = policy
                if policy.enabled:
                    log.warning("automatic failover: enabled by the cluster's policy: this server watches the "
                                "primary every %g s and acts after %d failed pings", policy.ping_interval,
                                policy.ping_iterations)
                    watch = make_watch(with_failover(rt.settings, policy))
                    task = asyncio.get_running_loop().create_task(watch.run_forever(), name="ha-failover-watch")
            await asyncio.sleep(every if every is not None else _interval(rt))
    finally:
        if task is not None and not task.done() and not promoting():
            task.cancel()


# --- the failover policy, checked ------------------------------------------------------------------------


def _problem(problems: list[tuple[str, str]]) -> InvalidInput:
    field, message = problems[0]
    return InvalidInput("; ".join(m for _, m in problems), field=field)


async def check_failover(rt: Runtime, changes: dict[str, Any]) -> tuple[InForce[FailoverSection],
                                                                        FailoverSection | None,
                                                                        list[tuple[str, str]]]:
    """``changes`` on top of the policy in force, checked by the rules of :func:`safehold.ha.failover.
    check_policy` (ranges, witnesses against the cluster's own addresses, gateway): (the policy in force,
    the new policy or None, every problem with its field)."""
    from safehold.ha.failover import check_policy
    from safehold.storage import servers as server_store

    current = await failover_in_force(rt)
    candidate = current.value.model_copy(update=changes)
    async with rt.read() as conn:
        servers = await server_store.all_servers(conn)
    # enabling=False: the policy is the cluster's, set on a writable server; the read-only servers run it
    problems = await asyncio.to_thread(check_policy, rt.settings, candidate, servers, enabling=False)
    if problems:
        return current, None, problems
    try:
        return current, FailoverSection.model_validate(candidate.model_dump()), []
    except ValidationError as exc:
        out = []
        for err in exc.errors():
            name = ".".join(str(p) for p in err["loc"])
            out.append((name or "enabled", str(err["msg"]).removeprefix("Value error, ")))
        return current, None, out


async def update_failover(rt: Runtime, actor: Actor, changes: dict[str, Any]) -> InForce[FailoverSection]:
    """Change the cluster's failover policy (on a writable server): checked by :func:`check_failover`,
    stored as a compare-and-set.  Raises InvalidInput (with the first problem's field) or Conflict;
    returns the policy now in force."""
    current, policy, problems = await check_failover(rt, changes)
    if policy is None:
        raise _problem(problems)
    await change_failover(rt, actor, lambda _: policy, expected_version=current.version)
    return await failover_in_force(rt)


async def failover_warnings(rt: Runtime, policy: FailoverSection) -> list[str]:
    """What an operator should know about the cluster's policy (as seen from this server's host)."""
    from safehold.domain import ServerRole
    from safehold.ha.failover import warnings_for
    from safehold.ha.probe import default_gateway, ping_program
    from safehold.storage import servers as server_store

    async with rt.read() as conn:
        servers = await server_store.all_servers(conn)
    gateway, ping = await asyncio.to_thread(lambda: (default_gateway(), ping_program()))
    out = warnings_for(policy, default_gateway=gateway, ping_available=ping is not None)
    if policy.enabled and not any(getattr(s, "role", None) == ServerRole.READONLY for s in servers):
        out.append("no read-only server is registered in this cluster: nothing watches the primary yet (the "
                   "policy applies to every read-only server)")
    return out
