"""What 'safehold ha teardown' decides to do, as tables of (what the database holds) -> steps; no
database, no mocks."""

from __future__ import annotations

from pathlib import Path

import pytest

from safehold.config import (
    DatabaseSection,
    FailoverSection,
    HaSection,
    ServerSection,
    Settings,
)
from safehold.domain import ServerRole
from safehold.errors import ConfigError
from safehold.ha.teardown import (
    Action,
    Inventory,
    Kind,
    RegistryEntry,
    RoleInfo,
    SlotInfo,
    kind_of,
    leftover_sql,
    login_name,
    plan_primary,
    plan_readonly,
    plan_secondary,
    readonly_names,
    standalone_settings,
)

ME = "6f1c2a4e-0000-4000-8000-000000000001"
RO_ID = "01234567-89ab-4000-8000-000000000002"
SEC_ID = "fedcba98-7654-4000-8000-000000000003"
CLUSTER = "aaaaaaaa-0000-4000-8000-000000000000"
NEW_CLUSTER = "bbbbbbbb-0000-4000-8000-000000000000"


def _settings(role: ServerRole, mode: str = "bundled", **ha: object) -> Settings:
    return Settings(server=ServerSection(id=ME, name="me", role=role),
                    database=DatabaseSection(mode=mode),  # type: ignore[arg-type]
                    ha=HaSection(**ha),  # type: ignore[arg-type]
                    data_dir=Path("/nonexistent"))


def _entry(server_id: str, role: str, name: str = "") -> RegistryEntry:
    return RegistryEntry(server_id, name or role, role, f"https://{role}.example:8443")


#: a primary with one read-only server (streaming), one secondary and things that are not Safehold's
CLUSTER_DB = Inventory(
    roles=(RoleInfo("repl_0123456789ab", True, False, False),
           RoleInfo("app_fedcba987654", False, False, True),
           RoleInfo("repl_ffffffffffff", False, False, False),  # a Safehold name, but not a replication role
           RoleInfo("app_eeeeeeeeeeee", False, True, True)),  # a superuser: never dropped
    slots=(SlotInfo("ro_0123456789ab", "physical", True),
           SlotInfo("backup_tool", "physical", False),
           SlotInfo("ro_aaaaaaaaaaaa", "logical", False)),
    registry=(_entry(ME, "primary", "me"), _entry(RO_ID, "readonly"), _entry(SEC_ID, "secondary")),
    extra_hba=("hostssl replication repl_0123456789ab 127.0.0.1/32 scram-sha-256",
               "hostssl safehold app_fedcba987654 127.0.0.1/32 scram-sha-256"),
    cluster_id=CLUSTER,
)


# --- which teardown -----------------------------------------------------------------------------


@pytest.mark.parametrize(("role", "mode", "kind"), [
    (ServerRole.STANDALONE, "bundled", Kind.NOTHING),
    (ServerRole.STANDALONE, "external", Kind.NOTHING),
    (ServerRole.PRIMARY, "bundled", Kind.PRIMARY),
    (ServerRole.PRIMARY, "external", Kind.PRIMARY),
    (ServerRole.READONLY, "bundled", Kind.READONLY),
    (ServerRole.SECONDARY, "remote", Kind.SECONDARY),
    (ServerRole.SECONDARY, "external", Kind.SECONDARY),
])
def test_the_role_and_database_mode_choose_the_teardown(role: ServerRole, mode: str, kind: Kind) -> None:
    assert kind_of(_settings(role, mode)) is kind


def test_a_readonly_server_without_a_replica_of_its_own_is_refused() -> None:
    with pytest.raises(ConfigError, match="no bundled replica"):
        kind_of(_settings(ServerRole.READONLY, "external"))


# --- on the primary -------------------------------------------------------------------------------


def test_the_primary_drops_roles_before_slots_then_logins_hba_sync_registry_and_settings_last() -> None:
    plan = plan_primary(ME, CLUSTER_DB)
    assert [(s.action, s.target) for s in plan.steps] == [
        (Action.DROP_REPLICATION_ROLE, "repl_0123456789ab"),
        (Action.DROP_SLOT, "ro_0123456789ab"),
        (Action.DROP_LOGIN, "app_fedcba987654"),
        (Action.RESET_HBA, "2"),
        (Action.RESET_SYNC, ""),
        (Action.FORGET_SERVERS, ME),
        (Action.WRITE_SETTINGS, ""),
    ]
    assert plan.kind is Kind.PRIMARY
    assert [e.id for e in plan.detached] == [RO_ID, SEC_ID]
    assert "ending its WAL sender" in plan.steps[1].message  # the slot is active


