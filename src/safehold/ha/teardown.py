"""Tear a server out of its cluster: ``safehold ha teardown``.

What a server does depends on what it is:

primary
    forgets the whole topology: every Safehold replication role (``repl_*``) and slot (``ro_*``),
    every secondary's login (``app_*``), the extra ``pg_hba.conf`` lines, a synchronous standby
    setting and every other registry row; its settings say standalone.  Its read-only servers stop
    streaming and its secondaries can no longer log in.
read-only server
    asks the primary database to forget it (its role, its slot, its registry row; when that is not
    reachable it says what is left there), promotes its replica and gives the copy a **new cluster
    id**, so it can never pass for a member of the old cluster; then cleans the copy up as a primary
    does and becomes a standalone server holding the data as of now.
secondary
    deletes its registry row at the primary (as its own login) and says what only the primary can
    remove; a secondary has no database of its own, so it never becomes standalone.
standalone
    nothing to do.

Deciding is pure (:func:`kind_of`, :func:`plan_primary`, :func:`plan_readonly`,
:func:`plan_secondary` over an :class:`Inventory` read beforehand); :func:`execute` carries a plan out
step by step.  Every step is idempotent and the settings are written last, so a teardown that
stopped halfway is finished by running it again.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from safehold import names
from safehold.config import HaSection, Settings, load_settings, write_settings
from safehold.domain import ServerRole
from safehold.errors import ConfigError, DatabaseError, SafeholdError
from safehold.pg import PgManager
from safehold.storage import admin, replication, roles, system_settings
from safehold.storage import cluster as cluster_store
from safehold.storage import servers as server_store
from safehold.storage.db import DB_ERRORS, DbTarget, app_target, check_reachable, owner_target
from safehold.storage.roles import RoleInfo
from safehold.storage.servers import RegistryEntry

if TYPE_CHECKING:
    from safehold.audit.spool import AuditSpool

Say = Callable[[str], None]

#: The names Safehold gives what it makes for other servers (see ha.names).
REPLICATION_ROLE, SLOT, SECONDARY_LOGIN = names.REPLICATION_ROLE, names.READONLY_SLOT, names.SECONDARY_LOGIN
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,62}")
CATCH_UP_TIMEOUT = 20.0


def _quiet(_: str) -> None:
    pass


# --- what the server is and what its database holds -------------------------------------------


class Kind(StrEnum):
    NOTHING = "standalone"
    PRIMARY = "primary"
    READONLY = "readonly"
    SECONDARY = "secondary"


def kind_of(settings: Settings) -> Kind:
    """Which teardown this server gets, from its settings alone."""
    role, mode = settings.server.role, settings.database.mode
    if role == ServerRole.SECONDARY or mode == "remote":
        return Kind.SECONDARY
    if role == ServerRole.READONLY:
        if mode != "bundled":
            raise ConfigError("this read-only server has no bundled replica (database.mode is "
                              f"{mode!r}); there is nothing Safehold can tear down here")
        return Kind.READONLY
    if role == ServerRole.PRIMARY:
        return Kind.PRIMARY
    return Kind.NOTHING


class SlotInfo(NamedTuple):
    name: str
    slot_type: str
    active: bool


@dataclass(frozen=True)
class Inventory:
    """What a database holds that a teardown looks at; read before anything is changed."""

    roles: tuple[RoleInfo, ...] = ()
    slots: tuple[SlotInfo, ...] = ()
    registry: tuple[RegistryEntry, ...] = ()
    extra_hba: tuple[str, ...] = ()
    cluster_id: str | None = None


# --- plans -------------------------------------------------------------------------------------


class Action(StrEnum):
    SHIP_AUDIT = "ship_audit"  # the read-only server's spooled audit records, to the primary
    CATCH_UP = "catch_up"  # wait until the replica replayed what the primary has now
    DROP_PRIMARY_ROLE = "drop_primary_role"  # at the primary: this read-only server's role
    DROP_PRIMARY_SLOT = "drop_primary_slot"  # ... its slot
    DELETE_PRIMARY_ROW = "delete_primary_row"  # ... its registry row
    PROMOTE = "promote"
    RENEW_CLUSTER_ID = "renew_cluster_id"
    DROP_REPLICATION_ROLE = "drop_replication_role"
    DROP_SLOT = "drop_slot"
    DROP_LOGIN = "drop_login"
    RESET_HBA = "reset_hba"
    RESET_SYNC = "reset_synchronous_standby_names"
    FORGET_SERVERS = "forget_servers"  # every other registry row; its own says standalone
    WRITE_SETTINGS = "write_settings"


#: Steps carried out at the primary's database from another server: best effort.
REMOTE = frozenset({Action.SHIP_AUDIT, Action.CATCH_UP, Action.DROP_PRIMARY_ROLE, Action.DROP_PRIMARY_SLOT,
                    Action.DELETE_PRIMARY_ROW})


class Step(NamedTuple):
    action: Action
    target: str
    message: str


@dataclass(frozen=True)
class Plan:
    kind: Kind
    steps: tuple[Step, ...]
    detached: tuple[RegistryEntry, ...] = ()  # the other servers this one forgets
    notes: tuple[str, ...] = ()  # what is left alone, and why

    def targets(self, action: Action) -> list[str]:
        return [s.target for s in self.steps if s.action == action]


def detached_servers(self_id: str, inventory: Inventory) -> tuple[RegistryEntry, ...]:
    return tuple(e for e in inventory.registry if e.id != self_id)


def _cleanup(self_id: str, inv: Inventory, *, superuser: bool) -> tuple[list[Step], list[str]]:
    """Steps that leave a database (a primary, or a promoted copy) with no trace of other servers:
    replication roles before their slots (a standby that may still log in takes its slot again)."""
    steps: list[Step] = []
    notes: list[str] = []
    drop_roles: list[Step] = []
    drop_logins: list[Step] = []
    for r in sorted(inv.roles):
        if REPLICATION_ROLE.fullmatch(r.name) and r.replication and not r.superuser:
            drop_roles.append(Step(Action.DROP_REPLICATION_ROLE, r.name,
                                   f"dropping the replication role {r.name}"))
        elif SECONDARY_LOGIN.fullmatch(r.name) and r.app_member and not r.replication and not r.superuser:
            drop_logins.append(Step(Action.DROP_LOGIN, r.name, f"dropping the secondary's login {r.name}"))
        elif REPLICATION_ROLE.fullmatch(r.name) or SECONDARY_LOGIN.fullmatch(r.name):
            notes.append(f"the role {r.name} has a Safehold name but is not one Safehold made; left alone")
    drop_slots = []
    for s in sorted(inv.slots):
        if SLOT.fullmatch(s.name) and s.slot_type == "physical":
            drop_slots.append(Step(Action.DROP_SLOT, s.name, f"dropping the replication slot {s.name}"
                                   + (" (ending its WAL sender)" if s.active else "")))
        else:
            notes.append(f"the {s.slot_type} replication slot {s.name} is not Safehold's; left alone")
    admin_steps = [*drop_roles, *drop_slots, *drop_logins]
    if superuser:
        steps += admin_steps
    elif admin_steps:
        notes.append("without the database superuser's password these stay: "
                     + ", ".join(s.target for s in admin_steps))
    if inv.extra_hba:
        steps.append(Step(Action.RESET_HBA, str(len(inv.extra_hba)),
                          f"removing {len(inv.extra_hba)} extra line(s) from pg_hba.conf"))
    if superuser:
        steps.append(Step(Action.RESET_SYNC, "", "resetting synchronous_standby_names"))
    own = [e for e in inv.registry if e.id == self_id]
    others = detached_servers(self_id, inv)
    if others or any(e.role != ServerRole.STANDALONE for e in own):
        steps.append(Step(Action.FORGET_SERVERS, self_id,
                          f"removing {len(others)} other server(s) from the registry" if others
                          else "marking this server standalone in the registry"))
    return steps, notes


def _write_settings_step() -> Step:
    return Step(Action.WRITE_SETTINGS, "", "writing the settings: role standalone, no cluster")


def plan_primary(self_id: str, inventory: Inventory, *, bundled: bool = True) -> Plan:
    """The primary forgets every other server.  With a database that is not its own (external)
    only the registry and its settings are its business."""
    if bundled:
        steps, notes = _cleanup(self_id, inventory, superuser=True)
    else:
        steps, notes = _cleanup(self_id, Inventory(registry=inventory.registry), superuser=False)
        notes.append("the database is not Safehold's own (external): its roles, slots and pg_hba.conf "
                     "are left to its administrator")
    return Plan(Kind.PRIMARY, (*steps, _write_settings_step()), detached_servers(self_id, inventory),
                tuple(notes))


def readonly_names(server_id: str, primary: Mapping[str, Any] | None) -> tuple[str, str]:
    """(replication role, slot) of a read-only server at its primary: as its replica's marker names
    them, else as 'safehold ha pack' named them (from the server id; a promoted replica's marker
    no longer names a primary)."""
    role, slot = names.replication_role(server_id), names.readonly_slot(server_id)
    if primary is not None:
        user, named = primary.get("user"), primary.get("slot")
        if isinstance(user, str) and _IDENTIFIER.fullmatch(user) and not user.startswith("pg_"):
            role = user
        if isinstance(named, str) and _IDENTIFIER.fullmatch(named) and not named.startswith("pg_"):
            slot = named
    return role, slot


def plan_readonly(self_id: str, inventory: Inventory, *, names: tuple[str, str], standby: bool,
                  settings_cluster_id: str | None, new_cluster_id: str, spool_pending: int,
                  superuser: bool) -> Plan:
    """The read-only server leaves (at the primary, best effort), then becomes a standalone copy
    under a new cluster id and forgets every other server, as a primary does."""
    role, slot = names
    steps: list[Step] = []
    if spool_pending:
        steps.append(Step(Action.SHIP_AUDIT, str(spool_pending),
                          f"shipping {spool_pending} spooled audit record(s) to the primary database"))
    if standby:
        steps.append(Step(Action.CATCH_UP, "", "waiting for the replica to replay what the primary has now"))
    steps += [
        Step(Action.DROP_PRIMARY_ROLE, role, f"dropping this server's replication role {role} at the primary"),
        Step(Action.DROP_PRIMARY_SLOT, slot, f"dropping this server's replication slot {slot} at the primary"),
        Step(Action.DELETE_PRIMARY_ROW, self_id, "removing this server from the primary's registry"),
    ]
    if standby:
        steps.append(Step(Action.PROMOTE, "", "promoting the replica: it stops following the primary"))
    # a renewal done by an earlier run that stopped halfway is not done again
    if inventory.cluster_id is None or inventory.cluster_id == settings_cluster_id or standby:
        steps.append(Step(Action.RENEW_CLUSTER_ID, new_cluster_id,
                          f"giving this copy a new cluster id {new_cluster_id}"))
    cleanup, notes = _cleanup(self_id, inventory, superuser=superuser)
    return Plan(Kind.READONLY, (*steps, *cleanup, _write_settings_step()), detached_servers(self_id, inventory),
                tuple(notes))


def plan_secondary(self_id: str) -> Plan:
    return Plan(Kind.SECONDARY, (Step(Action.DELETE_PRIMARY_ROW, self_id,
                                      "removing this server from the primary's registry"),),
                notes=(f"its database login {login_name(self_id)} and its pg_hba.conf line stay at the "
                       "primary until 'safehold ha teardown' runs there",))


def login_name(server_id: str) -> str:
    """A secondary's database login (ha.names.secondary_login)."""
    return names.secondary_login(server_id)


