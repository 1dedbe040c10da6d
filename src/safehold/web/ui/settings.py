"""The settings page (administrators): the cluster's automatic failover policy and alert channels, stored
in its database (every server follows them within a few seconds), and "Send test alert".

The failover policy is checked by the same rules as 'safehold ha failover' (:func:`safehold.services.
cluster_settings.check_failover`); a channel by its pydantic model, each message next to its field.  A
channel's secret is write-only (only whether one is set is shown; an empty input keeps it), and a saved
secret is never sent to a new destination unless it is typed again.  What names files on a server's host
(the event script, CA files, the syslog socket) is shown, never changed here: it is set on the host
('safehold alerts set'), so that a stolen administrator session cannot choose what a server runs or
reads.  A read-only server shows the settings and changes nothing.

The failover policy is edited on a primary or secondary but carried out by the read-only servers: there the
page says so and warns only about what holds for the whole cluster; what a host lacks (the 'ping' program, a
default gateway) is warned about on the read-only server itself, the host it matters on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticUndefined

from safehold.alerts.dispatch import build_channels
from safehold.alerts.settings import (
    CHANNELS,
    SECRET_FIELDS,
    STORED,
    SYSLOG_FACILITIES,
    AlertConfig,
    EmailSection,
    ScriptSection,
    SnmpSection,
    SyslogSection,
    WebhookSection,
    remove_channel,
    set_channel,
)
from safehold.config import FailoverSection
from safehold.domain import ServerRole
from safehold.errors import InvalidInput, NotFound, PermissionDenied, SafeholdError
from safehold.ha.failover import MAX_WITNESSES
from safehold.ha.readiness import read_database
from safehold.runtime import Runtime
from safehold.services import access, alerting
from safehold.services import cluster_settings as cs
from safehold.services.access import Principal
from safehold.web.ui.core import Form, UiUser, check_csrf, render, runtime, see_other

router = APIRouter()

WITNESS_INPUTS = tuple(f"witness_{i + 1}" for i in range(MAX_WITNESSES))
CHANNEL_TITLES = {"email": "Email", "syslog": "Syslog", "snmp": "SNMP trap", "webhook": "Webhook",
                  "script": "Event script"}
MODELS: dict[str, type[BaseModel]] = {"email": EmailSection, "syslog": SyslogSection, "snmp": SnmpSection,
                                      "webhook": WebhookSection, "script": ScriptSection}
SECRET_LABELS = {"email": "SMTP password", "snmp": "Community", "webhook": "Signing secret"}


@dataclass(frozen=True)
class Spec:
    """One field of a channel's form. ``kind``: text, int, float, select, bool, list (comma-separated),
    path (shown, never changed here), keep (write-only: empty keeps the saved value, which is not shown)."""

    name: str
    label: str
    kind: str = "text"
    options: tuple[str, ...] = ()
    hint: str = ""


SPECS: dict[str, tuple[Spec, ...]] = {
    "email": (
        Spec("host", "SMTP server"),
        Spec("port", "Port", "int"),
        Spec("security", "Security", "select", ("starttls", "tls", "none")),
        Spec("username", "Username", hint="empty: no login"),
        Spec("sender", "Sender"),
        Spec("to", "Recipients", "list", hint="email addresses, separated by commas"),
        Spec("ca_file", "CA file", "path"),
        Spec("subject_prefix", "Subject prefix"),
        Spec("timeout", "Timeout (seconds)", "float"),
    ),
    "syslog": (
        Spec("transport", "Transport", "select", ("udp", "tcp", "unix")),
        Spec("host", "Host"),
        Spec("port", "Port", "int"),
        Spec("socket", "Socket (unix transport)", "path"),
        Spec("facility", "Facility", "select", tuple(SYSLOG_FACILITIES)),
        Spec("app_name", "Application name"),
        Spec("timeout", "Timeout (seconds)", "float"),
    ),
    "snmp": (
        Spec("host", "Receiver"),
        Spec("port", "Port", "int"),
        Spec("enterprise_oid", "Enterprise OID"),
        Spec("inform", "Send informs (acknowledged) instead of traps", "bool"),
        Spec("timeout", "Timeout (seconds)", "float"),
        Spec("retries", "Retries (informs)", "int"),
    ),
    "webhook": (
        Spec("url", "URL", "keep", hint="the saved URL is not shown (its path may hold a token): leave empty to "
                                        "keep it"),
        Spec("ca_file", "CA file", "path"),
        Spec("timeout", "Timeout (seconds)", "float"),
    ),
    "script": (
        Spec("path", "Script", "path"),
        Spec("timeout", "Timeout (seconds)", "float"),
        Spec("output_limit", "Output logged (bytes)", "int"),
    ),
}


def _require(p: Principal) -> None:
    access.require(p.is_admin, "only administrators can see and change the settings")


def _require_writable(request: Request) -> None:
    if runtime(request).readonly:
        raise PermissionDenied("this server is read-only: the settings are the cluster's; change them on the "
                               "primary (or a secondary), and this server follows them")


def _channel(name: str) -> str:
    if name not in CHANNELS:
        raise NotFound(f"there is no {name!r} alert channel")
    return name


async def _checked_form(request: Request, p: Principal, channel: str | None = None, *, writes: bool = True) -> Any:
    """The submitted form, once these are checked, in this order: its CSRF token, the user's role, the
    alert channel's name (``channel``) and, for a form that changes the settings (``writes``), that this
    server may change them."""
    form = await request.form()
    check_csrf(p, form)
    _require(p)
    if channel is not None:
        _channel(channel)
    if writes:
        _require_writable(request)
    return form


def _actor(p: Principal) -> cs.Actor:
    return cs.Actor(p.username, p.source_ip)


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)


# --- the failover policy ---------------------------------------------------------------------------


def failover_values(section: FailoverSection) -> dict[str, str]:
    values = {"enabled": "1" if section.enabled else "", "ping_interval": _num(section.ping_interval),
              "ping_iterations": str(section.ping_iterations), "gateway": section.gateway or "",
              "may_promote": "1" if section.may_promote else ""}
    for i, name in enumerate(WITNESS_INPUTS):
        values[name] = section.witness_targets[i] if i < len(section.witness_targets) else ""
    return values


def parse_failover(form: Any, current: FailoverSection) -> tuple[dict[str, str], dict[str, Any], dict[str, str],
                                                                  list[str]]:
    """What was typed, the changes it makes, the messages for values that are not numbers, and which
    input each witness target came from."""
    values = {k: str(form.get(k, "")).strip() for k in ("ping_interval", "ping_iterations", "gateway",
                                                          *WITNESS_INPUTS)}
    values["enabled"] = "1" if form.get("enabled") else ""
    values["may_promote"] = "1" if form.get("may_promote") else ""
    errors: dict[str, str] = {}
    changes: dict[str, Any] = {"enabled": bool(values["enabled"]), "may_promote": bool(values["may_promote"])}
    try:
        changes["ping_interval"] = float(values["ping_interval"])
    except ValueError:
        errors["ping_interval"] = "enter a number of seconds"
    try:
        changes["ping_iterations"] = int(values["ping_iterations"])
    except ValueError:
        errors["ping_iterations"] = "enter a whole number"
    given = [(name, values[name]) for name in WITNESS_INPUTS if values[name]]
    changes["witness_targets"] = [text for _, text in given]
    gateway = values["gateway"]
    changes["gateway"] = None if gateway.lower() in ("", "default") else gateway
    return values, changes, errors, [name for name, _ in given]


def cluster_warnings(section: FailoverSection, readers: list[str]) -> list[str]:
    """What an operator editing the policy on a primary or secondary should know: only what holds for the
    whole cluster.  What a read-only server's own host lacks (the 'ping' program, a default gateway) is
    checked on that host, where the policy runs; this server's host says nothing about it."""
    if not section.enabled:
        return []
    out = []
    if not readers:
        out.append("no read-only server is registered in this cluster: nothing watches the primary yet (the "
                   "policy applies to every read-only server)")
    if not section.witness_targets and section.gateway is None:
        out.append("no witness target and no gateway are configured: each read-only server can tell its own "
                   "network failure from the primary's only by its default route's gateway, and one without a "
                   "default gateway would promote itself even when it is the one cut off")
    return out


