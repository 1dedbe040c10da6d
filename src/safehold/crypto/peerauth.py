"""Requests between the servers of one cluster, authenticated by the master key.

Every server holds the master key at start-up; from it both sides derive a peer key (HKDF, its own
label, so the master key itself never signs anything) and keep only that.  A request carries
``X-Safehold-Peer: <unix time>.<nonce>.<hex HMAC-SHA256>`` over the method, path, time, nonce and
body.  The receiver accepts it within ``WINDOW`` seconds and each nonce once, so a captured request
cannot be replayed.  An operator's CLI on any server with the key file can sign; nobody without it can.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

HEADER = "X-Safehold-Peer"
WINDOW = 120.0
_INFO = b"safehold peer requests v1"


def peer_key(master_key: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(master_key)


def _mac(key: bytes, method: str, path: str, stamp: str, nonce: str, body: bytes) -> str:
    msg = b"\n".join([method.upper().encode(), path.encode(), stamp.encode(), nonce.encode(),
                      hashlib.sha256(body).hexdigest().encode()])
    return hmac.new(key, msg, hashlib.sha256).hexdigest()


def sign(key: bytes, method: str, path: str, body: bytes, *, now: float | None = None) -> str:
    stamp = str(int(time.time() if now is None else now))
    nonce = secrets.token_hex(12)
    return f"{stamp}.{nonce}.{_mac(key, method, path, stamp, nonce, body)}"


class PeerVerifier:
    """Checks signed requests; remembers recent nonces (bounded) against replays."""

    def __init__(self, key: bytes, *, window: float = WINDOW, remember: int = 4096) -> None:
        self._key = key
        self._window = window
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._remember = remember

    def __repr__(self) -> str:
        return "PeerVerifier()"

    def verify(self, header: str | None, method: str, path: str, body: bytes, *, now: float | None = None) -> bool:
        if not header:
            return False
        parts = header.split(".")
        if len(parts) != 3 or not parts[0].isdigit() or not parts[1] or len(parts[1]) > 64:
            return False
        stamp, nonce, mac = parts
        t = time.time() if now is None else now
        if abs(t - int(stamp)) > self._window:
            return False
        if not hmac.compare_digest(mac, _mac(self._key, method, path, stamp, nonce, body)):
            return False
        if nonce in self._seen:
            return False
        self._seen[nonce] = t
        while len(self._seen) > self._remember or (self._seen and next(iter(self._seen.values())) < t - self._window):
            self._seen.popitem(last=False)
        return True
