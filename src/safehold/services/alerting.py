"""Sending a test alert on behalf of an administrator: the result, and an audit record either way."""

from __future__ import annotations

import asyncio

from safehold.alerts.dispatch import send_test
from safehold.alerts.settings import AlertConfig
from safehold.audit.chain import AuditEvent
from safehold.config import Settings
from safehold.domain import AuditAction, AuditResult
from safehold.errors import SafeholdError
from safehold.runtime import Runtime
from safehold.services.access import Principal


async def test_channel(rt: Runtime, p: Principal, settings: Settings, channel: str,
                       config: AlertConfig | None = None) -> str:
    """Send one test alert on ``channel`` of ``config`` (default: as ``settings`` configure it); raises the
    channel's error.  The attempt is audited (its error message names no secret)."""
    try:
        result = await asyncio.to_thread(send_test, settings, channel, config)
    except SafeholdError as exc:
        await rt.record_audit(AuditEvent(actor=p.username, action=AuditAction.ALERT_TESTED,
                                         result=AuditResult.FAILURE, source_ip=p.source_ip,
                                         target_type="alert_channel", target_name=channel,
                                         detail={"error": exc.message[:300]}))
        raise
    await rt.record_audit(AuditEvent(actor=p.username, action=AuditAction.ALERT_TESTED, result=AuditResult.SUCCESS,
                                     source_ip=p.source_ip, target_type="alert_channel", target_name=channel))
    return result
