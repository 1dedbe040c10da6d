"""The request body limit, enforced before the body is read.

1. A request that declares a ``Content-Length`` over its route's limit is answered at once (413,
   ``payload_too_large``) and its body is never read; the connection is closed after the answer.
2. A body sent without a length (chunked) is counted as it arrives; the chunk that passes the limit
   ends the request (413) before the route sees more of it.

The limit is ``http.max_body_bytes`` (1 MiB unless set); routes that take files (the CSV import) have
their own, larger one.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from safehold.web.errors import BodyTooLarge, payload_too_large


def declared_length(scope: Scope) -> int | None:
    """The request's Content-Length, or None when it has none (or one the server would not accept)."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


class BodyLimit:
    """A plain ASGI middleware: no body passes it beyond its route's limit."""

    def __init__(self, app: ASGIApp, default: int, routes: Mapping[str, int] | None = None) -> None:
        self.app, self.default, self.routes = app, default, dict(routes or {})

    def limit_for(self, path: str) -> int:
        return self.routes.get(path, self.default)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = declared_length(scope)
        if declared is not None and declared > limit:
            await (await payload_too_large(Request(scope), limit))(scope, receive, send)
            return
        received = 0
        started = False

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except BodyTooLarge:
            if started:  # a route that answered while still reading: nothing more can be said
                raise
            await (await payload_too_large(Request(scope), limit))(scope, receive, send)
