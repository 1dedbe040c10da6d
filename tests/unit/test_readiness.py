"""The readiness evaluation as tables: gathered facts in, one check per line out. Plus the spool and
disk probes on a temporary directory."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from safehold.crypto.keyfile import key_id_of
from safehold.domain import ServerRole
from safehold.ha.readiness import (
    MIN_FREE_BYTES,
    Check,
    DiskFacts,
    Facts,
    KeyFacts,
    PeerFacts,
    ReplicaFacts,
    disk_ok,
    evaluate,
    probe_spool,
)
from safehold.storage.replication import ReplicaView

KEY, OTHER = b"\x01" * 16, b"\x02" * 16
GIB = 1 << 30
STREAMING = ReplicaView(in_recovery=True, receiver_status="streaming", sender_host="10.0.0.5", sender_port=5432,
                        slot_name="ro", last_msg_send_time=None, last_msg_receipt_time=None, latest_end_lsn=None,
                        receive_lsn="0/1", replay_lsn="0/1", replay_backlog_bytes=0, replay_delay_seconds=4.0)


def facts(**kw: object) -> Facts:
    base = Facts(role=ServerRole.READONLY, key=KeyFacts(check_value=KEY), db_key_check=KEY, generation=2,
                 spool_path=Path("/d/spool"), disks=(DiskFacts("data", Path("/d"), 50 * GIB, 100 * GIB),),
                 replica=ReplicaFacts(view=STREAMING, data_age=0.0),
                 peers=(PeerFacts("primary", "https://p:8443", True, generation=2),))
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def test_all_good() -> None:
    checks = evaluate(facts())
    assert [c.name for c in checks] == ["key file", "audit spool", "disk (data)", "replication", "generation",
                                        "failover inputs", "peer primary"]
    assert all(c.ok for c in checks), checks
    c = by_name(checks)
    assert c["key file"].detail == f"matches the database (key id {key_id_of(KEY)})"
    assert c["replication"].detail == "streaming, 0 bytes to replay, data 0.0 s old"
    assert c["generation"].detail == "generation 2, none newer (peers: primary 2)"
    assert c["peer primary"].detail == "https://p:8443 answers"


@pytest.mark.parametrize(("kw", "name", "detail"), [
    ({"key": KeyFacts(error="key file /k not found")}, "key file", "key file /k not found"),
    ({"db_key_check": OTHER}, "key file",
     f"does not match the database: the key file holds key {key_id_of(KEY)}, the database was encrypted "
     f"with key {key_id_of(OTHER)}"),
    ({"db_key_check": None}, "key file", "the database has no cluster row to compare the key file with"),
    ({"spool_error": "Read-only file system"}, "audit spool", "/d/spool is not writable: Read-only file system"),
    ({"disks": (DiskFacts("data", Path("/d"), GIB // 2, 100 * GIB),)}, "disk (data)",
     "only 0.5 GiB free (0 %) on /d: below 1.0 GiB or 5%"),
    ({"disks": (DiskFacts("database", Path("/pg"), 40 * GIB, 1000 * GIB),)}, "disk (database)",
     "only 40.0 GiB free (4 %) on /pg: below 1.0 GiB or 5%"),
    ({"disks": (DiskFacts("data", Path("/d"), error="No such file or directory"),)}, "disk (data)",
     "/d: No such file or directory"),
    ({"replica": ReplicaFacts(view=dataclasses.replace(STREAMING, receiver_status="waiting"))}, "replication",
     "not streaming from the primary (WAL receiver: waiting)"),
    ({"replica": ReplicaFacts(view=dataclasses.replace(STREAMING, receiver_status=None))}, "replication",
     "not streaming from the primary (WAL receiver: none)"),
    ({"replica": ReplicaFacts(view=dataclasses.replace(STREAMING, in_recovery=False))}, "replication",
     "this server's database is not a replica (promoted already?)"),
    ({"replica": ReplicaFacts(view=STREAMING, data_age=45.0)}, "replication",
     "streaming but behind: 0 bytes to replay, data 45.0 s old (thresholds 67108864 bytes, 30 s)"),
    ({"replica": ReplicaFacts(view=dataclasses.replace(STREAMING, replay_backlog_bytes=100 * 2**20), data_age=1.0)},
     "replication", "streaming but behind: 104857600 bytes to replay, data 1.0 s old (thresholds 67108864 bytes, "
                    "30 s)"),
    ({"replica": ReplicaFacts(error="permission denied")}, "replication", "cannot read the replica: permission "
                                                                           "denied"),
    ({"peers": (PeerFacts("primary", "https://p:8443", True, generation=3),)}, "generation",
     "superseded: rejoin (this database is at generation 2; primary at 3)"),
    ({"peers": (PeerFacts("primary", "https://p:8443", False, error="timed out"),)}, "peer primary",
     "https://p:8443: timed out"),
])
def test_failures(kw: dict[str, object], name: str, detail: str) -> None:
    checks = evaluate(facts(**kw))
    failed = [c for c in checks if not c.ok]
    assert failed == [Check(name, False, detail)]


def test_database_unreachable_fails_what_needs_it() -> None:
    checks = by_name(evaluate(facts(db_error="Connection refused", db_key_check=None, generation=None,
                                    replica=ReplicaFacts(), peers=(), registry_read=False)))
    assert {n for n, c in checks.items() if not c.ok} == {"key file", "replication", "generation", "peers"}
    assert checks["key file"].detail.endswith("cannot be compared with the database: Connection refused")
    assert checks["replication"].detail == "cannot read the replica: Connection refused"
    assert checks["generation"].detail == "cannot read this server's generation: Connection refused"
    assert checks["peers"] == Check("peers", False, "unknown: the server registry could not be read")
    assert by_name(evaluate(facts(peers=())))["peers"] == Check("peers", True, "no other server registered")


@pytest.mark.parametrize(("role", "spool"), [(ServerRole.PRIMARY, None), (ServerRole.SECONDARY, None)])
def test_not_a_readonly_server(role: ServerRole, spool: Path | None) -> None:
    checks = by_name(evaluate(facts(role=role, replica=None, spool_path=spool)))
    assert all(c.ok for c in checks.values())
    assert checks["replication"].detail == f"n/a (a {role} server has no replica)"
    assert checks["audit spool"].detail.startswith("n/a")


def test_generation_without_reports() -> None:
    # a peer that does not report its generation (older version) or does not answer is skipped
    peers = (PeerFacts("a", "https://a", True), PeerFacts("b", "https://b", False, error="refused"))
    c = by_name(evaluate(facts(peers=peers)))
    assert c["generation"] == Check("generation", True, "generation 2 (no peer reports one)")
    peers = (PeerFacts("a", "https://a", True, generation=1), PeerFacts("b", "https://b", True, generation=2))
    assert by_name(evaluate(facts(peers=peers)))["generation"].ok


@pytest.mark.parametrize(("free", "total", "ok"), [
    (MIN_FREE_BYTES, 10 * MIN_FREE_BYTES, True),
    (MIN_FREE_BYTES - 1, 10 * MIN_FREE_BYTES, False),
    (50 * GIB, 1000 * GIB, True),
    (49 * GIB, 1000 * GIB, False),
])
def test_disk_threshold(free: int, total: int, ok: bool) -> None:
    assert disk_ok(free, total) is ok


def test_probe_spool(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    assert probe_spool(spool) is None
    assert spool.is_dir() and list(spool.iterdir()) == []  # made, and the test file removed
    assert (spool.stat().st_mode & 0o777) == 0o700
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    assert probe_spool(blocked) is not None


def test_failover_inputs_of_a_read_only_server() -> None:
    from safehold.ha.failover_inputs import InputKind, InputState

    def check(**kw: object) -> Check:
        return by_name(evaluate(facts(**kw)))["failover inputs"]

    assert check().ok and "automatic failover is off" in check().detail
    up = (InputState(InputKind.WITNESS, "10.0.0.1:22", True), InputState(InputKind.GATEWAY, "10.0.0.254", None))
    c = check(failover_inputs=up)
    assert c.ok and c.detail == "witness 10.0.0.1:22 reachable; gateway 10.0.0.254 unknown"
    down = (InputState(InputKind.WITNESS, "10.0.0.1:22", False), up[1])
    c = check(failover_inputs=down)
    assert not c.ok and "witness 10.0.0.1:22 UNREACHABLE" in c.detail and "may not promote" in c.detail
    c = check(failover_inputs=())
    assert c.ok and "cannot tell its own network failure" in c.detail
    c = check(failover_error="the stored policy is not valid")
    assert not c.ok and "cannot be read" in c.detail
    # a writer has no failover inputs to check
    assert "failover inputs" not in by_name(evaluate(facts(role=ServerRole.PRIMARY, replica=None)))
