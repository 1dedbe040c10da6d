"""One JSON error shape for every failure: ``{"error": {"code", "message", "field"?, "hint"?}}``."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from safehold import errors as e

log = logging.getLogger(__name__)

STATUS = {
    e.NotFound: 404,
    e.PermissionDenied: 403,
    e.Conflict: 409,
    e.PreconditionFailed: 412,
    e.InvalidInput: 422,
    e.AuthenticationFailed: 401,
    e.TotpRequired: 401,
    e.AccountLocked: 423,
    e.ReauthenticationRequired: 401,
    e.AuditUnavailable: 503,
    e.Unavailable: 503,
    e.DatabaseError: 503,
}
CODES = {400: "bad_request", 401: "authentication_failed", 403: "forbidden", 404: "not_found",
         405: "method_not_allowed", 409: "conflict", 412: "precondition_failed", 413: "payload_too_large",
         415: "unsupported_media_type", 422: "invalid_input", 429: "too_many_requests", 503: "unavailable"}


def error_response(status: int, code: str, message: str, *, field: str | None = None,
                   hint: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    body: dict[str, object] = {"code": code, "message": message}
    if field:
        body["field"] = field
    if hint:
        body["hint"] = hint
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def size_text(n: int) -> str:
    """A byte count as people write it: 1 MiB, 64 KiB, 1500 bytes."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} bytes"


class BodyTooLarge(StarletteHTTPException):
    """A request body over its limit (raised while it is received, see ``web/limits.py``)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(413, f"the request body is larger than this server accepts here "
                              f"(at most {size_text(limit)}, {limit} bytes)")


async def payload_too_large(request: Request, limit: int) -> Response:
    """The answer to a body over its limit, in the shape of the page or API asked for; the connection is
    closed after it (the rest of the body is never read)."""
    exc = BodyTooLarge(limit)
    hint = "send less at once: split the file or the list into several requests"
    if request.url.path.startswith("/ui/"):
        from safehold.web.ui.core import error_page

        response = await error_page(request, 413, e.SafeholdError(exc.detail, hint=hint))
    else:
        response = error_response(413, CODES[413], exc.detail, hint=hint)
    response.headers["Connection"] = "close"
    return response


def internal_error(request: Request, exc: Exception) -> JSONResponse:
    """A bug: logged with its traceback for the operator, a plain 500 for the client."""
    log.error("unexpected %s on %s %s", type(exc).__name__, request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal_error", "an unexpected error occurred; see the server log")


def install(app: FastAPI) -> None:
    @app.exception_handler(e.SafeholdError)
    async def _safehold(request: Request, exc: e.SafeholdError) -> Response:
        status = next((s for cls, s in STATUS.items() if isinstance(exc, cls)), 500)
        if request.url.path.startswith("/ui/"):
            from safehold.web.ui.core import error_page

            return await error_page(request, status, exc)
        code = getattr(exc, "code", "error") if isinstance(exc, e.ServiceError) else CODES.get(status, "error")
        if status >= 500:
            log.warning("%s %s -> %d: %s", request.method, request.url.path, status, exc.message)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return error_response(status, code, exc.message, field=getattr(exc, "field", None), hint=exc.hint,
                              headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        first: dict[str, Any] = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        if first.get("type") == "json_invalid":  # its loc is a character offset, not a field
            reason = (first.get("ctx") or {}).get("error", "")  # json's own words: positions, no input
            return error_response(422, "invalid_input", f"the request body is not valid JSON ({reason})"
                                  if reason else "the request body is not valid JSON")
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "header")]
        field = ".".join(loc) or None
        msg = str(first.get("msg", "invalid request"))
        # Never echo the rejected input: it may be a password.
        return error_response(422, "invalid_input", f"{field}: {msg}" if field else msg, field=field)

    @app.exception_handler(BodyTooLarge)
    async def _too_large(request: Request, exc: BodyTooLarge) -> Response:
        return await payload_too_large(request, exc.limit)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:
            # The framework's only 400: a body it cannot parse at all (not UTF-8, nested too deep).
            # That is invalid input like any other, with the one status the API documents for it.
            return error_response(422, "invalid_input", "the request body cannot be parsed: "
                                  "send UTF-8 JSON of the documented shape")
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        return error_response(exc.status_code, CODES.get(exc.status_code, "error"), message,
                              headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return internal_error(request, exc)
