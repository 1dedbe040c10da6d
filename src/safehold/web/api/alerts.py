"""/ha/alerts: the alert channels, their delivery status, and "send test alert"."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request

from safehold.alerts.dispatch import build_channels
from safehold.errors import InvalidInput, SafeholdError
from safehold.services import access
from safehold.services.alerting import test_channel
from safehold.web.api.common import AUTH_ERRORS, errors
from safehold.web.deps import CurrentUser, RuntimeDep
from safehold.web.errors import error_response
from safehold.web.schemas import In

router = APIRouter(prefix="/ha/alerts", tags=["high availability"])

FAILED = "alert_channel_failed"


class TestRequest(In):
    channel: Literal["email", "syslog", "snmp", "webhook", "script"]


@router.get("", responses=AUTH_ERRORS)
async def channels(request: Request, p: CurrentUser, rt: RuntimeDep) -> dict[str, Any]:
    """The configured alert channels, where each sends to, and how its deliveries went on this
    server (no secrets; administrators)."""
    access.require(p.is_admin, "only administrators can see the alert channels")
    dispatcher = getattr(request.app.state, "alerts", None)
    status: dict[str, dict[str, Any]] = dispatcher.status() if dispatcher is not None else {}
    return {"channels": [{"name": name, "target": status.get(name, {}).get("target") or ch.target(),
                          "status": status.get(name)}
                         for name, ch in build_channels(rt.settings).items()]}


@router.post("/test", responses={**errors(401, 403, 422, 503),
                                 502: {"description": f"The channel failed ({FAILED})"}})
async def test(body: TestRequest, p: CurrentUser, rt: RuntimeDep) -> Any:
    """Send one test alert on a channel now; 502 (``alert_channel_failed``) says why it failed."""
    access.require(p.is_admin, "only administrators can send test alerts")
    if body.channel not in rt.settings.alerts.configured():
        raise InvalidInput(f"the {body.channel} alert channel is not configured on this server",
                           field="channel", hint=f"add an [alerts.{body.channel}] section to safehold.toml")
    try:
        result = await test_channel(rt, p, rt.settings, body.channel)
    except SafeholdError as exc:
        return error_response(502, FAILED, exc.message, field="channel", hint=exc.hint)
    return {"channel": body.channel, "result": result}