def standalone_settings(stored: Settings) -> Settings:
    """The server's settings as a standalone: no cluster, no primary database, no failover or
    synchronous replication; the monitoring intervals and thresholds are kept."""
    ha = stored.ha
    kept = {name: getattr(ha, name) for name in ("check_interval", "peer_timeout", "lag_threshold_seconds",
                                                 "lag_threshold_bytes", "promote_max_data_age",
                                                 "sync_degrade_after")}
    return stored.model_copy(update={
        "server": stored.server.model_copy(update={"role": ServerRole.STANDALONE}),
        "ha": HaSection(**kept, failover=ha.failover.model_copy(update={"enabled": False})),
    })


def leftover_sql(role: str | None, slot: str | None, server_id: str | None) -> list[str]:
    """What an operator runs on the primary's database (as its superuser) for what a teardown
    could not remove there itself."""
    # shown, never executed; the names are checked identifiers and the id a UUID, so quoting is safe
    lines = []
    if role and _IDENTIFIER.fullmatch(role):
        lines.append(f"DROP ROLE IF EXISTS {role};")
    if slot and _IDENTIFIER.fullmatch(slot):
        lines.append(f"SELECT pg_drop_replication_slot('{slot}') FROM pg_replication_slots "  # noqa: S608
                     f"WHERE slot_name = '{slot}';")
    if server_id:
        lines.append(f"DELETE FROM servers WHERE id = '{uuid.UUID(server_id)}';  "  # noqa: S608
                     "-- in the Safehold database")
    return lines


