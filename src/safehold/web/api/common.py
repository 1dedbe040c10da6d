"""Shared bits of the API routers."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Query

from safehold.web.schemas import ErrorBody

Limit = Annotated[int, Query(ge=1, le=500, description="page size")]
Offset = Annotated[int, Query(ge=0, le=10_000_000, description="items to skip")]


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI descriptions of the error responses a route may give."""
    text = {401: "Not authenticated", 403: "Forbidden", 404: "Not found", 409: "Conflict",
            412: "Precondition failed (If-Match)", 422: "Invalid input", 423: "Account locked",
            503: "Unavailable (database or audit)"}
    schema = {"$ref": "#/components/schemas/ErrorBody"}
    return {c: {"model": ErrorBody, "description": text.get(c, "Error"),
                "content": {"application/json": {"schema": schema}}} for c in codes}


AUTH_ERRORS = errors(401, 403, 422, 503)
