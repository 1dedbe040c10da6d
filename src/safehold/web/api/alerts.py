"""/ha/alerts and /ha/failover: the cluster's alert channels (their settings, delivery status, "send test
alert") and its automatic failover policy, read on any server, changed on a writable one.

A secret (SMTP password, SNMP community, webhook secret) is write-only: it is never in a response, only
whether one is set; the webhook URL is not shown either (its path may hold a token).  Fields that name
files on a server's host (the event script, CA files, the syslog socket) are set from the host only
('safehold alerts set'): a stolen session must not choose what a server runs or reads.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import Field

from safehold.alerts.dispatch import build_channels
from safehold.alerts.settings import (
    PATH_FIELDS,
    SECRET_FIELDS,
    AlertConfig,
    remove_channel,
    set_channel,
)
from safehold.errors import InvalidInput, SafeholdError
from safehold.services import access
from safehold.services import cluster_settings as cs
from safehold.services.access import Principal
from safehold.services.alerting import test_channel
from safehold.web.api.common import AUTH_ERRORS, errors
from safehold.web.deps import CurrentUser, RuntimeDep
from safehold.web.errors import error_response
from safehold.web.schemas import In

router = APIRouter(prefix="/ha", tags=["high availability"])

FAILED = "alert_channel_failed"
ChannelName = Literal["email", "syslog", "snmp", "webhook", "script"]


class TestRequest(In):
    channel: ChannelName


class ChannelRequest(In):
    """A channel's fields (as in ``[alerts.<channel>]``, see docs/ALERTS.md; a field left out keeps its saved
    value unless ``replace``, null sets it back to its default), and its secret (write-only; left out: the
    saved one is kept)."""

    fields: dict[str, Any] = Field(default_factory=dict)
    secret: str | None = Field(default=None, max_length=4096)
    replace: bool = False


class FailoverRequest(In):
    """The settings to change; those left out keep their value."""

    enabled: bool | None = None
    ping_interval: float | None = None
    ping_iterations: int | None = None
    witness_targets: list[str] | None = Field(default=None, max_length=10)
    gateway: str | None = None
    clear_gateway: bool = False
    may_promote: bool | None = None
    max_lag_bytes: int | None = None


def _actor(p: Principal) -> cs.Actor:
    return cs.Actor(p.username, p.source_ip)


def channel_view(config: AlertConfig, name: str) -> dict[str, Any] | None:
    """A channel's saved settings as shown: no secret (only whether one is set), no webhook URL."""
    section = getattr(config.section, name)
    if section is None:
        return None
    data = section.model_dump(mode="json", exclude_none=True)
    data.pop("url", None)
    if name in SECRET_FIELDS:
        data.pop(SECRET_FIELDS[name][0], None)
        data["secret"] = "set" if config.secret(name) or getattr(section, SECRET_FIELDS[name][0]) else "not set"
    return data


async def _alerts_body(request: Request, rt: Any) -> dict[str, Any]:
    in_force = await cs.alerts_in_force(rt)
    config = in_force.value
    dispatcher = getattr(request.app.state, "alerts", None)
    status: dict[str, dict[str, Any]] = dispatcher.status() if dispatcher is not None else {}
    return {"channels": [{"name": name, "target": ch.target(), "settings": channel_view(config, name),
                          "status": status.get(name)}
                         for name, ch in build_channels(rt.settings, config).items()],
            "retry": config.section.retry.model_dump(), "source": in_force.source, "version": in_force.version,
            "updated_at": in_force.updated_at, "updated_by": in_force.updated_by}


@router.get("/alerts", responses=AUTH_ERRORS)
async def channels(request: Request, p: CurrentUser, rt: RuntimeDep) -> dict[str, Any]:
    """The cluster's alert channels, where each sends to, its settings (no secrets) and how its deliveries
    went on this server (administrators)."""
    access.require(p.is_admin, "only administrators can see the alert channels")
    return await _alerts_body(request, rt)


@router.put("/alerts/{channel}", responses={**errors(401, 403, 409, 422, 503)})
async def set_alert_channel(channel: Literal[ChannelName, "retry"], body: ChannelRequest, request: Request,
                            p: CurrentUser, rt: RuntimeDep) -> dict[str, Any]:
    """Add or change a channel (or the retry schedule, ``retry``) for every server of the cluster."""
    access.require(p.is_admin, "only administrators can change the alert channels")
    locked = sorted(set(body.fields) & set(PATH_FIELDS.get(channel, ())))
    if locked:
        raise InvalidInput(f"{channel}.{locked[0]} names a file on the server's host: set it there with "
                           f"'safehold alerts set {channel} {locked[0]}=...'", field=locked[0])
    await cs.change_alerts(rt, _actor(p), lambda c: set_channel(c, channel, body.fields, secret=body.secret,
                                                                 replace=body.replace))
    return await _alerts_body(request, rt)


@router.delete("/alerts/{channel}", responses={**errors(401, 403, 409, 422, 503)})
async def delete_alert_channel(channel: ChannelName, request: Request, p: CurrentUser,
                               rt: RuntimeDep) -> dict[str, Any]:
    """Remove a channel (and its secret) for every server of the cluster."""
    access.require(p.is_admin, "only administrators can change the alert channels")
    await cs.change_alerts(rt, _actor(p), lambda c: remove_channel(c, channel))
    return await _alerts_body(request, rt)


@router.post("/alerts/test", responses={**errors(401, 403, 422, 503),
                                        502: {"description": f"The channel failed ({FAILED})"}})
async def test(body: TestRequest, p: CurrentUser, rt: RuntimeDep) -> Any:
    """Send one test alert on a channel now, from this server; 502 (``alert_channel_failed``) says why it
    failed."""
    access.require(p.is_admin, "only administrators can send test alerts")
    config = await cs.effective_alerts(rt)
    if body.channel not in config.section.configured():
        raise InvalidInput(f"the {body.channel} alert channel is not configured", field="channel",
                           hint=f"configure it with PUT /ha/alerts/{body.channel} or 'safehold alerts set'")
    try:
        result = await test_channel(rt, p, rt.settings, body.channel, config)
    except SafeholdError as exc:
        return error_response(502, FAILED, exc.message, field="channel", hint=exc.hint)
    return {"channel": body.channel, "result": result}


async def _failover_body(rt: Any) -> dict[str, Any]:
    in_force = await cs.failover_in_force(rt)
    return {"policy": in_force.value.model_dump(mode="json"), "source": in_force.source,
            "version": in_force.version, "updated_at": in_force.updated_at, "updated_by": in_force.updated_by,
            "warnings": await cs.failover_warnings(rt, in_force.value)}


@router.get("/failover", responses=AUTH_ERRORS)
async def failover_policy(p: CurrentUser, rt: RuntimeDep) -> dict[str, Any]:
    """The cluster's automatic failover policy, which every read-only server follows (administrators)."""
    access.require(p.is_admin, "only administrators can see the failover policy")
    return await _failover_body(rt)


@router.patch("/failover", responses={**errors(401, 403, 409, 422, 503)})
async def change_failover_policy(body: FailoverRequest, p: CurrentUser, rt: RuntimeDep) -> dict[str, Any]:
    """Change the cluster's automatic failover policy (on a writable server); checked like 'safehold ha
    failover'."""
    access.require(p.is_admin, "only administrators can change the failover policy")
    changes = body.model_dump(exclude_none=True, exclude={"clear_gateway"})
    if body.clear_gateway:
        changes["gateway"] = None
    await cs.update_failover(rt, _actor(p), changes)
    return await _failover_body(rt)