async def _failover_context(rt: Runtime, policy: FailoverSection) -> dict[str, Any]:
    """The policy's warnings and who carries it out: a read-only server runs it itself, so its own host's
    checks ('ping', the gateway) apply; on a primary or secondary (where it is edited) only the cluster's."""
    if rt.identity.role == ServerRole.READONLY:
        return {"fo_runs_here": True, "fo_warnings": await cs.failover_warnings(rt, policy), "fo_readers": []}
    registry = await read_database(rt.settings, rt.engine)
    readers = sorted((s.name for s in registry.servers if s.role == ServerRole.READONLY), key=str.lower)
    return {"fo_runs_here": False, "fo_warnings": cluster_warnings(policy, readers), "fo_readers": readers}


def _failover_field(name: str, inputs: list[str]) -> str:
    if name.startswith("witness_targets."):
        i = int(name.rsplit(".", 1)[1])
        return inputs[i] if i < len(inputs) else WITNESS_INPUTS[0]
    return WITNESS_INPUTS[0] if name == "witness_targets" else name


# --- the alert channels ----------------------------------------------------------------------------


def _secret_state(config: AlertConfig, channel: str) -> str | None:
    """Whether the channel's secret is set: never what it holds."""
    if channel not in SECRET_FIELDS:
        return None
    section = getattr(config.section, channel)
    if section is None:
        return "not set"
    return "set" if config.secret(channel) or getattr(section, SECRET_FIELDS[channel][0], None) else "not set"


