"""The ``[alerts]`` section of safehold.toml: where HA events go (email, syslog, SNMP trap, webhook,
event script), as a pure settings model.

It lives here, beside :mod:`safehold.config` and below everything else, because the configuration
holds it; :mod:`safehold.alerts.settings` (the cluster's alert settings stored in the database, and
how they change) builds on it and re-exports its names.  Secrets are never part of a section: in
safehold.toml each comes from a file named by ``*_file``; in the database it is sealed beside the
section (see :mod:`safehold.alerts.settings`).  This module imports nothing of Safehold.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

#: RFC 5612's documentation enterprise number: our default base for SNMP OIDs.
DEFAULT_ENTERPRISE_OID = "1.3.6.1.4.1.32473.1"
CHANNELS = ("email", "syslog", "snmp", "webhook", "script")

_OID = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")
# an address as it goes into a header: no whitespace, no CR/LF (header injection), one '@'
_EMAIL = re.compile(r"^[^@\s<>,;\"]+@[^@\s<>,;\"]+$")
# a host name or an IP address (IPv6 without brackets)
_HOST = re.compile(r"^[A-Za-z0-9_.:%-]{1,253}$")

SYSLOG_FACILITIES = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6, "news": 7,
    "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11,
    **{f"local{i}": 16 + i for i in range(8)},
}


#: The validation context of a section as stored in the database: its secret comes sealed beside it,
#: so the ``*_file`` field that names it in safehold.toml is not required.
STORED = {"stored": True}


def _stored(info: ValidationInfo) -> bool:
    return bool(info.context and info.context.get("stored"))


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _required_in_file(v: Path | None, info: ValidationInfo) -> Path | None:
    """A secret file: required in safehold.toml, absent in the database (the secret is stored sealed)."""
    if v is None and not _stored(info):
        raise PydanticCustomError("missing", "Field required")
    return v


def _host(v: str) -> str:
    if not _HOST.match(v):
        raise ValueError("must be a host name or an IP address")
    return v


Host = Annotated[str, AfterValidator(_host)]


class EmailSection(_Section):
    """SMTP: ``security`` is "starttls" (default, port 587), "tls" (implicit TLS, port 465) or
    "none" (plain SMTP, only without login).  Certificates are verified against the system CAs
    or ``ca_file``."""

    host: Host
    port: int = Field(default=587, ge=1, le=65535)
    security: Literal["starttls", "tls", "none"] = "starttls"
    username: str | None = Field(default=None, min_length=1, max_length=254)
    password_file: Path | None = None
    sender: str
    to: list[str] = Field(min_length=1, max_length=50)
    ca_file: Path | None = None
    subject_prefix: str = Field(default="[Safehold]", max_length=100)
    timeout: float = Field(default=10.0, gt=0, le=300)

    @field_validator("sender")
    @classmethod
    def _sender(cls, v: str) -> str:
        if not _EMAIL.match(v):
            raise ValueError("must be one email address (name@domain)")
        return v

    @field_validator("to")
    @classmethod
    def _to(cls, v: list[str]) -> list[str]:
        for addr in v:
            if not _EMAIL.match(addr):
                raise ValueError("each recipient must be one email address (name@domain)")
        return v

    @field_validator("subject_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if "\r" in v or "\n" in v:
            raise ValueError("must be one line")
        return v

    @model_validator(mode="after")
    def _auth(self, info: ValidationInfo) -> EmailSection:
        if not _stored(info) and (self.username is None) != (self.password_file is None):
            raise ValueError("username and password_file go together: set both (to log in) or neither")
        if self.username is not None and self.security == "none":
            raise ValueError("logging in needs security = \"starttls\" or \"tls\" (a password is never "
                             "sent in clear)")
        return self


class SyslogSection(_Section):
    """RFC 5424 messages over UDP (RFC 5426), TCP with octet-counting framing (RFC 6587), or a unix
    socket (``socket``, default /dev/log)."""

    transport: Literal["udp", "tcp", "unix"] = "udp"
    host: Host = "127.0.0.1"
    port: int = Field(default=514, ge=1, le=65535)
    socket: Path = Path("/dev/log")
    facility: str = "daemon"
    app_name: str = Field(default="safehold", min_length=1, max_length=48)
    timeout: float = Field(default=5.0, gt=0, le=300)

    @field_validator("facility")
    @classmethod
    def _facility(cls, v: str) -> str:
        if v not in SYSLOG_FACILITIES:
            raise ValueError("must be one of " + ", ".join(SYSLOG_FACILITIES))
        return v

    @field_validator("app_name")
    @classmethod
    def _app_name(cls, v: str) -> str:
        if not all(33 <= ord(c) <= 126 for c in v):
            raise ValueError("must be printable ASCII without spaces")
        return v


class SnmpSection(_Section):
    """SNMPv2c notifications: a trap (default) or an acknowledged inform (``inform = true``).  The
    community string comes from ``community_file``."""

    host: Host
    port: int = Field(default=162, ge=1, le=65535)
    community_file: Path | None = Field(default=None, validate_default=True)
    enterprise_oid: str = DEFAULT_ENTERPRISE_OID
    inform: bool = False
    timeout: float = Field(default=5.0, gt=0, le=300)
    retries: int = Field(default=2, ge=0, le=10)  # informs only: resends before giving up

    _community_file = field_validator("community_file")(_required_in_file)

    @field_validator("enterprise_oid")
    @classmethod
    def _oid(cls, v: str) -> str:
        if not _OID.match(v) or len(v.split(".")) > 100:
            raise ValueError("must be a numeric OID such as 1.3.6.1.4.1.32473.1")
        return v


class WebhookSection(_Section):
    """A JSON POST signed with HMAC-SHA256 (``X-Safehold-Signature``); HTTPS is verified against the
    system CAs or ``ca_file``."""

    url: str = Field(repr=False)  # the path may hold a token
    secret_file: Path | None = Field(default=None, validate_default=True)
    ca_file: Path | None = None
    timeout: float = Field(default=10.0, gt=0, le=300)

    _secret_file = field_validator("secret_file")(_required_in_file)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        import httpx

        try:
            url = httpx.URL(v)
        except Exception:  # noqa: BLE001 - httpx raises several types; the value is never echoed
            raise ValueError("must be an http:// or https:// URL") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("must be an http:// or https:// URL")
        if url.userinfo:
            raise ValueError("must not hold a user name or password (the request is signed instead)")
        return v


class ScriptSection(_Section):
    """The operator's event script: ``path EVENT ARGS...`` on every event, as the service user; it
    must be a regular executable file owned by that user and writable by nobody else."""

    path: Path
    timeout: float = Field(default=30.0, gt=0, le=3600)
    output_limit: int = Field(default=4096, ge=0, le=1024 * 1024)  # bytes of stdout/stderr logged


class RetrySection(_Section):
    """A failed delivery is tried again after initial_delay, then multiplier times longer each time
    (at most max_delay), ``attempts`` tries in all."""

    attempts: int = Field(default=5, ge=1, le=20)
    initial_delay: float = Field(default=1.0, ge=0, le=3600)
    multiplier: float = Field(default=2.0, ge=1, le=10)
    max_delay: float = Field(default=60.0, ge=0, le=3600)


class AlertsSection(_Section):
    """Where HA events go; a channel is configured by its sub-section (``[alerts.email]`` ...)."""

    email: EmailSection | None = None
    syslog: SyslogSection | None = None
    snmp: SnmpSection | None = None
    webhook: WebhookSection | None = None
    script: ScriptSection | None = None
    retry: RetrySection = RetrySection()
    queue_size: int = Field(default=1000, ge=1, le=100_000)  # per channel; beyond it events are dropped

    def configured(self) -> list[str]:
        """The names of the configured channels, in a fixed order."""
        return [name for name in CHANNELS if getattr(self, name) is not None]