# --- what the database holds (read) ------------------------------------------------------------


def drop_replication_role(superuser: DbTarget, role: str) -> bool:
    """admin.drop_replication_role, after revoking what was granted to the role; False if it was gone."""
    roles.revoke_privileges(superuser, role)
    return admin.drop_replication_role(superuser, role)


def read_inventory(settings: Settings, pg: PgManager | None, *, superuser: bool) -> Inventory:
    """Read what the server's own database holds (the registry as the app login, roles and slots
    as the superuser when it may)."""

    try:
        found: tuple[RoleInfo, ...] = ()
        slots: tuple[SlotInfo, ...] = ()
        if superuser:
            su = owner_target(settings, dbname="postgres")
            found = tuple(roles.safehold_roles(su, settings.database.user))
            slots = tuple(SlotInfo(s.name, s.slot_type, s.active) for s in admin.list_slots(su))
        registry = tuple(server_store.registry(app_target(settings)))
        cluster_id = cluster_store.cluster_id(app_target(settings))
    except DB_ERRORS as exc:
        raise DatabaseError(f"cannot read this server's database ({_reason(exc)})") from None
    extra = tuple(pg.extra_hba_lines()) if pg is not None else ()
    return Inventory(roles=found, slots=slots, registry=registry, extra_hba=extra, cluster_id=cluster_id)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, SafeholdError):
        return exc.message
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def spool_pending(settings: Settings) -> int:
    """How many audit records a read-only server spooled that the primary does not have yet."""
    from safehold.audit.spool import RECORDS

    directory = settings.data_dir / names.SPOOL_DIR
    if not (directory / RECORDS).is_file():
        return 0
    return _spool(settings).backlog().pending


