"""Refusing what a browser sends on behalf of another site, for the sign-in (login CSRF).

A forged sign-in signs the victim in to the attacker's account: what the victim stores next goes to the
attacker.  The sign-in has no session yet whose CSRF token could protect it, so it has two checks of
its own:

1. The browser's word.  ``Sec-Fetch-Site`` (sent by every current browser, unforgeable by a page) must
   be ``same-origin`` (or ``none``: the user's own action); when the browser sends ``Origin``, it must
   be this server's own origin (``null``, what a sandboxed or no-referrer page sends, is not).  A client
   that sends neither (curl, scripts) is not a browser acting for a site: it passes this check.
2. A pre-session token (the sign-in form only): the sign-in page sets a signed, short-lived token in an
   HttpOnly, SameSite=Strict cookie and puts the same token in a hidden field; the form is accepted only
   when both arrive and are equal (compared in constant time), the signature holds and it has not
   expired.  Another site can neither read the page nor set the cookie.

The JSON API's sign-in needs no token (scripts use it, and a browser cannot send JSON to another site
without CORS, which Safehold does not allow), but gets check 1.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Collection, Mapping
from urllib.parse import urlsplit

from starlette.requests import Request

#: what ``Sec-Fetch-Site`` may say of a request that changes who is signed in
SAME_SITE_FETCH = frozenset({"same-origin", "none"})
TOKEN_TTL = 30 * 60  # seconds a sign-in page's token is accepted
_VERSION = "v1"


def origin_of(scheme: str, host: str) -> str:
    """The origin (``https://host[:port]``) of a URL's scheme and host part, as browsers write it."""
    scheme, host = scheme.lower(), host.strip().lower()
    default = ":443" if scheme == "https" else ":80"
    if host.endswith(default):
        host = host[: -len(default)]
    return f"{scheme}://{host}"


def own_origins(scheme: str, host: str | None, public_url: str | None) -> set[str]:
    """This server's origins: the one the browser asked for (its Host), and the configured public URL's."""
    origins = {origin_of(scheme, host)} if host else set()
    if public_url:
        url = urlsplit(public_url)
        origins.add(origin_of(url.scheme, url.netloc))
    return origins


def refusal(request: Request, public_url: str | None) -> str | None:
    """:func:`foreign` for a request to this server."""
    return foreign(request.headers, own_origins(request.url.scheme, request.headers.get("host"), public_url))


def foreign(headers: Mapping[str, str], own_origins: Collection[str]) -> str | None:
    """Why a browser sent this request for another site (a sentence), or None when nothing says so.
    ``headers`` with lower-case names; ``own_origins`` as :func:`origin_of` writes them."""
    site = headers.get("sec-fetch-site")
    if site is not None and site.strip().lower() not in SAME_SITE_FETCH:
        return f"the browser says it came from another site (Sec-Fetch-Site: {site.strip().lower()[:20]})"
    origin = headers.get("origin")
    if origin is not None and origin.strip().lower().rstrip("/") not in own_origins:
        return "the browser says it came from another origin"
    return None


def _mac(key: bytes, payload: str) -> str:
    digest = hmac.new(key, f"safehold sign-in form {payload}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:24]).decode()


def mint_token(key: bytes, now: float, *, nonce: str | None = None, ttl: int = TOKEN_TTL) -> str:
    """A new pre-session token: ``v1.<expiry>.<nonce>.<mac>``."""
    payload = f"{_VERSION}.{int(now) + ttl}.{nonce if nonce is not None else secrets.token_urlsafe(18)}"
    return f"{payload}.{_mac(key, payload)}"


def token_expiry(key: bytes, token: str) -> int | None:
    """When a well-signed token expires (Unix time), or None when it is not one of ours."""
    parts = token.split(".")
    if len(parts) != 4 or parts[0] != _VERSION or not parts[1].isdigit() or len(token) > 200:
        return None
    payload = ".".join(parts[:3])
    if not hmac.compare_digest(parts[3].encode(), _mac(key, payload).encode()):
        return None
    return int(parts[1])


def token_ok(key: bytes, cookie: str, field: str, now: float) -> bool:
    """Whether a sign-in form came from our own page: the hidden field equals the cookie, and the token
    is ours and unexpired."""
    if not cookie or not field or not hmac.compare_digest(cookie.encode(), field.encode()):
        return False
    expiry = token_expiry(key, cookie)
    return expiry is not None and now < expiry
