"""The HA policy as tables: observations in, decisions out — no servers, no mocks."""

from __future__ import annotations

import pytest

from safehold.domain import ServerRole
from safehold.ha.policy import (
    Confirmed,
    Health,
    Liveness,
    PeerObservation,
    ReplicaObservation,
    Snapshot,
    Thresholds,
    confirm,
    ha_status,
    redirect_target,
    replication_status,
    transitions,
)

P = ServerRole.PRIMARY
S = ServerRole.SECONDARY


def peer(name: str, role: ServerRole, healthy: bool) -> PeerObservation:
    return PeerObservation(name, name, role, f"https://{name}:8443", healthy)


@pytest.mark.parametrize(("peers", "expected"), [
    ([peer("p", P, True), peer("s", S, True)], "p"),
    ([peer("p", P, False), peer("s", S, True)], "s"),
    ([peer("p", P, False), peer("s", S, False)], None),
    ([], None),
    ([peer("s2", S, True), peer("s1", S, True)], "s1"),      # stable choice among secondaries
    ([peer("s", S, True), peer("p", P, True)], "p"),         # the primary wins whatever the order
])
def test_redirect_target(peers: list[PeerObservation], expected: str | None) -> None:
    target = redirect_target(peers)
    assert (target.name if target else None) == expected


@pytest.mark.parametrize(("obs", "ha", "rep"), [
    (ReplicaObservation("r", True, "streaming", 0, 0.1), Health.ALIVE, Health.ALIVE),
    (ReplicaObservation("r", False), Health.FAILED, Health.FAILED),
    (ReplicaObservation("r", True, "catchup", 10, 1.0), Health.FAILED, Health.FAILED),
    (ReplicaObservation("r", True, "streaming", 0, 31.0), Health.ALIVE, Health.FAILED),
    (ReplicaObservation("r", True, "streaming", 65 * 2**20, 1.0), Health.ALIVE, Health.FAILED),
    (ReplicaObservation("r", True, "streaming", 0, 0.0, receiver_error=True), Health.ALIVE, Health.FAILED),
    (ReplicaObservation("r", True, "streaming", None, None), Health.ALIVE, Health.ALIVE),
])
def test_statuses(obs: ReplicaObservation, ha: Health, rep: Health) -> None:
    assert ha_status(obs) is ha
    assert replication_status(obs, Thresholds()) is rep


def snap(ha: Health = Health.ALIVE, rep: Health = Health.ALIVE, **servers: Liveness) -> Snapshot:
    return Snapshot({"ro": ha}, {"ro": rep}, servers or {"p": Liveness.ACTIVE, "ro": Liveness.ACTIVE},
                    frozenset({"ro"}))


def kinds(before: Snapshot | None, now: Snapshot) -> list[str]:
    return [f"{e.kind.value}:{e.subject}" for e in transitions(before, now)]


def test_no_change_no_event() -> None:
    assert kinds(snap(), snap()) == []


def test_each_transition_once() -> None:
    assert kinds(snap(), snap(Health.FAILED, Health.FAILED)) == ["HAFailed:ro", "ReplicationFailed:ro"]
    assert kinds(snap(Health.FAILED, Health.FAILED), snap()) == ["HAAlive:ro", "ReplicationAlive:ro"]
    assert kinds(snap(), snap(rep=Health.FAILED)) == ["ReplicationFailed:ro"]


def test_a_standby_going_inactive_is_also_standby_offline() -> None:
    now = snap(p=Liveness.ACTIVE, ro=Liveness.INACTIVE)
    assert kinds(snap(), now) == ["ServerInactive:ro", "StandbyOffline:ro"]
    assert kinds(snap(), snap(p=Liveness.INACTIVE, ro=Liveness.ACTIVE)) == ["ServerInactive:p"]
    assert kinds(now, snap()) == ["ServerActive:ro"]


def test_first_snapshot_reports_only_failures() -> None:
    assert kinds(None, snap()) == []
    assert kinds(None, snap(Health.FAILED, p=Liveness.INACTIVE, ro=Liveness.ACTIVE)) == [
        "HAFailed:ro", "ServerInactive:p"]


def test_a_new_server_is_reported_only_when_it_appears_inactive() -> None:
    before = snap()
    assert kinds(before, snap(p=Liveness.ACTIVE, ro=Liveness.ACTIVE, s=Liveness.ACTIVE)) == []
    assert kinds(before, snap(p=Liveness.ACTIVE, ro=Liveness.ACTIVE, s=Liveness.INACTIVE)) == [
        "ServerInactive:s"]


@pytest.mark.parametrize(("before", "now"), [
    (snap(), snap(Health.FAILED, Health.FAILED)),
    (snap(Health.FAILED, Health.FAILED), snap()),
    (snap(), snap(p=Liveness.ACTIVE, ro=Liveness.INACTIVE)),
    (snap(), snap(p=Liveness.ACTIVE, ro=Liveness.ACTIVE, s=Liveness.INACTIVE)),
])
def test_one_confirm_check_logs_every_change_at_once(before: Snapshot, now: Snapshot) -> None:
    """ha.status_confirm_checks = 1: the confirmed snapshot is the probe, the transitions those without
    hysteresis."""
    confirmed = confirm(Confirmed(before), now, 1)
    assert confirmed == Confirmed(now)
    assert transitions(before, confirmed.snapshot) == transitions(before, now)


@pytest.mark.parametrize("checks", [2, 3, 5])
def test_a_change_seen_once_is_not_logged_with_more_confirm_checks(checks: int) -> None:
    before = snap()
    confirmed = confirm(Confirmed(before), snap(Health.FAILED, Health.FAILED, p=Liveness.INACTIVE,
                                                ro=Liveness.INACTIVE), checks)
    assert transitions(before, confirmed.snapshot) == []
