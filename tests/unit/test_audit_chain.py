"""The audit chain: tampering of every kind is found and named."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from typing import Any

import pytest

from safehold.audit.chain import (
    GENESIS,
    AuditEvent,
    ChainChecker,
    ChainedRecord,
    Problem,
    StoredRecord,
    canonical,
    extend,
    mac_of,
    verify,
)

KEY = b"k" * 32
OTHER_KEY = b"x" * 32
SERVER = "11111111-1111-1111-1111-111111111111"
T0 = dt.datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=dt.UTC)


def event(i: int) -> AuditEvent:
    return AuditEvent(
        actor=f"user{i % 3}", action="password_retrieved", result="success", source_ip="10.0.0.9",
        target_type="account", target_id=str(1000 + i), target_name=f"root@db{i}",
        detail={"reason": f"ticket {i}", "n": i}, at=T0 + dt.timedelta(seconds=i),
    )


def chain(n: int, *, key: bytes = KEY, first_id: int = 100) -> tuple[list[StoredRecord], tuple[int, bytes]]:
    """n records as stored (row ids first_id, first_id+1, ...) and the chain head."""
    records = extend(key, SERVER, "primary", 0, GENESIS, [event(i) for i in range(1, n + 1)])
    stored = [StoredRecord(first_id + i, r) for i, r in enumerate(records)]
    head = (records[-1].seq, records[-1].mac) if records else (0, GENESIS)
    return stored, head


def problems(
    stored: Sequence[StoredRecord], head: tuple[int, bytes] | None, key: bytes = KEY
) -> list[Problem]:
    return list(verify(key, SERVER, stored, head))


def with_event(s: StoredRecord, **changes: Any) -> StoredRecord:
    r = s.record
    return StoredRecord(s.id, dataclasses.replace(r, event=dataclasses.replace(r.event, **changes)))


# --- extend --------------------------------------------------------------------


def test_extend_links_each_record_to_the_previous_one() -> None:
    stored, head = chain(4)
    records = [s.record for s in stored]
    assert [r.seq for r in records] == [1, 2, 3, 4]
    assert records[0].prev_mac == GENESIS
    for prev, cur in zip(records, records[1:], strict=False):
        assert cur.prev_mac == prev.mac
    assert head == (4, records[-1].mac)
    assert all(len(r.mac) == 32 for r in records)


def test_extend_continues_from_an_existing_head() -> None:
    all_at_once = extend(KEY, SERVER, "primary", 0, GENESIS, [event(i) for i in (1, 2, 3)])
    first = extend(KEY, SERVER, "primary", 0, GENESIS, [event(1)])
    rest = extend(KEY, SERVER, "primary", first[-1].seq, first[-1].mac, [event(2), event(3)])
    assert first + rest == all_at_once


def test_extend_nothing_is_nothing() -> None:
    assert extend(KEY, SERVER, "primary", 5, b"m" * 32, []) == []


def test_row_holds_every_column() -> None:
    r = chain(1)[0][0].record
    row = r.row()
    assert row["server_id"] == SERVER and row["seq"] == 1 and row["at"] == event(1).at
    assert row["prev_mac"] == GENESIS and row["mac"] == r.mac
    assert row["detail"] == {"reason": "ticket 1", "n": 1}


# --- canonical -----------------------------------------------------------------


def test_canonical_is_stable_across_timezone_representations_of_one_instant() -> None:
    utc = event(1)
    plus2 = dataclasses.replace(utc, at=utc.at.astimezone(dt.timezone(dt.timedelta(hours=2))))
    minus7 = dataclasses.replace(utc, at=utc.at.astimezone(dt.timezone(dt.timedelta(hours=-7, minutes=-30))))
    assert plus2.at.hour != utc.at.hour
    assert canonical(SERVER, "primary", 1, utc) == canonical(SERVER, "primary", 1, plus2)
    assert canonical(SERVER, "primary", 1, utc) == canonical(SERVER, "primary", 1, minus7)
    assert mac_of(KEY, GENESIS, SERVER, "primary", 1, utc) == mac_of(KEY, GENESIS, SERVER, "primary", 1, plus2)


def test_canonical_time_always_has_microseconds() -> None:
    whole_second = dataclasses.replace(event(1), at=dt.datetime(2024, 5, 1, 12, tzinfo=dt.UTC))
    assert b'"2024-05-01T12:00:00.000000+00:00"' in canonical(SERVER, "primary", 1, whole_second)


def test_canonical_is_stable_across_detail_key_order() -> None:
    a = dataclasses.replace(event(1), detail={"a": 1, "b": {"y": 2, "x": 1}})
    b = dataclasses.replace(event(1), detail={"b": {"x": 1, "y": 2}, "a": 1})
    assert canonical(SERVER, "primary", 1, a) == canonical(SERVER, "primary", 1, b)


def test_canonical_pinned() -> None:
    """Pinned: stored MACs must keep verifying after an upgrade."""
    e = AuditEvent(actor="alice", action="login", result="success", at=T0, detail={"b": 1, "a": "é"})
    assert canonical("s1", "primary", 7, e) == (
        '["s1","primary",7,"2024-05-01T12:00:00.123456+00:00","alice","","login","","","",'
        '"success",{"a":"é","b":1}]'
    ).encode()


@pytest.mark.parametrize(
    "field",
    ["actor", "action", "result", "source_ip", "target_type", "target_id", "target_name"],
)
def test_every_event_field_is_in_the_mac(field: str) -> None:
    e = event(1)
    changed = dataclasses.replace(e, **{field: getattr(e, field) + "!"})
    assert mac_of(KEY, GENESIS, SERVER, "primary", 1, e) != mac_of(KEY, GENESIS, SERVER, "primary", 1, changed)


def test_server_role_seq_prev_and_time_are_in_the_mac() -> None:
    e = event(1)
    base = mac_of(KEY, GENESIS, SERVER, "primary", 1, e)
    assert base != mac_of(KEY, GENESIS, SERVER, "secondary", 1, e)
    assert base != mac_of(KEY, GENESIS, "other", "primary", 1, e)
    assert base != mac_of(KEY, GENESIS, SERVER, "primary", 2, e)
    assert base != mac_of(KEY, b"\x01" * 32, SERVER, "primary", 1, e)
    assert base != mac_of(KEY, GENESIS, SERVER, "primary", 1,
                          dataclasses.replace(e, at=e.at + dt.timedelta(microseconds=1)))


# --- verify: intact --------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 2, 50])
def test_intact_chain_verifies(n: int) -> None:
    stored, head = chain(n)
    assert problems(stored, head if n else None) == []


def test_a_deleted_chain_head_is_reported() -> None:
    stored, _ = chain(3)
    found = problems(stored, None)
    assert len(found) == 1 and "head is missing" in found[0].what


def test_checker_over_many_records_keeps_only_constant_state() -> None:
    n = 5000
    records = extend(KEY, SERVER, "primary", 0, GENESIS, (event(i) for i in range(1, n + 1)))
    checker = ChainChecker(KEY, SERVER)
    found: list[Problem] = []
    for i, r in enumerate(records):
        found += checker.check(StoredRecord(i + 1, r))
    found += checker.finish((records[-1].seq, records[-1].mac))
    assert found == []
    assert checker.count == n
    assert checker.expected_seq == n + 1


def test_checker_finds_one_altered_record_deep_in_a_long_chain() -> None:
    stored, head = chain(3000, first_id=1)
    stored[2345] = with_event(stored[2345], actor="mallory")
    found = problems(stored, head)
    assert [(p.record_id, p.seq) for p in found] == [(2346, 2346)]


# --- verify: tampering -----------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        {"actor": "mallory"},
        {"action": "login"},
        {"result": "failure"},
        {"source_ip": "10.6.6.6"},
        {"target_id": "9999"},
        {"target_name": "root@elsewhere"},
        {"detail": {"reason": "ticket 2", "n": 2}},
        {"detail": {}},
        {"at": T0 + dt.timedelta(days=1)},
    ],
    ids=lambda c: next(iter(c)),
)
def test_edited_field_is_reported_as_altered_naming_record_id_and_seq(change: dict[str, Any]) -> None:
    stored, head = chain(5)
    stored[2] = with_event(stored[2], **change)

    found = problems(stored, head)

    assert len(found) == 1
    p = found[0]
    assert (p.server_id, p.record_id, p.seq) == (SERVER, 102, 3)
    assert "altered" in p.what
    assert str(p) == f"record id 102 (server {SERVER}, seq 3): content was altered (MAC mismatch)"


def test_edited_server_role_or_mac_is_altered() -> None:
    stored, head = chain(3)
    r = stored[1].record
    stored[1] = StoredRecord(stored[1].id, dataclasses.replace(r, server_role="secondary"))
    found = problems(stored, head)
    assert [(p.record_id, p.seq, "altered" in p.what) for p in found] == [(101, 2, True)]


def test_edited_prev_mac_breaks_the_link() -> None:
    stored, head = chain(3)
    r = stored[1].record
    stored[1] = StoredRecord(stored[1].id, dataclasses.replace(r, prev_mac=b"\x00" * 32))
    found = problems(stored, head)
    assert [(p.record_id, p.seq) for p in found] == [(101, 2), (101, 2)]
    assert "link to the previous record is broken" in found[0].what
    assert "altered" in found[1].what


def test_deleted_middle_record_is_a_gap() -> None:
    stored, head = chain(5)
    del stored[2]  # seq 3, row id 102

    found = problems(stored, head)

    assert len(found) == 1
    p = found[0]
    assert (p.record_id, p.seq) == (103, 4)
    assert p.what == "expected seq 3: records 3..3 are missing"


def test_deleted_run_of_records_names_the_whole_range() -> None:
    stored, head = chain(10)
    del stored[3:7]  # seq 4..7
    found = problems(stored, head)
    assert [(p.record_id, p.seq, p.what) for p in found] == [
        (107, 8, "expected seq 4: records 4..7 are missing")
    ]


def test_deleted_first_record_is_a_gap() -> None:
    stored, head = chain(3)
    found = problems(stored[1:], head)
    assert [(p.record_id, p.seq, p.what) for p in found] == [
        (101, 2, "expected seq 1: records 1..1 are missing")
    ]


@pytest.mark.parametrize("keep", [0, 1, 4])
def test_deleted_tail_is_reported_against_the_head(keep: int) -> None:
    stored, head = chain(5)

    found = problems(stored[:keep], head)

    assert len(found) == 1
    p = found[0]
    assert (p.record_id, p.seq) == (None, 5)
    assert p.what == f"chain head says 5 records but the log ends at {keep}: records were removed"
    assert str(p) == f"server {SERVER}: {p.what}"


def test_head_with_a_different_mac_is_reported() -> None:
    stored, head = chain(3)
    found = problems(stored, (3, b"\x00" * 32))
    assert [(p.record_id, p.seq) for p in found] == [(None, 3)]


def test_swapped_seq_numbers_are_detected_at_both_records() -> None:
    """Rows read back in seq order: swapping two records' seq swaps their positions."""
    stored, head = chain(5)
    a, b = stored[1], stored[2]  # seq 2 and 3
    swapped = [
        stored[0],
        StoredRecord(b.id, dataclasses.replace(b.record, seq=2)),
        StoredRecord(a.id, dataclasses.replace(a.record, seq=3)),
        *stored[3:],
    ]

    found = problems(swapped, head)

    assert {(p.record_id, p.seq) for p in found} >= {(102, 2), (101, 3)}
    assert any("altered" in p.what for p in found if p.record_id == 102)
    assert any("altered" in p.what for p in found if p.record_id == 101)


