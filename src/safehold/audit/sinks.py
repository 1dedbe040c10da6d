"""Audit sinks: where audit records are pushed as they are stored (docs/AUDIT-STREAMING.md).

Each sink takes a batch of records, oldest first, and either takes all of it or raises :class:`SinkError`
(then the delivery tries the whole batch again later, from the sink's cursor: at least once, in order).

- ``syslog``: RFC 5424 messages over TLS (RFC 5425), octet-counting framing (``MSG-LEN SP SYSLOG-MSG``,
  RFC 5425 4.3 / RFC 6587 3.4.1); a connection per batch, closed cleanly once every message is written.
- ``file``: JSON lines appended to a file and fsynced before the batch counts as taken.
- ``webhook``: an HTTPS POST of a JSON batch; any 2xx answer takes it.

Every record carries its chain MAC, its server id and seq (a receiver that sees a record twice, after a
crash between a delivery and its cursor's update, drops it by ``(server_id, seq)``) and the record's fields.
Audit records hold no secret; :func:`safe_detail` still masks a detail value whose key names one.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import json
import os
import socket
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import httpx

from safehold.audit.chain import StoredRecord
from safehold.config import AuditSinkSection
from safehold.errors import SafeholdError

SD_ID = "safehold-audit@32473"  # RFC 5612's documentation enterprise number, as the alert channel's
BOM = b"\xef\xbb\xbf"
SIGNATURE_HEADER = "X-Safehold-Signature"
#: detail keys whose value is masked, should one ever hold a string (audit records are written without secrets)
SECRET_WORDS = ("password", "passphrase", "secret", "token", "totp", "private_key", "credential")
MASK = "[masked]"
SEVERITY_NOTICE, SEVERITY_WARNING = 5, 4

Record = dict[str, Any]


class SinkError(SafeholdError):
    """A sink could not take a batch; the message is a sentence without secrets (it is stored and shown)."""


class Sink(Protocol):
    name: str

    def target(self) -> str:
        """Where it delivers, without secrets (the status shows it)."""
        ...

    async def send(self, records: Sequence[Record]) -> None:
        """Take every record of the batch, or raise SinkError."""
        ...


# --- the record, as every sink writes it (pure) --------------------------------------------------------------


def safe_detail(detail: Mapping[str, Any]) -> dict[str, Any]:
    """The record's detail, with a string value masked where its key names a secret (none does today: the
    names of changed fields are lists, flags are booleans)."""
    return {k: MASK if isinstance(v, str) and any(w in k.lower() for w in SECRET_WORDS) else v
            for k, v in detail.items()}


def rfc3339(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def record_json(stored: StoredRecord, cluster_id: str) -> Record:
    """One record as a JSON object: the chain's fields (server, seq, MACs in hex) and the event's."""
    r, e = stored.record, stored.record.event
    return {
        "cluster_id": cluster_id, "id": stored.id, "server_id": r.server_id, "server_role": r.server_role,
        "seq": r.seq, "at": rfc3339(e.at), "actor": e.actor, "source_ip": e.source_ip, "action": e.action,
        "result": e.result, "target_type": e.target_type, "target_id": e.target_id,
        "target_name": e.target_name, "detail": safe_detail(e.detail), "prev_mac": r.prev_mac.hex(),
        "mac": r.mac.hex(),
    }


def json_line(record: Record) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


# --- syslog (pure parts) ---------------------------------------------------------------------------------------


def header_field(value: str, limit: int) -> str:
    """HOSTNAME, APP-NAME, PROCID or MSGID: printable ASCII without spaces, at most ``limit``; else '-'."""
    return "".join(c for c in value if 33 <= ord(c) <= 126)[:limit] or "-"


def param_value(value: str) -> str:
    """An SD-PARAM value: '"', '\\' and ']' escaped (RFC 5424 6.3.3)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def syslog_message(record: Record, *, facility: int, app_name: str, hostname: str) -> bytes:
    """One RFC 5424 message: the record's time, its action as MSGID, the chain position in structured data
    and the whole record as JSON in MSG (UTF-8, with the BOM RFC 5424 6.4 asks for)."""
    severity = SEVERITY_NOTICE if record["result"] == "success" else SEVERITY_WARNING
    params = (("server", record["server_id"]), ("seq", str(record["seq"])), ("mac", record["mac"]))
    sd = "[" + SD_ID + "".join(f' {k}="{param_value(v)}"' for k, v in params) + "]"
    header = (f"<{facility * 8 + severity}>1 {record['at']} {header_field(hostname, 255)} "
              f"{header_field(app_name, 48)} - {header_field(record['action'], 32)} {sd} ")
    return header.encode() + BOM + json_line(record).rstrip(b"\n")


