"""/health: is this server up, and can it reach its database?  (Kept as it is for existing clients.)"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from safehold import __version__
from safehold.web.api.health import allowed
from safehold.web.deps import RuntimeDep
from safehold.web.schemas import Health, ServerInfo

router = APIRouter(tags=["system"])


@router.get("/health", response_model=Health, responses={503: {"model": Health, "description": "degraded"}})
@router.head("/health", include_in_schema=False)
async def health(rt: RuntimeDep) -> JSONResponse:
    """No authentication needed; 200 when the database answers, 503 otherwise (HEAD: the same status, no
    body).  Which server takes writes, which serves reads: ``/health/<check>`` (``web/api/health.py``)."""
    database = "ok" if await rt.database_answers() else "unavailable"
    body = Health(status="ok" if database == "ok" else "degraded", version=__version__,
                  server=ServerInfo(id=rt.identity.id, name=rt.identity.name, role=rt.identity.role.value),
                  database=database)  # type: ignore[arg-type]
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if database == "ok" else 503)


@router.options("/health", include_in_schema=False)
async def health_options() -> Response:
    return allowed()