def _locked(channel: str, spec: Spec, section: BaseModel | None) -> bool:
    return spec.kind == "path"


def _creatable(channel: str) -> bool:
    """A channel can be added here when none of its required fields is locked."""
    model = MODELS[channel]
    return not any(model.model_fields[s.name].is_required() and _locked(channel, s, None) for s in SPECS[channel])


def _shown(spec: Spec, section: BaseModel | None, channel: str = "") -> str:
    """The value of a field as the form shows it (a channel not configured: the model's default)."""
    if spec.kind == "keep":
        return ""
    if section is None:
        default = MODELS[channel].model_fields[spec.name].default if channel else None
        v = None if default is PydanticUndefined else default
    else:
        v = getattr(section, spec.name)
    if v is None:
        return ""
    if spec.kind == "list":
        return ", ".join(v)
    if spec.kind == "bool":
        return "1" if v else ""
    if spec.kind == "float":
        return _num(v)
    return str(v)


def channel_values(channel: str, section: BaseModel | None) -> dict[str, str]:
    return {s.name: _shown(s, section, channel) for s in SPECS[channel]}


def parse_channel(channel: str, form: Any, section: BaseModel | None) -> tuple[dict[str, str], dict[str, Any]]:
    """What was typed (locked fields: the saved value) and the data for the channel's model."""
    values: dict[str, str] = {}
    data: dict[str, Any] = {}
    for spec in SPECS[channel]:
        if _locked(channel, spec, section):
            values[spec.name] = _shown(spec, section)
            saved = getattr(section, spec.name) if section is not None else None
            if saved is not None:
                data[spec.name] = saved
            continue
        if spec.kind == "bool":
            values[spec.name] = "1" if form.get(spec.name) else ""
            data[spec.name] = bool(values[spec.name])
            continue
        text = str(form.get(spec.name, "")).strip()
        values[spec.name] = text
        if spec.kind == "keep" and not text:
            saved = getattr(section, spec.name) if section is not None else None
            if saved is not None:
                data[spec.name] = saved
        elif spec.kind == "list":
            items = [t.strip() for t in text.replace("\n", ",").split(",") if t.strip()]
            data[spec.name] = items
        elif text:
            data[spec.name] = text
    return values, data


def pydantic_errors(exc: ValidationError, fields: set[str]) -> tuple[dict[str, str], str]:
    """A message per field (the first one), and the rest (about the whole channel)."""
    friendly = {"int_parsing": "enter a whole number", "float_parsing": "enter a number",
                "missing": "required", "too_short": "enter at least one"}
    errors: dict[str, str] = {}
    general = []
    for err in exc.errors():
        msg = friendly.get(err["type"]) or str(err["msg"]).removeprefix("Value error, ")
        name = str(err["loc"][0]) if err["loc"] else ""
        if name in fields:
            errors.setdefault(name, msg)
        else:
            general.append(f"{name}: {msg}" if name else msg)
    return errors, "; ".join(general)


# --- the page ------------------------------------------------------------------------------------------


