"""Where HA events go (email, syslog, SNMP trap, webhook, event script): the cluster's alert settings.

They are stored in the database (:mod:`safehold.services.cluster_settings`), the same for every
server; an ``[alerts]`` section in safehold.toml is only imported once, at the first start of a
writable server whose database has none.  Secrets (the SMTP password, the webhook secret, the SNMP
community) are never part of a section: in safehold.toml each comes from a file named by
``*_file`` (a relative path is relative to the data directory, resolved with ``Settings.path``); in
the database they are sealed by the keyring, and held in memory by :class:`AlertConfig` beside the
section, never inside it (so no dump of a section can carry one).  The section models themselves
(:class:`AlertsSection` and one per channel) live in :mod:`safehold.alerts_config`, below the
configuration that holds them; this module re-exports them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from safehold.alerts_config import (
    CHANNELS,
    DEFAULT_ENTERPRISE_OID,
    STORED,
    SYSLOG_FACILITIES,
    AlertsSection,
    EmailSection,
    RetrySection,
    ScriptSection,
    SnmpSection,
    SyslogSection,
    WebhookSection,
)

__all__ = [
    "CHANNELS", "DEFAULT_ENTERPRISE_OID", "DESTINATIONS", "MAX_SECRET", "MODELS", "PATH_FIELDS", "SECRET_FIELDS",
    "STORED", "SYSLOG_FACILITIES", "WEBHOOK_URL", "AlertConfig", "AlertsSection", "EmailSection", "RetrySection",
    "ScriptSection", "SnmpSection", "SyslogSection", "WebhookSection", "destination_changed", "from_stored",
    "inline_secrets", "read_secret", "remove_channel", "secret_problems", "set_channel", "stored_section",
    "to_stored",
]

# --- the cluster's alert settings: a section and its secrets ------------------------------------------

#: The channels that have a secret: the ``*_file`` field that names it in safehold.toml, and what it is.
SECRET_FIELDS: dict[str, tuple[str, str]] = {"email": ("password_file", "SMTP password"),
                                             "snmp": ("community_file", "SNMP community"),
                                             "webhook": ("secret_file", "webhook secret")}
#: Where a channel sends its secret: changing one of these needs the secret given again, so that a saved
#: secret never goes to a destination chosen after it (a stolen session could otherwise redirect it).
#: The webhook secret is never sent (it signs), so its URL is free.
DESTINATIONS: dict[str, tuple[str, ...]] = {"email": ("host", "port", "security"), "snmp": ("host", "port")}
#: Fields that name files on each server's host: set from the host ('safehold alerts set'), never over HTTP.
PATH_FIELDS: dict[str, tuple[str, ...]] = {"email": ("password_file", "ca_file"), "syslog": ("socket",),
                                           "snmp": ("community_file",), "webhook": ("secret_file", "ca_file"),
                                           "script": ("path",)}
MAX_SECRET = 4096


@dataclass(frozen=True)
class AlertConfig:
    """The alert settings in force: the section (no secret in it) and the secrets by channel name
    (never shown: not in ``repr``)."""

    section: AlertsSection = field(default_factory=AlertsSection)
    secrets: Mapping[str, str] = field(default_factory=dict, repr=False)

    def secret(self, channel: str) -> str | None:
        return self.secrets.get(channel)


def stored_section(data: Mapping[str, Any]) -> AlertsSection:
    """A section as the database holds it (raises pydantic's ValidationError)."""
    return AlertsSection.model_validate(dict(data), context=STORED)


#: The key of the webhook URL among the sealed values: its path may hold a token, so it is sealed too.
WEBHOOK_URL = "webhook.url"


def to_stored(config: AlertConfig) -> tuple[dict[str, Any], dict[str, str]]:
    """A config as the database holds it: the JSON of the section (no secret file, no webhook URL) and
    the values to seal (the secrets by channel, and the webhook URL)."""
    data = config.section.model_dump(mode="json", exclude_none=True)
    sealed = dict(config.secrets)
    for channel, (file_field, _) in SECRET_FIELDS.items():
        if channel in data:
            data[channel].pop(file_field, None)
    if "webhook" in data:
        sealed[WEBHOOK_URL] = data["webhook"].pop("url")
    return data, sealed


def from_stored(data: Mapping[str, Any], sealed: Mapping[str, str]) -> AlertConfig:
    """The inverse of :func:`to_stored` (raises pydantic's ValidationError for a damaged value)."""
    plain: dict[str, Any] = {k: dict(v) if isinstance(v, Mapping) else v for k, v in data.items()}
    if isinstance(plain.get("webhook"), dict) and WEBHOOK_URL in sealed:
        plain["webhook"]["url"] = sealed[WEBHOOK_URL]
    return AlertConfig(stored_section(plain), {k: v for k, v in sealed.items() if k in SECRET_FIELDS})


def read_secret(path: Path, what: str) -> str:
    """A secret from its file (stripped); ValueError names the file, never its content."""
    try:
        value = path.read_text().strip()
    except FileNotFoundError:
        raise ValueError(f"the {what} file {path} is missing") from None
    except (OSError, UnicodeError) as exc:
        raise ValueError(f"cannot read the {what} file {path} ({type(exc).__name__})") from None
    if not value:
        raise ValueError(f"the {what} file {path} is empty")
    if len(value) > MAX_SECRET:
        raise ValueError(f"the {what} file {path} holds more than {MAX_SECRET} characters")
    return value


def inline_secrets(section: AlertsSection, resolve: Callable[[Path], Path],
                   keep: Mapping[str, str] | None = None) -> AlertConfig:
    """``section`` with each secret read from its file (``*_file``) into the config: what is stored
    (importing safehold.toml, 'safehold alerts set ... password_file=PATH').  A channel without a file
    keeps its secret from ``keep``.  Raises ValueError naming a file that cannot be read."""
    secrets = {k: v for k, v in (keep or {}).items() if getattr(section, k, None) is not None}
    updates: dict[str, BaseModel] = {}
    for channel, (file_field, what) in SECRET_FIELDS.items():
        sub = getattr(section, channel)
        path = getattr(sub, file_field, None) if sub is not None else None
        if sub is None or path is None:
            continue
        secrets[channel] = read_secret(resolve(path), what)
        updates[channel] = sub.model_copy(update={file_field: None})
    return AlertConfig(section.model_copy(update=updates), secrets)


def secret_problems(config: AlertConfig) -> list[tuple[str, str]]:
    """What a stored config lacks: (channel, message) for a channel whose secret is missing."""
    out = []
    s = config.section
    if s.email is not None and s.email.username is not None and not config.secret("email"):
        out.append(("email", "the SMTP password is missing: logging in needs one (or remove the username)"))
    if s.email is not None and s.email.username is None and config.secret("email"):
        out.append(("email", "a password without a username: give the username too (or no password)"))
    if s.snmp is not None and not config.secret("snmp"):
        out.append(("snmp", "the SNMP community is missing"))
    if s.webhook is not None and not config.secret("webhook"):
        out.append(("webhook", "the webhook secret is missing"))
    return out


def destination_changed(channel: str, old: BaseModel | None, new: BaseModel) -> bool:
    """Whether ``new`` sends the channel's secret somewhere ``old`` did not."""
    if old is None:
        return False
    return any(getattr(old, f) != getattr(new, f) for f in DESTINATIONS.get(channel, ()))


MODELS: dict[str, type[BaseModel]] = {"email": EmailSection, "syslog": SyslogSection, "snmp": SnmpSection,
                                      "webhook": WebhookSection, "script": ScriptSection, "retry": RetrySection}


def _invalid(message: str, field: str | None = None, hint: str | None = None) -> Exception:
    from safehold.errors import InvalidInput

    return InvalidInput(message, field=field, hint=hint)


def _first_error(exc: Any, channel: str) -> Exception:
    """A pydantic ValidationError as InvalidInput: the first problem, with its field (never the value)."""
    err = exc.errors()[0]
    name = ".".join(str(p) for p in err["loc"])
    msg = "unknown key" if err["type"] == "extra_forbidden" else str(err["msg"]).removeprefix("Value error, ")
    return _invalid(f"{channel}.{name}: {msg}" if name else f"{channel}: {msg}", field=name or None)


def set_channel(current: AlertConfig, channel: str, changes: Mapping[str, Any], *, secret: str | None = None,
                replace: bool = False) -> AlertConfig:
    """``current`` with one channel (or "retry") changed: ``changes`` set fields (None: back to the
    default), on top of the saved ones unless ``replace``; ``secret`` replaces the saved secret.  Raises
    InvalidInput (with the field) for a value the channel's model refuses, a secret for a channel that
    has none, or a saved secret that would go to a new destination (host, port) without being given
    again."""
    from pydantic import ValidationError

    if channel not in MODELS:
        raise _invalid(f"unknown alert channel {channel!r}", field="channel",
                       hint="one of " + ", ".join(MODELS))
    old = getattr(current.section, channel)
    data = {} if replace or old is None else old.model_dump(exclude_none=True)
    for k, v in changes.items():
        if v is None:
            data.pop(k, None)
        else:
            data[k] = v
    try:
        new = MODELS[channel].model_validate(data, context=STORED)
    except ValidationError as exc:
        raise _first_error(exc, channel) from None
    secrets = dict(current.secrets)
    if secret is not None:
        if channel not in SECRET_FIELDS:
            raise _invalid(f"the {channel} channel has no secret", field="secret")
        if not secret.strip() or len(secret) > MAX_SECRET or "\n" in secret.strip():
            raise _invalid(f"the {SECRET_FIELDS[channel][1]} must be one line of 1 to {MAX_SECRET} characters",
                           field="secret")
        secrets[channel] = secret.strip()
    elif channel in secrets and destination_changed(channel, old, new):
        raise _invalid(f"{channel}: the saved {SECRET_FIELDS[channel][1]} is never sent to a new destination: "
                       "give it again with the new host or port", field="secret")
    if channel == "retry":
        section = current.section.model_copy(update={"retry": new})
    else:
        section = current.section.model_copy(update={channel: new})
    return AlertConfig(section, secrets)


def remove_channel(current: AlertConfig, channel: str) -> AlertConfig:
    """``current`` without ``channel`` (and its secret)."""
    if channel not in CHANNELS:
        raise _invalid(f"unknown alert channel {channel!r}", field="channel", hint="one of " + ", ".join(CHANNELS))
    return AlertConfig(current.section.model_copy(update={channel: None}),
                       {k: v for k, v in current.secrets.items() if k != channel})
