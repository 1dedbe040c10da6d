"""Syslog: RFC 5424 messages over UDP (RFC 5426), TCP with octet-counting framing (RFC 6587), or a
local unix socket.

A message looks like::

    <131>1 2025-01-02T03:04:05.123456Z vault-1 safehold 4242 HAFailed [safehold@32473 event="HAFailed"
    subject="ro-1" server="vault-1" serverId="..." cluster="..." id="17"] HA status of ro-1 is Failed

(one line; ``arg="..."`` is repeated once per event argument).
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable
from pathlib import Path

from safehold.alerts.base import AlertError, network_error, raise_if_refused
from safehold.alerts.events import AlertEvent
from safehold.alerts.settings import SYSLOG_FACILITIES, SyslogSection

SD_ID = "safehold@32473"  # RFC 5612's documentation enterprise number
BOM = b"\xef\xbb\xbf"
MAX_UDP_MESSAGE = 8192  # bytes; longer messages are cut (RFC 5426 receivers take at least 2048)


def _header_field(value: str, limit: int) -> str:
    """A header field (HOSTNAME, APP-NAME, PROCID, MSGID): printable ASCII, no spaces, or '-'."""
    cleaned = "".join(c for c in value if 33 <= ord(c) <= 126)[:limit]
    return cleaned or "-"


def _param_value(value: str) -> str:
    """An SD-PARAM value: '"', '\\' and ']' escaped with a backslash (RFC 5424 6.3.3)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def structured_data(event: AlertEvent) -> str:
    params: list[tuple[str, str]] = [("event", event.kind), ("subject", event.subject),
                                     ("server", event.server_name), ("serverId", event.server_id)]
    if event.cluster_id:
        params.append(("cluster", event.cluster_id))
    if event.id is not None:
        params.append(("id", str(event.id)))
    params += [("arg", a) for a in event.args]
    return "[" + SD_ID + "".join(f' {k}="{_param_value(v)}"' for k, v in params if v) + "]"


def format_rfc5424(event: AlertEvent, *, facility: int, app_name: str, hostname: str,
                   procid: int | str) -> bytes:
    """One RFC 5424 message for ``event`` (without transport framing)."""
    pri = facility * 8 + int(event.severity)
    header = (f"<{pri}>1 {event.at_text()} {_header_field(hostname, 255)} {_header_field(app_name, 48)} "
              f"{_header_field(str(procid), 128)} {_header_field(event.kind, 32)}")
    body = event.message.encode("utf-8", "replace")
    if not body.isascii():
        body = BOM + body  # MSG-UTF8: RFC 5424 6.4
    return f"{header} {structured_data(event)} ".encode("utf-8", "replace") + body


def octet_counted(message: bytes) -> bytes:
    """RFC 6587 3.4.1 framing: ``MSG-LEN SP SYSLOG-MSG``."""
    return str(len(message)).encode() + b" " + message


class SyslogChannel:
    name = "syslog"

    def __init__(self, section: SyslogSection, resolve: Callable[[Path], Path] = lambda p: p,
                 *, hostname: str | None = None) -> None:
        self.section = section
        self.socket_path = resolve(section.socket)
        self.hostname = hostname or socket.gethostname()

    def target(self) -> str:
        s = self.section
        if s.transport == "unix":
            return f"unix:{self.socket_path}"
        return f"{s.transport}://{s.host}:{s.port}"

    def check(self) -> None:
        if self.section.transport == "unix" and not self.socket_path.exists():
            raise AlertError(f"syslog: the socket {self.socket_path} does not exist",
                             hint="is the syslog daemon running? set [alerts.syslog] socket", transient=True)

    def format(self, event: AlertEvent) -> bytes:
        return format_rfc5424(event, facility=SYSLOG_FACILITIES[self.section.facility],
                              app_name=self.section.app_name, hostname=self.hostname, procid=os.getpid())

    def send(self, event: AlertEvent) -> str:
        message = self.format(event)
        s = self.section
        where = self.target()
        try:
            if s.transport == "udp":
                self._udp(message[:MAX_UDP_MESSAGE])
            elif s.transport == "tcp":
                with socket.create_connection((s.host, s.port), timeout=s.timeout) as sock:
                    sock.sendall(octet_counted(message))
                    sock.shutdown(socket.SHUT_WR)
            else:
                self._unix(message)
        except AlertError:
            raise
        except OSError as exc:
            raise network_error("syslog", where, exc) from None
        return f"syslog message sent to {where}"

    def _udp(self, message: bytes) -> None:
        s = self.section
        family, kind, proto, _, addr = socket.getaddrinfo(s.host, s.port, type=socket.SOCK_DGRAM)[0]
        with socket.socket(family, kind, proto) as sock:
            sock.settimeout(s.timeout)
            sock.connect(addr)
            sock.send(message)
            raise_if_refused(sock)

    def _unix(self, message: bytes) -> None:
        path = str(self.socket_path)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.settimeout(self.section.timeout)
            try:
                sock.connect(path)
            except OSError as exc:
                if exc.errno != errno.EPROTOTYPE:
                    raise
            else:
                sock.send(message[:MAX_UDP_MESSAGE])
                return
        # a stream socket (some syslog daemons): octet-counting framing as over TCP
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(self.section.timeout)
            sock.connect(path)
            sock.sendall(octet_counted(message))