def test_swapped_contents_of_two_positions_are_detected() -> None:
    """Two records keep their seq but exchange everything else (e.g. ids reused)."""
    stored, head = chain(5)
    r2, r3 = stored[1].record, stored[2].record
    moved = [
        stored[0],
        StoredRecord(stored[1].id, dataclasses.replace(r3, seq=2)),
        StoredRecord(stored[2].id, dataclasses.replace(r2, seq=3)),
        *stored[3:],
    ]
    found = problems(moved, head)
    assert {p.seq for p in found} >= {2, 3}
    assert all(p.record_id in (101, 102, 103) for p in found)


def test_records_fed_out_of_order_are_not_accepted() -> None:
    stored, head = chain(4)
    found = problems([stored[0], stored[2], stored[1], stored[3]], head)
    assert found  # the exact wording for out-of-order input is not specified


def test_replayed_record_is_detected() -> None:
    stored, head = chain(3)
    found = problems([stored[0], stored[1], stored[1], stored[2]], head)
    assert found
    assert all(p.record_id == 101 for p in found)


def test_forged_record_without_the_key_is_altered() -> None:
    """An attacker without the key re-chains an edited record with a made-up MAC."""
    stored, head = chain(3)
    r = stored[1].record
    forged = dataclasses.replace(r, event=dataclasses.replace(r.event, actor="mallory"), mac=b"\x00" * 32)
    found = problems([stored[0], StoredRecord(stored[1].id, forged), stored[2]], head)
    assert (101, 2) in {(p.record_id, p.seq) for p in found}
    assert (102, 3) in {(p.record_id, p.seq) for p in found}  # its successor's link now fails too


