"""RFC 5424 lines and RFC 6587 octet-counting framing."""

from __future__ import annotations

import datetime as dt
import re

from safehold.alerts.events import AlertEvent
from safehold.alerts.syslog import BOM, format_rfc5424, octet_counted

AT = dt.datetime(2025, 1, 2, 3, 4, 5, 123456, tzinfo=dt.UTC)
EVENT = AlertEvent(kind="StandbyOffline", subject="ro-1", message="standby ro-1 is offline", at=AT,
                   args=("ro-1", "vault-1"), server_id="sid", server_name="vault-1", cluster_id="cid", id=17)

# RFC 5424 section 6, for the messages we make (one SD-ELEMENT)
SYSLOG_MSG = re.compile(
    rb"^<(?P<pri>\d{1,3})>1 (?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z) (?P<host>[!-~]{1,255}) "
    rb"(?P<app>[!-~]{1,48}) (?P<procid>[!-~]{1,128}) (?P<msgid>[!-~]{1,32}) "
    rb'(?P<sd>\[[^ =\]"]{1,32}( [^ =\]"]{1,32}="([^"\\\]]|\\["\\\]])*")*\]) (?P<msg>.*)$', re.S)


def test_a_standby_offline_line() -> None:
    line = format_rfc5424(EVENT, facility=3, app_name="safehold", hostname="host-1", procid=42)
    assert line == (b'<27>1 2025-01-02T03:04:05.123456Z host-1 safehold 42 StandbyOffline [safehold@32473 '
                    b'event="StandbyOffline" subject="ro-1" server="vault-1" serverId="sid" cluster="cid" id="17" '
                    b'arg="ro-1" arg="vault-1"] standby ro-1 is offline')
    assert SYSLOG_MSG.match(line)


def test_priority_is_facility_and_severity() -> None:
    failover = AlertEvent("Failover", "vault-2", "failover", AT, ("vault-2", "vault-1"))
    alive = AlertEvent("HAAlive", "ro", "alive", AT)
    assert format_rfc5424(failover, facility=16, app_name="a", hostname="h", procid=1).startswith(b"<130>1 ")
    assert format_rfc5424(alive, facility=3, app_name="a", hostname="h", procid=1).startswith(b"<29>1 ")


def test_param_values_are_escaped_and_header_fields_cleaned() -> None:
    e = AlertEvent("RaiseAlarm", 'a"b]c\\d', "x", AT, ("Cond", "two words"))
    line = format_rfc5424(e, facility=1, app_name="safe hold", hostname="my host", procid="")
    m = SYSLOG_MSG.match(line)
    assert m, line
    assert m["host"] == b"myhost" and m["app"] == b"safehold" and m["procid"] == b"-"
    assert b'subject="a\\"b\\]c\\\\d"' in line
    assert b'arg="two words"' in line


def test_non_ascii_message_starts_with_a_bom() -> None:
    e = AlertEvent("HAFailed", "ro", "réplica en échec", AT)
    line = format_rfc5424(e, facility=3, app_name="a", hostname="h", procid=1)
    assert line.endswith(b"] " + BOM + "réplica en échec".encode())
    ascii_line = format_rfc5424(AlertEvent("HAFailed", "ro", "plain", AT), facility=3, app_name="a", hostname="h",
                                procid=1)
    assert BOM not in ascii_line


def test_octet_counting_framing() -> None:
    assert octet_counted(b"<27>1 - - - - - - hi") == b"20 <27>1 - - - - - - hi"
    assert octet_counted("é".encode()) == b"2 \xc3\xa9"  # the length counts octets, not characters
