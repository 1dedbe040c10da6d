"""The web interface: server-rendered pages under ``/ui`` (see core for what they share)."""

from __future__ import annotations

from fastapi import APIRouter

from safehold.web.ui import audit, ha, settings, signin, users, vault

router = APIRouter(prefix="/ui", include_in_schema=False)
router.include_router(signin.router)
router.include_router(vault.router)
router.include_router(users.router)
router.include_router(audit.router)
router.include_router(ha.router)
router.include_router(settings.router)
