"""The web interface: server-rendered pages under ``/ui`` (see core for what they share).  The router's
lifespan (merged into the app's when it is included, and entered after it) runs the emergency-mode watcher
(see emergency)."""

from __future__ import annotations

from fastapi import APIRouter

from safehold.web.ui import audit, emergency, ha, settings, signin, users, vault

router = APIRouter(prefix="/ui", include_in_schema=False, lifespan=emergency.watch)
router.include_router(signin.router)
router.include_router(vault.router)
router.include_router(users.router)
router.include_router(audit.router)
router.include_router(ha.router)
router.include_router(settings.router)
