"""The webhook signature: HMAC-SHA256 of the raw body, and what a receiver checks."""

from __future__ import annotations

import datetime as dt
import json

from safehold.alerts.events import AlertEvent
from safehold.alerts.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign, signed_request, verify

AT = dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


def test_signature_matches_the_hmac_sha256_vector() -> None:
    # the well-known HMAC-SHA256 test vector (key "key")
    assert sign("key", b"The quick brown fox jumps over the lazy dog") == (
        "sha256=f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8")


def test_signed_request_body_and_headers() -> None:
    e = AlertEvent("Failover", "vault-2", "vault-2 took over", AT, ("vault-2", "vault-1"), "sid", "vault-2", "cid", 9)
    body, headers = signed_request(e, "s3cret", now=1735787045.7)
    assert headers[SIGNATURE_HEADER] == sign("s3cret", body)
    assert headers[TIMESTAMP_HEADER] == "1735787045"
    assert headers["X-Safehold-Event"] == "Failover"
    data = json.loads(body)
    assert data["event"] == "Failover" and data["args"] == ["vault-2", "vault-1"]
    assert data["sent_at"] == 1735787045  # the timestamp is signed too (in the body)
    assert data["server"] == {"id": "sid", "name": "vault-2"} and data["cluster_id"] == "cid"
    assert b"s3cret" not in body


def test_verify_refuses_a_changed_body_or_another_secret() -> None:
    body, headers = signed_request(AlertEvent("HAAlive", "ro", "alive", AT), "s3cret", now=0)
    assert verify("s3cret", body, headers[SIGNATURE_HEADER])
    assert not verify("s3cret", body.replace(b"HAAlive", b"HAFaile"), headers[SIGNATURE_HEADER])
    assert not verify("other", body, headers[SIGNATURE_HEADER])