def _spool(settings: Settings) -> AuditSpool:
    from safehold.audit.spool import AuditSpool

    # only reads and ships records chained before: the MAC key is needed for appending only
    return AuditSpool(settings.data_dir / names.SPOOL_DIR, b"", settings.server.id, settings.server.role.value)


def has_superuser_password(settings: Settings) -> bool:
    return settings.path(settings.database.superuser_password_file).is_file()


def prepare(settings: Settings, pg: PgManager | None) -> Plan:
    """Read what the teardown needs and plan it; changes nothing.  ``pg`` is the server's bundled
    database, running (None for a secondary)."""
    kind = kind_of(settings)
    me = settings.server.id
    if kind == Kind.NOTHING:
        return Plan(Kind.NOTHING, ())
    if kind == Kind.SECONDARY:
        return plan_secondary(me)
    if kind == Kind.PRIMARY:
        bundled = settings.database.mode == "bundled"
        return plan_primary(me, read_inventory(settings, pg if bundled else None, superuser=bundled),
                            bundled=bundled)
    assert pg is not None
    superuser = has_superuser_password(settings)
    standby = pg.is_standby()
    marker = pg.marker_fields().get("primary") if standby else None
    return plan_readonly(me, read_inventory(settings, pg, superuser=superuser),
                         names=readonly_names(me, marker if isinstance(marker, dict) else None),
                         standby=standby, settings_cluster_id=settings.ha.cluster_id,
                         new_cluster_id=str(uuid.uuid4()), spool_pending=spool_pending(settings),
                         superuser=superuser)


# --- carrying a plan out -----------------------------------------------------------------------


@dataclass
class Outcome:
    kind: Kind
    detached: tuple[RegistryEntry, ...] = ()
    done: list[Step] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    left_at_primary: list[str] = field(default_factory=list)  # SQL for the operator (read-only server)
    new_cluster_id: str | None = None


