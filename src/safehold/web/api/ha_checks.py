"""/ha/checks: the readiness checks of this server, for the dashboard."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from safehold.ha.readiness import run_checks
from safehold.services import access
from safehold.web.api.common import AUTH_ERRORS
from safehold.web.api.ha import HaUser
from safehold.web.deps import RuntimeDep

router = APIRouter(prefix="/ha", tags=["high availability"])


@router.get("/checks", responses=AUTH_ERRORS)
async def checks(p: HaUser, rt: RuntimeDep) -> dict[str, Any]:
    """Could this server take over right now: key file, audit spool, disk space, replication lag,
    generation, peers — each with a pass/fail and one sentence (administrators)."""
    access.require(p.is_admin, "only administrators can run the readiness checks")
    results = await run_checks(rt.settings, engine=rt.engine)
    return {"ok": all(c.ok for c in results),
            "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in results]}
