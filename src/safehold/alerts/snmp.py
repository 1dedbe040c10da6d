"""SNMPv2c notifications (trap, or inform when acknowledgement is wanted), built with pysnmp's
protocol API and sent over UDP.

Our OIDs, under the enterprise base (default ``1.3.6.1.4.1.32473.1``, RFC 5612's documentation
number; ``enterprise_oid`` changes it):

- ``<base>.0.<n>`` one notification per event kind (:data:`NOTIFICATIONS`);
- ``<base>.1.<n>.0`` the event's fields (:data:`OBJECTS`); the event arguments are a column,
  ``<base>.1.2.<i>`` for i = 1, 2, ...

Every notification carries sysUpTime.0 and snmpTrapOID.0 first, as SNMPv2 requires.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pyasn1.codec.ber import decoder, encoder
from pyasn1.error import PyAsn1Error
from pysnmp.proto import api
from pysnmp.proto.api import v2c
from pysnmp.proto.error import ProtocolError

from safehold.alerts.base import AlertError, network_error, raise_if_refused, stored_or_file
from safehold.alerts.events import TEST_KIND, AlertEvent
from safehold.alerts.settings import SnmpSection

SYS_UPTIME = "1.3.6.1.2.1.1.3.0"
SNMP_TRAP_OID = "1.3.6.1.6.3.1.1.4.1.0"

#: notification OID = <base>.0.<number>
NOTIFICATIONS: dict[str, int] = {
    "HAAlive": 1,
    "HAFailed": 2,
    "ReplicationAlive": 3,
    "ReplicationFailed": 4,
    "ServerActive": 5,
    "ServerInactive": 6,
    "StandbyOffline": 7,
    "Failover": 8,
    "ManualSwitch": 9,
    "RaiseAlarm": 10,
    "ClearAlarm": 11,
    "Fenced": 12,
    "EmergencyMode": 13,
    "WitnessUnreachable": 14,
    "WitnessReachable": 15,
    TEST_KIND: 99,
}
OTHER_NOTIFICATION = 100  # an event kind this version does not know

#: object OID = <base>.1.<number>.0 (arguments: <base>.1.2.<i>)
OBJECTS: dict[str, int] = {
    "eventName": 1,
    "eventArgs": 2,
    "eventMessage": 3,
    "eventServer": 4,
    "eventClusterId": 5,
    "eventTime": 6,
    "eventSubject": 7,
    "eventServerId": 8,
    "eventSeverity": 9,
    "eventId": 10,
}
MAX_TEXT = 2048  # bytes of a text value; longer ones are cut
_STARTED = time.monotonic()


def notification_oid(base: str, kind: str) -> str:
    return f"{base}.0.{NOTIFICATIONS.get(kind, OTHER_NOTIFICATION)}"


def object_oid(base: str, name: str, index: int = 0) -> str:
    return f"{base}.1.{OBJECTS[name]}.{index}"


def _text(value: str) -> Any:
    return v2c.OctetString(value.encode("utf-8", "replace")[:MAX_TEXT])


def varbinds(event: AlertEvent, base: str, uptime_centiseconds: int) -> list[tuple[str, Any]]:
    """The notification's variable bindings, in order: (OID, pysnmp value)."""
    binds: list[tuple[str, Any]] = [
        (SYS_UPTIME, v2c.TimeTicks(uptime_centiseconds % 2**32)),
        (SNMP_TRAP_OID, v2c.ObjectIdentifier(notification_oid(base, event.kind))),
        (object_oid(base, "eventName"), _text(event.kind)),
    ]
    binds += [(object_oid(base, "eventArgs", i), _text(a)) for i, a in enumerate(event.args, start=1)]
    binds += [
        (object_oid(base, "eventMessage"), _text(event.message)),
        (object_oid(base, "eventServer"), _text(event.server)),
        (object_oid(base, "eventClusterId"), _text(event.cluster_id)),
        (object_oid(base, "eventTime"), _text(event.at_text())),
        (object_oid(base, "eventSubject"), _text(event.subject)),
        (object_oid(base, "eventServerId"), _text(event.server_id)),
        (object_oid(base, "eventSeverity"), v2c.Integer32(int(event.severity))),
    ]
    if event.id is not None and 0 <= event.id < 2**32:
        binds.append((object_oid(base, "eventId"), v2c.Unsigned32(event.id)))
    return binds