class _Executor:
    def __init__(self, settings: Settings, pg: PgManager | None, outcome: Outcome, say: Say) -> None:
        self.settings, self.pg, self.outcome, self.say = settings, pg, outcome, say
        self.primary_down: str | None = None  # why the primary's database could not be reached

    # targets --------------------------------------------------------------------------

    def _local_su(self) -> DbTarget:
        return owner_target(self.settings, dbname="postgres")

    def _primary(self, *, superuser: bool) -> DbTarget:
        s = self.settings
        if self.outcome.kind == Kind.SECONDARY:  # its database is the primary's, as its own login
            return app_target(s)
        host, port = s.ha.primary_db_host, s.ha.primary_db_port
        if not host or not port:
            raise DatabaseError("this server's settings do not name the primary database "
                                "(ha.primary_db_host/port)")
        local = owner_target(s) if superuser else app_target(s)
        return DbTarget(host, port, s.database.name, local.user, local.password, local.sslrootcert)

    # the steps ------------------------------------------------------------------------

    def run(self, plan: Plan) -> None:
        handlers: dict[Action, Callable[[str], object]] = {
            Action.SHIP_AUDIT: self.ship_audit, Action.CATCH_UP: self.catch_up,
            Action.DROP_PRIMARY_ROLE: self.drop_primary_role, Action.DROP_PRIMARY_SLOT: self.drop_primary_slot,
            Action.DELETE_PRIMARY_ROW: self.delete_primary_row, Action.PROMOTE: self.promote,
            Action.RENEW_CLUSTER_ID: self.renew_cluster_id,
            Action.DROP_REPLICATION_ROLE: lambda role: drop_replication_role(self._local_su(), role),
            Action.DROP_SLOT: lambda slot: admin.drop_slot(self._local_su(), slot),
            Action.DROP_LOGIN: self.drop_login, Action.RESET_HBA: self.reset_hba,
            Action.RESET_SYNC: self.reset_sync, Action.FORGET_SERVERS: self.forget_servers,
            Action.WRITE_SETTINGS: self.write_settings,
        }
        probed = False
        for step in plan.steps:
            if step.action in REMOTE and not probed:
                probed = True
                self.probe_primary()
            if step.action in REMOTE and self.primary_down is not None:
                self.left_behind(step)
                continue
            self.say(step.message)
            try:
                handlers[step.action](step.target)
            except (SafeholdError, *DB_ERRORS, OSError) as exc:
                if step.action not in REMOTE:
                    raise DatabaseError(f"{step.message} failed: {_reason(exc)}",
                                        hint="nothing after this step was done; fix the cause and run "
                                             "'safehold ha teardown' again (what is done is not redone)"
                                        ) from None
                self.warn(f"{step.message} failed ({_reason(exc)})")
                self.left_behind(step)
                continue
            self.outcome.done.append(step)

    def probe_primary(self) -> None:
        """Whether the primary's database answers this server's own login: when it does not, no
        step there is tried (each would wait for its connection to time out)."""
        self.say("reaching the primary database")
        try:
            check_reachable(self._primary(superuser=False))
        except (SafeholdError, *DB_ERRORS) as exc:
            self.primary_down = _reason(exc)
            self.warn(f"the primary database cannot be reached ({self.primary_down}); carrying on without it")

    def warn(self, message: str) -> None:
        self.outcome.warnings.append(message)
        self.say(f"  warning: {message}")

    def left_behind(self, step: Step) -> None:
        s = self.settings
        if step.action == Action.SHIP_AUDIT:
            self.warn(f"{step.target} audit record(s) spooled here were not shipped to the primary; they stay "
                      f"in {s.data_dir / names.SPOOL_DIR}")
        elif step.action == Action.CATCH_UP:
            self.warn("this copy holds what its replica had replayed when it last heard from the primary")
        elif step.action == Action.DROP_PRIMARY_ROLE:
            self.outcome.left_at_primary += leftover_sql(step.target, None, None)
        elif step.action == Action.DROP_PRIMARY_SLOT:
            self.outcome.left_at_primary += leftover_sql(None, step.target, None)
        elif step.action == Action.DELETE_PRIMARY_ROW:
            self.outcome.left_at_primary += leftover_sql(None, None, step.target)

    def ship_audit(self, _: str) -> None:
        from safehold.audit.spool import ship
        from safehold.storage import audit as audit_store
        from safehold.storage.db import make_engine

        spool = _spool(self.settings)

        async def go() -> int:
            engine = make_engine(self._primary(superuser=False), pool_size=1)
            try:
                async def send(records: Any) -> None:
                    async with engine.begin() as conn:
                        await audit_store.insert_shipped(conn, records)

                return await ship(spool, send)
            finally:
                await engine.dispose()

        self.say(f"  shipped {asyncio.run(go())} record(s)")

    def catch_up(self, _: str) -> None:
        lsn = replication.current_wal_lsn(self._primary(superuser=False))
        if not replication.wait_replayed(app_target(self.settings), lsn, CATCH_UP_TIMEOUT):
            self.warn(f"the replica had not replayed up to {lsn} after {CATCH_UP_TIMEOUT:g}s; "
                      "the copy holds what it had")

    def drop_primary_role(self, role: str) -> None:
        if not drop_replication_role(self._primary(superuser=True), role):
            self.say(f"  {role} was gone already")

    def drop_primary_slot(self, slot: str) -> None:
        if not admin.drop_slot(self._primary(superuser=True), slot, timeout=15):
            self.say(f"  {slot} was gone already")

    def delete_primary_row(self, server_id: str) -> None:
        """As the superuser where possible, else as this server's own (app or secondary) login."""
        candidates = [self._primary(superuser=False)]
        if self.outcome.kind == Kind.READONLY and has_superuser_password(self.settings):
            candidates.insert(0, self._primary(superuser=True))
        failure: BaseException | None = None
        for target in candidates:
            try:
                gone = server_store.unregister(target, server_id)
            except (SafeholdError, *DB_ERRORS) as exc:
                failure = exc
                continue
            if not gone:
                self.say("  it was not listed there (any more)")
            return
        assert failure is not None
        raise failure

    def promote(self, _: str) -> None:
        assert self.pg is not None
        self.pg.promote()

    def renew_cluster_id(self, cluster_id: str) -> None:
        cluster_store.renew_identity(app_target(self.settings), cluster_id)
        self.outcome.new_cluster_id = cluster_id

    def drop_login(self, role: str) -> None:
        from safehold.storage.admin import drop_login

        roles.revoke_privileges(self._local_su(), role)
        drop_login(self._local_su(), role)

    def reset_hba(self, _: str) -> None:
        assert self.pg is not None
        self.pg.write_hba([])

    def reset_sync(self, _: str) -> None:
        system_settings.reset_sync_names(self._local_su())

    def forget_servers(self, self_id: str) -> None:
        server_store.keep_only(app_target(self.settings), self_id, ServerRole.STANDALONE.value)

    def write_settings(self, _: str) -> None:
        write_settings(standalone_settings(load_settings(self.settings.data_dir, env={})))