def octet_counted(message: bytes) -> bytes:
    """RFC 5425 4.3 (RFC 6587 3.4.1) framing: ``MSG-LEN SP SYSLOG-MSG``."""
    return str(len(message)).encode() + b" " + message


def unframe(buffer: bytes) -> tuple[list[bytes], bytes]:
    """Split octet-counted frames off ``buffer``: the whole messages, and what is left (a frame's start).
    Raises ValueError on a malformed length (what a receiver does; the tests' receivers use it)."""
    out: list[bytes] = []
    while True:
        space = buffer.find(b" ")
        if space < 0:
            if len(buffer) > 10 or not buffer.isdigit() and buffer:
                raise ValueError("not an octet-counted frame")
            return out, buffer
        length = buffer[:space]
        if not length.isdigit() or length.startswith(b"0") or space > 10:
            raise ValueError("not an octet-counted frame")
        end = space + 1 + int(length)
        if len(buffer) < end:
            return out, buffer
        out.append(buffer[space + 1:end])
        buffer = buffer[end:]


# --- the sinks ------------------------------------------------------------------------------------------------


def tls_context(ca_file: Path | None, what: str) -> ssl.SSLContext:
    """Verify the receiver against the system CAs, or only against ``ca_file`` when configured."""
    try:
        return ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)
    except FileNotFoundError:
        raise SinkError(f"{what}: the CA file {ca_file} is missing") from None
    except (OSError, ssl.SSLError):
        raise SinkError(f"{what}: the CA file {ca_file} cannot be used (not a PEM certificate?)") from None