def test_what_is_not_safeholds_is_left_alone_and_said_so() -> None:
    notes = " | ".join(plan_primary(ME, CLUSTER_DB).notes)
    for name in ("repl_ffffffffffff", "app_eeeeeeeeeeee", "backup_tool", "ro_aaaaaaaaaaaa"):
        assert name in notes
    targets = {s.target for s in plan_primary(ME, CLUSTER_DB).steps}
    assert not targets & {"repl_ffffffffffff", "app_eeeeeeeeeeee", "backup_tool", "ro_aaaaaaaaaaaa"}


def test_a_primary_already_alone_only_resets_the_sync_setting_and_writes_its_settings() -> None:
    """Idempotent: a teardown that stopped before its settings were written is finished."""
    alone = Inventory(registry=(_entry(ME, "standalone", "me"),), cluster_id=CLUSTER)
    assert [s.action for s in plan_primary(ME, alone).steps] == [Action.RESET_SYNC, Action.WRITE_SETTINGS]
    assert plan_primary(ME, alone).detached == ()


def test_a_primary_whose_own_row_still_says_primary_is_marked_standalone() -> None:
    own = Inventory(registry=(_entry(ME, "primary", "me"),))
    step = plan_primary(ME, own).steps[-2]
    assert step.action is Action.FORGET_SERVERS and "marking this server standalone" in step.message


def test_a_primary_on_an_external_database_only_forgets_the_registry() -> None:
    plan = plan_primary(ME, CLUSTER_DB, bundled=False)
    assert [s.action for s in plan.steps] == [Action.FORGET_SERVERS, Action.WRITE_SETTINGS]
    assert any("external" in n for n in plan.notes)


# --- on a read-only server ------------------------------------------------------------------------


def _replica(**changes: object) -> Inventory:
    """What the replica of the cluster above holds: the same catalog and registry, no slots."""
    base = {"roles": CLUSTER_DB.roles, "slots": (), "registry": CLUSTER_DB.registry, "extra_hba": (),
            "cluster_id": CLUSTER}
    return Inventory(**{**base, **changes})  # type: ignore[arg-type]


def _readonly_plan(inv: Inventory, *, standby: bool = True, spool: int = 0, superuser: bool = True,
                   settings_cluster: str | None = CLUSTER) -> list[tuple[Action, str]]:
    plan = plan_readonly(RO_ID, inv, names=("repl_0123456789ab", "ro_0123456789ab"), standby=standby,
                         settings_cluster_id=settings_cluster, new_cluster_id=NEW_CLUSTER,
                         spool_pending=spool, superuser=superuser)
    assert plan.kind is Kind.READONLY
    return [(s.action, s.target) for s in plan.steps]


def test_a_readonly_server_leaves_the_primary_then_promotes_renews_and_cleans_its_copy() -> None:
    assert _readonly_plan(_replica(), spool=3) == [
        (Action.SHIP_AUDIT, "3"),
        (Action.CATCH_UP, ""),
        (Action.DROP_PRIMARY_ROLE, "repl_0123456789ab"),
        (Action.DROP_PRIMARY_SLOT, "ro_0123456789ab"),
        (Action.DELETE_PRIMARY_ROW, RO_ID),
        (Action.PROMOTE, ""),
        (Action.RENEW_CLUSTER_ID, NEW_CLUSTER),
        # the copy's catalog still holds every replication role and secondary login of the old cluster
        (Action.DROP_REPLICATION_ROLE, "repl_0123456789ab"),
        (Action.DROP_LOGIN, "app_fedcba987654"),
        (Action.RESET_SYNC, ""),
        (Action.FORGET_SERVERS, RO_ID),
        (Action.WRITE_SETTINGS, ""),
    ]


def test_a_readonly_teardown_run_again_after_its_promotion_neither_promotes_nor_renews_twice() -> None:
    promoted = _replica(roles=(), registry=(_entry(RO_ID, "standalone"),), cluster_id=NEW_CLUSTER)
    assert _readonly_plan(promoted, standby=False) == [
        (Action.DROP_PRIMARY_ROLE, "repl_0123456789ab"),
        (Action.DROP_PRIMARY_SLOT, "ro_0123456789ab"),
        (Action.DELETE_PRIMARY_ROW, RO_ID),
        (Action.RESET_SYNC, ""),
        (Action.WRITE_SETTINGS, ""),
    ]


