"""SNMP notifications: our OIDs, the variable bindings, and the BER message."""

from __future__ import annotations

import datetime as dt

from pysnmp.proto.api import v2c

from safehold.alerts.events import AlertEvent
from safehold.alerts.settings import DEFAULT_ENTERPRISE_OID
from safehold.alerts.snmp import (
    NOTIFICATIONS,
    OBJECTS,
    SNMP_TRAP_OID,
    SYS_UPTIME,
    decode,
    encode,
    varbinds,
)
from safehold.ha.policy import EventKind

AT = dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
BASE = DEFAULT_ENTERPRISE_OID


def test_one_notification_oid_per_event_kind() -> None:
    assert {k.value for k in EventKind} <= set(NOTIFICATIONS)
    assert len(set(NOTIFICATIONS.values())) == len(NOTIFICATIONS)
    assert len(set(OBJECTS.values())) == len(OBJECTS)


def test_failover_varbinds() -> None:
    e = AlertEvent("Failover", "vault-2", "vault-2 took over", AT, ("vault-2", "vault-1"), "sid", "vault-1", "cid", 5)
    binds = [(oid, v.prettyPrint()) for oid, v in varbinds(e, BASE, 4242)]
    assert binds == [
        (SYS_UPTIME, "4242"),
        (SNMP_TRAP_OID, f"{BASE}.0.8"),
        (f"{BASE}.1.1.0", "Failover"),
        (f"{BASE}.1.2.1", "vault-2"),
        (f"{BASE}.1.2.2", "vault-1"),
        (f"{BASE}.1.3.0", "vault-2 took over"),
        (f"{BASE}.1.4.0", "vault-1"),
        (f"{BASE}.1.5.0", "cid"),
        (f"{BASE}.1.6.0", "2025-01-02T03:04:05.000000Z"),
        (f"{BASE}.1.7.0", "vault-2"),
        (f"{BASE}.1.8.0", "sid"),
        (f"{BASE}.1.9.0", "2"),
        (f"{BASE}.1.10.0", "5"),
    ]


def test_enterprise_base_is_configurable_and_unknown_kinds_get_their_own_oid() -> None:
    binds = dict(varbinds(AlertEvent("NewKind", "s", "m", AT), "1.3.6.1.4.1.99999.7", 0))
    assert str(binds[SNMP_TRAP_OID]) == "1.3.6.1.4.1.99999.7.0.100"


def test_trap_and_inform_messages_decode_as_snmpv2c() -> None:
    e = AlertEvent("HAFailed", "ro", "HA status of ro is Failed", AT)
    data, request_id = encode(varbinds(e, BASE, 1), "c0mmunity")
    community, pdu = decode(data)
    assert community == "c0mmunity"
    assert isinstance(pdu, v2c.SNMPv2TrapPDU)
    got = [(str(o), v.prettyPrint()) for o, v in v2c.apiTrapPDU.get_varbinds(pdu)]
    assert got[1] == (SNMP_TRAP_OID, f"{BASE}.0.2")
    inform, rid = encode(varbinds(e, BASE, 1), "c", inform=True, request_id=1234)
    assert rid == 1234 and isinstance(decode(inform)[1], v2c.InformRequestPDU)


def test_long_text_is_cut() -> None:
    e = AlertEvent("RaiseAlarm", "s", "x" * 10_000, AT)
    message = dict(varbinds(e, BASE, 0))[f"{BASE}.1.3.0"]
    assert len(bytes(message)) == 2048