async def _page(request: Request, p: Principal, *, status: int = 200, failover: Form | None = None,
                forms: dict[str, Form] | None = None, results: dict[str, tuple[bool, str]] | None = None) -> Response:
    rt = runtime(request)
    fo_in_force = await cs.failover_in_force(rt)
    alerts_in_force = await cs.alerts_in_force(rt)
    fo = fo_in_force.value
    config = alerts_in_force.value
    failover_context = await _failover_context(rt, fo)
    dispatcher = getattr(request.app.state, "alerts", None)
    delivery: dict[str, dict[str, Any]] = dispatcher.status() if dispatcher is not None else {}
    saved_channels = build_channels(rt.settings, config)
    channels = []
    for name in CHANNELS:
        section = getattr(config.section, name)
        ch = saved_channels.get(name)
        channels.append({
            "name": name, "title": CHANNEL_TITLES[name], "configured": section is not None,
            "creatable": _creatable(name), "target": ch.target() if ch is not None else "",
            "secret": _secret_state(config, name), "secret_label": SECRET_LABELS.get(name),
            "specs": [(s, _locked(name, s, section)) for s in SPECS[name]],
            "form": (forms or {}).get(name) or Form(values=channel_values(name, section)),
            "result": (results or {}).get(name), "delivery": delivery.get(name),
        })
    return render(request, "settings.html", p, status=status,
                  fo_form=failover or Form(values=failover_values(fo)), **failover_context,
                  fo_source=fo_in_force.describe(), alerts_source=alerts_in_force.describe(),
                  witness_inputs=WITNESS_INPUTS, channels=channels, saved=request.query_params.get("saved", ""))


@router.get("/settings", response_class=HTMLResponse)
async def settings_page(request: Request, p: UiUser) -> Response:
    _require(p)
    return await _page(request, p)


@router.post("/settings/failover", response_class=HTMLResponse)
async def save_failover(request: Request, p: UiUser) -> Response:
    form = await _checked_form(request, p)
    rt = runtime(request)
    current = await cs.failover_in_force(rt)
    values, changes, errors, inputs = parse_failover(form, current.value)
    if not errors:
        _, policy, problems = await cs.check_failover(rt, changes)
        for name, message in problems:
            errors.setdefault(_failover_field(name, inputs), message)
        if policy is not None and not errors:
            try:
                await cs.update_failover(rt, _actor(p), changes)
            except InvalidInput as exc:
                errors[_failover_field(exc.field or "enabled", inputs)] = exc.message
    if errors:
        return await _page(request, p, status=422, failover=Form(values=values, errors=errors))
    return see_other("/ui/settings?saved=failover#failover")


def _channel_saved(channel: str) -> Response:
    return see_other(f"/ui/settings?saved={channel}#alerts-{channel}")


@router.post("/settings/alerts/{channel}", response_class=HTMLResponse)
async def save_channel(request: Request, channel: str, p: UiUser) -> Response:
    form = await _checked_form(request, p, channel)
    rt = runtime(request)
    config = await cs.effective_alerts(rt)
    section = getattr(config.section, channel)
    if section is None and not _creatable(channel):
        raise PermissionDenied(f"the {channel} channel needs a file on the host: add it there with "
                               f"'safehold alerts set {channel} ...'")
    values, data = parse_channel(channel, form, section)
    secret = str(form.get("secret", "")).strip() or None
    try:
        MODELS[channel].model_validate(data, context=STORED)  # every message at once, next to its field
    except ValidationError as exc:
        errors, general = pydantic_errors(exc, {s.name for s in SPECS[channel]})
        return await _page(request, p, status=422, forms={channel: Form(values=values, errors=errors,
                                                                        message=general)})
    try:
        await cs.change_alerts(rt, _actor(p), lambda c: set_channel(c, channel, data, secret=secret, replace=True))
    except InvalidInput as exc:
        field = exc.field if exc.field in values else "secret"
        return await _page(request, p, status=422, forms={channel: Form(values=values, errors={field: exc.message})})
    return _channel_saved(channel)


@router.post("/settings/alerts/{channel}/remove", response_class=HTMLResponse)
async def remove(request: Request, channel: str, p: UiUser) -> Response:
    await _checked_form(request, p, channel)
    await cs.change_alerts(runtime(request), _actor(p), lambda c: remove_channel(c, channel))
    return _channel_saved(channel)


@router.post("/settings/alerts/{channel}/test", response_class=HTMLResponse)
async def test_channel(request: Request, channel: str, p: UiUser) -> Response:
    """Send one test alert from this server with the channel as saved: the result, or why it failed, next to
    the channel. It changes nothing, so a read-only server may send one too."""
    await _checked_form(request, p, channel, writes=False)
    rt = runtime(request)
    try:
        config = await cs.effective_alerts(rt)
        result = await alerting.test_channel(rt, p, rt.settings, channel, config)
    except SafeholdError as exc:
        text = exc.message + (f" ({exc.hint})" if exc.hint else "")
        return await _page(request, p, status=502, results={channel: (False, text)})
    return await _page(request, p, results={channel: (True, result)})
