"""Readiness in emergency mode, as tables: a read-only server whose primary and secondary do not answer marks
what the outage takes down (its replica's stream, those servers) as expected, not failed, and names the
command that makes it take over."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from safehold.domain import ServerRole
from safehold.ha.readiness import (
    EXPECTED,
    Check,
    DiskFacts,
    Facts,
    KeyFacts,
    PeerFacts,
    ReplicaFacts,
    emergency,
    evaluate,
    promote_advice,
)
from safehold.storage.replication import ReplicaView

KEY = b"\x01" * 16
GIB = 1 << 30
STREAMING = ReplicaView(in_recovery=True, receiver_status="streaming", sender_host="10.0.0.5", sender_port=5432,
                        slot_name="ro", last_msg_send_time=None, last_msg_receipt_time=None, latest_end_lsn=None,
                        receive_lsn="0/1", replay_lsn="0/1", replay_backlog_bytes=0, replay_delay_seconds=4.0)
CUT_OFF = dataclasses.replace(STREAMING, receiver_status=None)  # the primary database is gone
PRIMARY_DOWN = PeerFacts("vault-1", "https://p:8443", False, error="connection refused", role=ServerRole.PRIMARY)
SECONDARY_DOWN = PeerFacts("vault-2", "https://s:8443", False, error="timed out", role=ServerRole.SECONDARY)
OTHER_RO_DOWN = PeerFacts("ro-2", "https://r:8443", False, error="timed out", role=ServerRole.READONLY)
DATA_DIR = Path("/srv/safehold ro")


def facts(**kw: object) -> Facts:
    """A read-only server in emergency mode: its replica cut off, its primary and secondary down."""
    base = Facts(role=ServerRole.READONLY, key=KeyFacts(check_value=KEY), db_key_check=KEY, generation=2,
                 spool_path=Path("/d/spool"), disks=(DiskFacts("data", Path("/d"), 50 * GIB, 100 * GIB),),
                 replica=ReplicaFacts(view=CUT_OFF, data_age=None), peers=(PRIMARY_DOWN, SECONDARY_DOWN),
                 data_dir=DATA_DIR)
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def test_what_the_outage_takes_down_is_expected_not_failed() -> None:
    f = facts()
    assert emergency(f)
    checks = by_name(evaluate(f))
    assert [(n, c.state) for n, c in checks.items()] == [
        ("key file", "passed"), ("audit spool", "passed"), ("disk (data)", "passed"), ("replication", "expected"),
        ("generation", "passed"), ("failover inputs", "passed"), ("peer vault-1", "expected"), ("peer vault-2", "expected")]
    assert all(c.ok for c in checks.values())  # nothing stands in the way of a take-over
    assert checks["replication"].detail == f"not streaming from the primary (WAL receiver: none): {EXPECTED}"
    assert checks["peer vault-1"].detail == f"https://p:8443: connection refused: {EXPECTED}"


def test_a_real_problem_still_fails_in_emergency_mode() -> None:
    checks = by_name(evaluate(facts(spool_error="No space left on device", peers=(PRIMARY_DOWN, OTHER_RO_DOWN),
                                    replica=ReplicaFacts(view=STREAMING, data_age=45.0))))
    assert checks["audit spool"].state == "failed"
    assert checks["peer ro-2"].state == "failed"  # another read-only server is not what the outage is about
    assert checks["peer vault-1"].state == "expected"
    assert checks["replication"].state == "failed"  # still streaming (the database is up), but behind
    assert "streaming but behind" in checks["replication"].detail


@pytest.mark.parametrize(("kw", "why"), [
    ({"peers": (dataclasses.replace(PRIMARY_DOWN, healthy=True, error=None), SECONDARY_DOWN)}, "the primary answers"),
    ({"peers": (dataclasses.replace(SECONDARY_DOWN, healthy=True, error=None),)}, "a secondary answers"),
    ({"peers": (PeerFacts("who", "https://w:8443", True),)}, "a peer of unknown role answers"),
    ({"role": ServerRole.PRIMARY, "replica": None}, "not a read-only server"),
    ({"replica": ReplicaFacts(view=dataclasses.replace(CUT_OFF, in_recovery=False))}, "promoted already"),
    ({"replica": ReplicaFacts(error="connection refused")}, "the replica cannot be read"),
    ({"db_error": "connection refused", "registry_read": False}, "the database cannot be read"),
])
def test_not_emergency_mode(kw: dict[str, object], why: str) -> None:
    f = facts(**kw)
    assert not emergency(f), why
    assert promote_advice(f) is None
    assert not any(c.expected for c in evaluate(f)), why


def test_not_emergency_mode_the_outage_is_a_failure() -> None:
    """The same replica and peer outage on a read-only server that still reaches a secondary: failures."""
    healthy_secondary = dataclasses.replace(SECONDARY_DOWN, healthy=True, error=None)
    checks = by_name(evaluate(facts(peers=(PRIMARY_DOWN, healthy_secondary))))
    assert checks["replication"].state == "failed" and not checks["replication"].ok
    assert checks["peer vault-1"].state == "failed" and checks["peer vault-2"].state == "passed"


def test_promote_advice_names_the_command_for_this_data_dir() -> None:
    advice = promote_advice(facts())
    assert advice is not None
    assert advice.command == "safehold ha promote --data-dir '/srv/safehold ro'"
    assert "acting primary" in advice.when and advice.when.count(". ") == 0  # one sentence
    assert promote_advice(facts(engine_managed=True)) is None  # the HA engine promotes, never Safehold
    assert promote_advice(facts(data_dir=None)) is None


def test_no_writer_registered_is_emergency_mode_too() -> None:
    f = facts(peers=())
    assert emergency(f)
    assert by_name(evaluate(f))["peers"].state == "passed"