def test_a_promoted_copy_that_kept_the_old_cluster_id_gets_a_new_one() -> None:
    steps = _readonly_plan(_replica(), standby=False)
    assert (Action.RENEW_CLUSTER_ID, NEW_CLUSTER) in steps and (Action.PROMOTE, "") not in steps


def test_without_the_superuser_password_the_roles_stay_and_the_plan_says_so() -> None:
    plan = plan_readonly(RO_ID, _replica(), names=("repl_0123456789ab", "ro_0123456789ab"), standby=True,
                         settings_cluster_id=CLUSTER, new_cluster_id=NEW_CLUSTER, spool_pending=0,
                         superuser=False)
    actions = {s.action for s in plan.steps}
    assert not actions & {Action.DROP_REPLICATION_ROLE, Action.DROP_LOGIN, Action.RESET_SYNC}
    assert {Action.PROMOTE, Action.RENEW_CLUSTER_ID, Action.FORGET_SERVERS} <= actions
    assert any("superuser" in n and "repl_0123456789ab" in n for n in plan.notes)


@pytest.mark.parametrize(("marker", "expected"), [
    ({"user": "repl_aaaaaaaaaaaa", "slot": "ro_bbbbbbbbbbbb", "host": "10.0.0.1"},
     ("repl_aaaaaaaaaaaa", "ro_bbbbbbbbbbbb")),
    (None, ("repl_0123456789ab", "ro_0123456789ab")),  # promoted: derived from the server id
    ({"user": "Robert'); DROP TABLE x;--", "slot": "pg_internal"}, ("repl_0123456789ab", "ro_0123456789ab")),
    ({}, ("repl_0123456789ab", "ro_0123456789ab")),
])
def test_the_names_at_the_primary_come_from_the_marker_else_from_the_server_id(
        marker: dict[str, str] | None, expected: tuple[str, str]) -> None:
    assert readonly_names(RO_ID, marker) == expected


def test_the_sql_left_for_the_operator_names_exactly_what_stays() -> None:
    lines = leftover_sql("repl_0123456789ab", "ro_0123456789ab", RO_ID)
    assert lines[0] == "DROP ROLE IF EXISTS repl_0123456789ab;"
    assert "pg_drop_replication_slot('ro_0123456789ab')" in lines[1]
    assert RO_ID in lines[2]
    assert leftover_sql("bad name; DROP", None, None) == []
    with pytest.raises(ValueError):
        leftover_sql(None, None, "x'; DROP TABLE servers; --")


# --- on a secondary --------------------------------------------------------------------------------


def test_a_secondary_only_removes_its_registry_row_and_names_its_login() -> None:
    plan = plan_secondary(SEC_ID)
    assert [(s.action, s.target) for s in plan.steps] == [(Action.DELETE_PRIMARY_ROW, SEC_ID)]
    assert login_name(SEC_ID) == "app_fedcba987654"
    assert any("app_fedcba987654" in n for n in plan.notes)


# --- the settings it ends with ---------------------------------------------------------------------


def test_the_settings_become_standalone_keeping_the_tuning_and_dropping_the_cluster() -> None:
    stored = _settings(ServerRole.READONLY, cluster_id=CLUSTER, primary_db_host="10.0.0.1", primary_db_port=5433,
                       check_interval=5.0, peer_timeout=3.0, lag_threshold_seconds=60.0, synchronous=True,
                       failover=FailoverSection(enabled=True, ping_interval=10.0))
    after = standalone_settings(stored)
    assert after.server.role is ServerRole.STANDALONE and after.server.id == ME
    ha = after.ha
    assert (ha.cluster_id, ha.primary_db_host, ha.primary_db_port, ha.synchronous) == (None, None, None, False)
    assert (ha.check_interval, ha.peer_timeout, ha.lag_threshold_seconds) == (5.0, 3.0, 60.0)
    assert ha.failover.enabled is False and ha.failover.ping_interval == 10.0
    assert after.database == stored.database and after.http == stored.http
    assert standalone_settings(after) == after  # idempotent