def network_error(what: str, where: str, exc: BaseException) -> SinkError:
    """A sentence for a failure to reach ``where`` (never an exception's class name)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return SinkError(f"{what}: the certificate of {where} is not trusted ({exc.verify_message})",
                         hint="set ca_file to the CA that issued the receiver's certificate")
    if isinstance(exc, ssl.SSLError):
        return SinkError(f"{what}: the TLS handshake with {where} failed", hint="does it speak TLS on that port?")
    if isinstance(exc, ConnectionRefusedError):
        return SinkError(f"{what}: {where} refused the connection (is the receiver running?)")
    if isinstance(exc, TimeoutError | socket.timeout | httpx.TimeoutException):
        return SinkError(f"{what}: {where} did not answer in time")
    if isinstance(exc, socket.gaierror):
        return SinkError(f"{what}: the host of {where} cannot be resolved")
    if isinstance(exc, OSError) and exc.strerror:
        return SinkError(f"{what}: cannot reach {where}: {exc.strerror}")
    return SinkError(f"{what}: the connection to {where} failed")


def os_cause(exc: BaseException) -> BaseException:
    """What says why a connection failed, below the wrappers of httpx, httpcore and anyio (which raises
    "All connection attempts failed" from the attempts' errors): the first OSError with an errno (a TLS
    error has one), else the first OSError, else ``exc``."""
    first: BaseException | None = None
    seen: BaseException | None = exc
    for _ in range(20):  # a chain is short; never loop on a cycle
        if seen is None:
            break
        if isinstance(seen, BaseExceptionGroup) and seen.exceptions:
            seen = seen.exceptions[0]
            continue
        if isinstance(seen, OSError):
            if seen.errno is not None:
                return seen
            first = first or seen
        seen = seen.__cause__ or seen.__context__
    return first or exc


class SyslogSink:
    def __init__(self, section: AuditSinkSection, *, hostname: str | None = None) -> None:
        from safehold.alerts_config import SYSLOG_FACILITIES

        self.name, self.section = section.name, section
        self.host, self.port, facility, self.app_name = section.syslog
        self.facility = SYSLOG_FACILITIES[facility]
        self.hostname = hostname or socket.gethostname()
        self.what = f"syslog sink '{self.name}'"

    def target(self) -> str:
        return f"syslog over TLS to {self.host}:{self.port}"

    def frames(self, records: Sequence[Record]) -> bytes:
        return b"".join(octet_counted(syslog_message(r, facility=self.facility, app_name=self.app_name,
                                                     hostname=self.hostname)) for r in records)

    async def send(self, records: Sequence[Record]) -> None:
        data = self.frames(records)
        context = tls_context(self.section.ca_file, self.what)
        where = f"{self.host}:{self.port}"
        try:
            async with asyncio.timeout(self.section.timeout):
                _, writer = await asyncio.open_connection(self.host, self.port, ssl=context,
                                                          server_hostname=self.host)
                try:
                    writer.write(data)
                    await writer.drain()
                finally:
                    writer.close()
                    await writer.wait_closed()
        except SinkError:
            raise
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            raise network_error(self.what, where, exc) from None


class FileSink:
    def __init__(self, section: AuditSinkSection, resolve: Callable[[Path], Path]) -> None:
        assert section.path is not None
        self.name, self.path = section.name, resolve(section.path)

    def target(self) -> str:
        return f"JSON lines appended to {self.path}"

    async def send(self, records: Sequence[Record]) -> None:
        data = b"".join(json_line(r) for r in records)
        try:
            await asyncio.to_thread(append_durably, self.path, data)
        except OSError as exc:
            raise SinkError(f"file sink '{self.name}': {self.path} cannot be written "
                            f"({exc.strerror or 'the system refused it'})") from None


def append_durably(path: Path, data: bytes) -> None:
    """Append ``data`` (mode 0600 for a new file, a link at the path is never followed) and fsync it; the
    directory too when the file is new, so that its name survives a power cut."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    new = not path.exists()
    fd = os.open(path, flags, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    if new:
        from safehold.files import sync_dir

        sync_dir(path.parent)


def sign(secret: bytes, body: bytes) -> str:
    """``sha256=`` and the hex HMAC-SHA256 of the body: the alert webhook's signature, for one receiver code."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


class WebhookSink:
    def __init__(self, section: AuditSinkSection, resolve: Callable[[Path], Path], cluster_id: str) -> None:
        assert section.url is not None
        self.name, self.section, self.cluster_id = section.name, section, cluster_id
        self.url = section.url
        url = httpx.URL(section.url)
        self.origin = f"{url.scheme}://{url.host}" + (f":{url.port}" if url.port else "")  # no path: a token?
        self.secret_file = resolve(section.secret_file) if section.secret_file else None
        self.ca_file = resolve(section.ca_file) if section.ca_file else None
        self.what = f"webhook sink '{self.name}'"

    def target(self) -> str:
        return f"HTTPS POST to {self.origin}/…"

    def body(self, records: Sequence[Record], sent_at: int) -> bytes:
        return json.dumps({"cluster_id": self.cluster_id, "sink": self.name, "sent_at": sent_at,
                           "records": list(records)}, separators=(",", ":"), ensure_ascii=False).encode()

    def _secret(self) -> bytes | None:
        if self.secret_file is None:
            return None
        try:
            secret = self.secret_file.read_bytes().strip()
        except OSError as exc:
            raise SinkError(f"{self.what}: the secret file {self.secret_file} cannot be read "
                            f"({exc.strerror or 'the system refused it'})") from None
        if not secret:
            raise SinkError(f"{self.what}: the secret file {self.secret_file} is empty")
        return secret

    async def send(self, records: Sequence[Record]) -> None:
        context = tls_context(self.ca_file, self.what)
        body = self.body(records, int(time.time()))
        headers = {"Content-Type": "application/json", "User-Agent": "Safehold-Audit"}
        secret = self._secret()
        if secret is not None:
            headers[SIGNATURE_HEADER] = sign(secret, body)
        try:
            async with httpx.AsyncClient(verify=context, timeout=self.section.timeout,
                                         follow_redirects=False) as client:
                answer = await client.post(self.url, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            raise network_error(self.what, self.origin, exc) from None
        except httpx.TransportError as exc:
            raise network_error(self.what, self.origin, os_cause(exc)) from None
        if not 200 <= answer.status_code < 300:
            raise SinkError(f"{self.what}: {self.origin} answered HTTP {answer.status_code}",
                            hint="the receiver refused the batch; it is sent again after the back-off")


def build_sink(section: AuditSinkSection, resolve: Callable[[Path], Path], cluster_id: str) -> Sink:
    """The sink a ``[[audit.sinks]]`` section describes (paths resolved against the data directory)."""
    if section.kind == "syslog":
        return SyslogSink(section.model_copy(update={"ca_file": resolve(section.ca_file)})
                          if section.ca_file else section)
    if section.kind == "file":
        return FileSink(section, resolve)
    return WebhookSink(section, resolve, cluster_id)
