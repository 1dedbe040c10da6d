"""A read-only server's emergency periods, audited in its chain, become HA events once shipped."""

from __future__ import annotations

import datetime as dt

from safehold.audit.chain import GENESIS, AuditEvent, extend
from safehold.audit.emergency import BEGAN, ENDED, events_of

KEY = b"k" * 32
SERVER = "11111111-1111-1111-1111-111111111111"


def records(*events: AuditEvent):  # type: ignore[no-untyped-def]
    return extend(KEY, SERVER, "readonly", 0, GENESIS, list(events))


def system(action: str, **detail: object) -> AuditEvent:
    return AuditEvent(actor="system", action=action, result="success", target_type="server", detail=detail,
                      at=dt.datetime(2026, 12, 5, 12, 0, tzinfo=dt.UTC))


def test_the_start_and_the_end_of_a_period_are_events_and_nothing_else_is() -> None:
    got = events_of(records(
        system(BEGAN, server="vault-ro", began="2026-12-05T11:00:00+00:00"),
        AuditEvent(actor="alice", action="password_retrieved", result="success"),
        system(ENDED, server="vault-ro", began="2026-12-05T11:00:00+00:00", ended="2026-12-05T11:05:00+00:00",
               seconds=300),
        system("server_started"),
    ))
    assert got == [
        ("EmergencyMode", "vault-ro", "vault-ro began serving users in read-only emergency mode at "
                                      "2026-12-05T11:00:00+00:00: no primary or secondary answered"),
        ("EmergencyMode", "vault-ro", "vault-ro served users in read-only emergency mode from "
                                      "2026-12-05T11:00:00+00:00 to 2026-12-05T11:05:00+00:00 (300 s)"),
    ]


def test_a_record_without_details_still_names_its_server() -> None:
    (event,) = events_of(records(system(ENDED)))
    assert event[1] == SERVER and "from ? to 2026-12-05 12:00:00+00:00" in event[2]


def test_the_event_is_named_as_the_ha_layer_names_it() -> None:
    from safehold.audit.emergency import EVENT
    from safehold.ha.policy import EventKind

    assert EventKind.EMERGENCY_MODE.value == EVENT
