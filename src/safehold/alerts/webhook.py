"""Webhook: a JSON POST signed with HMAC-SHA256.

Headers: ``X-Safehold-Signature: sha256=<hex HMAC-SHA256 of the raw body, keyed with the secret>``,
``X-Safehold-Timestamp: <unix seconds>`` (also in the signed body as ``sent_at``, so a receiver can
refuse replays), ``X-Safehold-Event: <kind>``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from safehold.alerts.base import AlertError, network_error, stored_or_file, tls_context
from safehold.alerts.events import AlertEvent
from safehold.alerts.settings import WebhookSection

SIGNATURE_HEADER = "X-Safehold-Signature"
TIMESTAMP_HEADER = "X-Safehold-Timestamp"
EVENT_HEADER = "X-Safehold-Event"


def sign(secret: str | bytes, body: bytes) -> str:
    """The signature header's value: ``sha256=`` and the hex HMAC-SHA256 of ``body``."""
    key = secret.encode() if isinstance(secret, str) else secret
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def verify(secret: str | bytes, body: bytes, signature: str) -> bool:
    """What a receiver does: compare in constant time."""
    return hmac.compare_digest(sign(secret, body), signature)


def request_body(event: AlertEvent, sent_at: int) -> bytes:
    return json.dumps({**event.to_json(), "sent_at": sent_at}, separators=(",", ":"),
                      ensure_ascii=False).encode()


def signed_request(event: AlertEvent, secret: str, now: float | None = None) -> tuple[bytes, dict[str, str]]:
    """The raw body and the headers of the POST for ``event``."""
    sent_at = int(time.time() if now is None else now)
    body = request_body(event, sent_at)
    headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(secret, body),
               TIMESTAMP_HEADER: str(sent_at), EVENT_HEADER: event.kind,
               "User-Agent": "Safehold-Alerts"}
    return body, headers


class WebhookChannel:
    name = "webhook"

    def __init__(self, section: WebhookSection, resolve: Callable[[Path], Path] = lambda p: p,
                 secret: str | None = None) -> None:
        self.section = section
        self.secret_file = resolve(section.secret_file) if section.secret_file else None
        self._secret = secret  # the stored secret (the database's settings), else secret_file
        self.ca_file = resolve(section.ca_file) if section.ca_file else None
        url = httpx.URL(section.url)
        # shown without the path and query, which may hold a token
        self.origin = f"{url.scheme}://{url.host}" + (f":{url.port}" if url.port else "")

    def target(self) -> str:
        return f"{self.origin}/… (POST, signed)"

    def _read_secret(self) -> str:
        return stored_or_file(self._secret, self.secret_file, "webhook secret", self.name)

    def check(self) -> None:
        self._read_secret()
        if self.section.url.startswith("https:"):
            tls_context(self.ca_file)

    def send(self, event: AlertEvent) -> str:
        secret = self._read_secret()
        verify_with = tls_context(self.ca_file) if self.section.url.startswith("https:") else True
        body, headers = signed_request(event, secret)
        try:
            with httpx.Client(verify=verify_with, timeout=self.section.timeout,
                              follow_redirects=False) as client:
                r = client.post(self.section.url, content=body, headers=headers)
        except httpx.TimeoutException:
            raise AlertError(f"webhook: {self.origin} did not answer in time") from None
        except httpx.TransportError as exc:
            cause: BaseException = exc  # the OSError below httpx's and httpcore's wrappers
            while not isinstance(cause, OSError) and cause.__context__ is not None:
                cause = cause.__context__
            raise network_error("webhook", self.origin, cause) from None
        if not 200 <= r.status_code < 300:
            raise AlertError(f"webhook: {self.origin} answered HTTP {r.status_code}",
                             hint="the receiver refused the request; does it have the same secret?",
                             transient=r.status_code >= 500 or r.status_code == 429)
        return f"webhook delivered to {self.origin} (HTTP {r.status_code})"