def execute(settings: Settings, pg: PgManager | None, plan: Plan, say: Say = _quiet) -> Outcome:
    """Carry ``plan`` out on this server (its bundled database running at ``pg``).  A step on this
    server that fails stops the teardown with a DatabaseError (run it again once the cause is
    fixed); a step at the primary's database that fails is skipped with what is left there."""
    outcome = Outcome(plan.kind, plan.detached)
    _Executor(settings, pg, outcome, say).run(plan)
    return outcome


def describe(entries: Iterable[RegistryEntry]) -> list[str]:
    return [f"{e.role} {e.name!r} ({e.id}{', ' + e.url if e.url else ''})" for e in entries]


def config_dir_ok(data_dir: Path) -> Path:
    """The data directory, resolved; a clear error when it is missing or not a directory."""
    path = data_dir.expanduser().resolve()
    if not path.exists():
        raise ConfigError(f"the data directory {path} does not exist")
    if not path.is_dir():
        raise ConfigError(f"{path} is not a directory")
    return path


def load_server_settings(data_dir: Path) -> Settings:
    """The server's settings, with clear errors for a missing directory or an unreadable file."""
    path = config_dir_ok(data_dir)
    try:
        return load_settings(path)
    except OSError as exc:
        raise ConfigError(f"cannot read the settings in {path}: {exc.strerror}") from None