def test_chain_re_made_with_another_key_fails_everywhere() -> None:
    """An attacker who rebuilds the whole chain with a key of their own."""
    forged, head = chain(4, key=OTHER_KEY)
    found = problems(forged, head, key=KEY)
    assert [(p.record_id, p.seq) for p in found] == [(100, 1), (101, 2), (102, 3), (103, 4)]
    assert all("altered" in p.what for p in found)


def test_wrong_key_makes_every_record_fail() -> None:
    stored, head = chain(6)
    found = problems(stored, head, key=OTHER_KEY)
    assert [(p.record_id, p.seq) for p in found] == [(100 + i, i + 1) for i in range(6)]
    assert all(p.what == "content was altered (MAC mismatch)" for p in found)


def test_record_moved_from_another_server_is_altered() -> None:
    """Relabelling another server's record as ours (same cluster key) does not verify."""
    other = extend(KEY, "22222222-2222-2222-2222-222222222222", "primary", 0, GENESIS, [event(1)])[0]
    moved = dataclasses.replace(other, server_id=SERVER)
    found = problems([StoredRecord(1, moved)], (1, moved.mac))
    assert [(p.record_id, p.seq, p.what) for p in found] == [(1, 1, "content was altered (MAC mismatch)")]


def test_verify_yields_every_problem_not_just_the_first() -> None:
    stored, head = chain(8)
    stored[1] = with_event(stored[1], actor="mallory")
    stored[5] = with_event(stored[5], result="failure")
    del stored[3]
    found = problems(stored[:-1], head)
    assert [(p.record_id, p.seq) for p in found] == [(101, 2), (104, 5), (105, 6), (None, 8)]


def test_problem_str_names_where() -> None:
    assert str(Problem("s1", 7, 3, "bad")) == "record id 7 (server s1, seq 3): bad"
    assert str(Problem("s1", None, 3, "bad")) == "server s1: bad"


def test_chained_record_is_immutable() -> None:
    r: ChainedRecord = chain(1)[0][0].record
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.seq = 2  # type: ignore[misc]