def encode(binds: list[tuple[str, Any]], community: str, *, inform: bool = False,
           request_id: int | None = None) -> tuple[bytes, int]:
    """A BER-encoded SNMPv2c message holding a trap (or an inform) PDU; returns it and its
    request id."""
    pdu = v2c.InformRequestPDU() if inform else v2c.SNMPv2TrapPDU()
    v2c.apiTrapPDU.set_defaults(pdu)
    if request_id is not None:
        v2c.apiTrapPDU.set_request_id(pdu, request_id)
    v2c.apiTrapPDU.set_varbinds(pdu, [(v2c.ObjectIdentifier(oid), value) for oid, value in binds])
    msg = v2c.Message()
    v2c.apiMessage.set_defaults(msg)
    v2c.apiMessage.set_community(msg, community)
    v2c.apiMessage.set_pdu(msg, pdu)
    return encoder.encode(msg), int(v2c.apiTrapPDU.get_request_id(pdu))


def decode(data: bytes) -> tuple[str, Any]:
    """(community, PDU) of an SNMPv2c message; raises ValueError for anything else."""
    try:
        if api.decodeMessageVersion(data) != api.SNMP_VERSION_2C:
            raise ValueError("not an SNMPv2c message")
        msg, _ = decoder.decode(data, asn1Spec=v2c.Message())
    except (PyAsn1Error, ProtocolError):
        raise ValueError("not an SNMP message") from None
    return str(v2c.apiMessage.get_community(msg)), v2c.apiMessage.get_pdu(msg)


class SnmpChannel:
    name = "snmp"

    def __init__(self, section: SnmpSection, resolve: Callable[[Path], Path] = lambda p: p,
                 community: str | None = None) -> None:
        self.section = section
        self.community_file = resolve(section.community_file) if section.community_file else None
        self._community = community  # the stored community (the database's settings), else community_file

    def target(self) -> str:
        s = self.section
        return f"snmp://{s.host}:{s.port} (v2c {'inform' if s.inform else 'trap'}, base {s.enterprise_oid})"

    def _read_community(self) -> str:
        return stored_or_file(self._community, self.community_file, "SNMP community", self.name)

    def check(self) -> None:
        self._read_community()

    def send(self, event: AlertEvent) -> str:
        s = self.section
        community = self._read_community()
        binds = varbinds(event, s.enterprise_oid, int((time.monotonic() - _STARTED) * 100))
        where = f"{s.host}:{s.port}"
        try:
            family, kind, proto, _, addr = socket.getaddrinfo(s.host, s.port, type=socket.SOCK_DGRAM)[0]
            with socket.socket(family, kind, proto) as sock:
                sock.connect(addr)
                if s.inform:
                    self._inform(sock, binds, community, where)
                else:
                    sock.send(encode(binds, community)[0])
                    raise_if_refused(sock)
        except AlertError:
            raise
        except OSError as exc:
            raise network_error("snmp", where, exc) from None
        what = "inform acknowledged by" if s.inform else "trap sent to"
        return f"SNMP {what} {where} ({notification_oid(s.enterprise_oid, event.kind)})"

    def _inform(self, sock: socket.socket, binds: list[tuple[str, Any]], community: str, where: str) -> None:
        """Send the inform until its response comes back (``retries`` resends)."""
        s = self.section
        data, request_id = encode(binds, community, inform=True)
        for _ in range(s.retries + 1):
            sock.send(data)
            deadline = time.monotonic() + s.timeout
            while (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                try:
                    reply = sock.recv(65535)
                except TimeoutError:
                    break
                try:
                    _, pdu = decode(reply)
                except ValueError:
                    continue
                if int(v2c.apiPDU.get_request_id(pdu)) == request_id:
                    return
        raise AlertError(f"snmp: {where} did not acknowledge the inform (wrong community, or no "
                         f"notification receiver there?)",
                         hint="check host, port and the community file")
