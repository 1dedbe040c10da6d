"""The sign-in's cross-site checks, its pre-session token, the fingerprint of an unknown sign-in name, and
the request body limit (a plain ASGI middleware, driven here without a server)."""

from __future__ import annotations

import asyncio
import json

import pytest
from starlette.types import Message, Receive, Scope, Send

from safehold.services.auth import name_fingerprint
from safehold.web import crossorigin
from safehold.web.limits import BodyLimit

OWN = crossorigin.own_origins("https", "vault.example:8443", "https://safehold.example/")
KEY = bytes(range(32))
NOW = 1_700_000_000.0


@pytest.mark.parametrize(("headers", "refused"), [
    ({}, False),                                                            # curl, a script: not a browser
    ({"origin": "https://vault.example:8443"}, False),                      # our own page
    ({"origin": "HTTPS://Vault.Example:8443/"}, False),
    ({"origin": "https://safehold.example"}, False),                        # the configured public URL
    ({"sec-fetch-site": "same-origin", "origin": "https://vault.example:8443"}, False),
    ({"sec-fetch-site": "none"}, False),                                    # the user's own action
    ({"origin": "https://evil.example"}, True),
    ({"origin": "https://vault.example"}, True),                            # another port: another origin
    ({"origin": "http://vault.example:8443"}, True),                        # another scheme
    ({"origin": "null"}, True),                                             # a sandboxed or no-referrer page
    ({"sec-fetch-site": "cross-site"}, True),
    ({"sec-fetch-site": "same-site"}, True),                                # a sibling host
    ({"sec-fetch-site": "cross-site", "origin": "https://vault.example:8443"}, True),
])
def test_a_browser_request_for_another_site_is_refused(headers: dict[str, str], refused: bool) -> None:
    assert (crossorigin.foreign(headers, OWN) is not None) == refused


@pytest.mark.parametrize(("scheme", "host", "origin"), [
    ("https", "vault.example:443", "https://vault.example"),
    ("https", "Vault.Example:8443", "https://vault.example:8443"),
    ("http", "vault.example:80", "http://vault.example"),
    ("https", "[::1]:8443", "https://[::1]:8443"),
])
def test_origin_of(scheme: str, host: str, origin: str) -> None:
    assert crossorigin.origin_of(scheme, host) == origin


def test_the_pre_session_token() -> None:
    token = crossorigin.mint_token(KEY, NOW, nonce="n0nce")
    assert crossorigin.token_ok(KEY, token, token, NOW + 1)
    assert crossorigin.token_expiry(KEY, token) == int(NOW) + crossorigin.TOKEN_TTL
    other = crossorigin.mint_token(KEY, NOW)
    assert other != token and crossorigin.token_ok(KEY, other, other, NOW)
    version, expiry, nonce, mac = token.split(".")
    for cookie, field, at in [
        (token, "", NOW),                                       # the hidden field missing
        ("", token, NOW),                                       # the cookie missing
        (token, other, NOW),                                    # a field from another page
        (token, token, NOW + crossorigin.TOKEN_TTL),            # expired
        (crossorigin.mint_token(bytes(32), NOW),) * 2 + (NOW,),  # another cluster's key
        (f"{version}.{int(expiry) + 9999}.{nonce}.{mac}",) * 2 + (NOW,),  # a longer life, forged
        (f"{version}.{expiry}.{nonce}",) * 2 + (NOW,),           # unsigned
        ("v1.x.y.z",) * 2 + (NOW,),
        ("é" * 10,) * 2 + (NOW,),
    ]:
        assert not crossorigin.token_ok(KEY, cookie, field, at), (cookie, field, at)


def test_a_name_fingerprint_is_keyed_stable_and_reveals_nothing() -> None:
    typed = "Correct-Horse-Battery-9"
    fp = name_fingerprint(KEY, typed)
    assert fp == name_fingerprint(KEY, typed) and len(fp) == 16 and int(fp, 16) >= 0
    assert fp != name_fingerprint(KEY, typed.lower()) and fp != name_fingerprint(bytes(32), typed)
    assert typed.lower() not in fp.lower()


# --- the body limit --------------------------------------------------------------------------------------

LIMIT = 1000


class Route:
    """A route that reads the whole body (as every route of Safehold does) and says how much it got."""

    def __init__(self) -> None:
        self.called = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.called = True
        size = 0
        while True:
            message = await receive()
            size += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(size).encode()})


def run(path: str, chunks: list[bytes], length: int | None) -> tuple[int, bytes, int, bool]:
    """One request through the limit: (status, body, chunks the client was asked for, route called)."""
    route = Route()
    headers = [(b"content-length", str(length).encode())] if length is not None else []
    scope: Scope = {"type": "http", "method": "POST", "path": path, "headers": headers, "query_string": b""}
    asked = 0
    sent: list[Message] = []

    async def receive() -> Message:
        nonlocal asked
        asked += 1
        body = chunks[asked - 1] if asked <= len(chunks) else b""
        return {"type": "http.request", "body": body, "more_body": asked < len(chunks)}

    async def send(message: Message) -> None:
        sent.append(message)

    # the 413 of the limit itself is raised into the app's exception handlers; bare here: caught by the limit
    asyncio.run(BodyLimit(route, LIMIT, {"/api/v1/import": 4 * LIMIT})(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, body, asked, route.called


@pytest.mark.parametrize(("path", "chunks", "length", "status", "asked", "called"), [
    ("/api/v1/vault", [b"x" * LIMIT], LIMIT, 200, 1, True),                     # at the limit
    ("/api/v1/vault", [b"x" * 10], LIMIT + 1, 413, 0, False),                    # declared over: nothing read
    ("/api/v1/vault", [b"x" * 600, b"x" * 600, b"x" * 600], None, 413, 2, True),  # chunked: stops at the limit
    ("/api/v1/vault", [b"x" * 500, b"x" * 500], None, 200, 2, True),
    ("/api/v1/import", [b"x" * 4 * LIMIT], 4 * LIMIT, 200, 1, True),           # the import's larger limit
    ("/api/v1/import", [b""], 4 * LIMIT + 1, 413, 0, False),
    ("/api/v1/import", [b"x" * 3000, b"x" * 3000], None, 413, 2, True),
])
def test_the_body_limit(path: str, chunks: list[bytes], length: int | None, status: int, asked: int,
                        called: bool) -> None:
    got = run(path, chunks, length)
    assert got[0] == status and got[2] == asked and got[3] == called
    if status == 413:
        error = json.loads(got[1])["error"]
        limit = 4 * LIMIT if path.endswith("import") else LIMIT
        assert error["code"] == "payload_too_large" and f"{limit} bytes" in error["message"]
    else:
        assert got[1] == str(sum(map(len, chunks))).encode()
