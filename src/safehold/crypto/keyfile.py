"""The master key file: 32 random bytes that wrap every data key.

The file is text (one line, ``safehold-key-v1:`` followed by the key in
base64url) so that a wrong file is recognised as such rather than used.
It is created with mode 0600 and refused when other users may read it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import stat
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from safehold.errors import KeyFileError
from safehold.files import write_private

KEY_LEN = 32
_HEADER = "safehold-key-v1:"
_B64URL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
_CHECK_LABEL = b"safehold key check v1"
_WRAP_NONCE_LEN = 12


def key_id_of(check_value: bytes) -> str:
    """A short name for a master key, derived from its check value (so a server that no longer
    holds the key can still name it)."""
    return hashlib.sha256(check_value).hexdigest()[:12]


class MasterKey:
    """The unwrapped master key.  Its repr never shows the key."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_LEN:
            raise KeyFileError("a master key must be 32 bytes")
        self._key = key

    def __repr__(self) -> str:
        return f"MasterKey(id={self.key_id})"

    def peer_key(self) -> bytes:
        """The key requests between this cluster's servers are signed with (see crypto.peerauth)."""
        from safehold.crypto.peerauth import peer_key

        return peer_key(self._key)

    @property
    def check_value(self) -> bytes:
        """A value stored in the database to recognise this key; reveals nothing about it."""
        return hmac.new(self._key, _CHECK_LABEL, hashlib.sha256).digest()[:16]

    @property
    def key_id(self) -> str:
        return key_id_of(self.check_value)

    def derive(self, label: str) -> bytes:
        """A 32-byte sub-key for one purpose (HMAC-based, one-way)."""
        return hmac.new(self._key, b"safehold derive v1:" + label.encode(), hashlib.sha256).digest()

    def wrap(self, secret: bytes, label: str, *, nonce: bytes | None = None) -> bytes:
        """Encrypt a data key under the master key; ``label`` binds it to its use."""
        nonce = nonce if nonce is not None else os.urandom(_WRAP_NONCE_LEN)
        return nonce + AESGCM(self._key).encrypt(nonce, secret, label.encode())

    def unwrap(self, blob: bytes, label: str) -> bytes:
        from cryptography.exceptions import InvalidTag

        try:
            return AESGCM(self._key).decrypt(
                blob[:_WRAP_NONCE_LEN], blob[_WRAP_NONCE_LEN:], label.encode()
            )
        except (InvalidTag, ValueError):
            raise KeyFileError(
                "the master key file does not match this database (a wrapped key could not be opened)"
            ) from None


def encode_key(key: bytes) -> str:
    return _HEADER + base64.urlsafe_b64encode(key).decode().rstrip("=") + "\n"


def create_key_file(path: Path, *, rand: Callable[[int], bytes] = os.urandom) -> MasterKey:
    """Create a new key file (mode 0600).  Refuses to overwrite an existing one."""
    key = rand(KEY_LEN)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        write_private(path, encode_key(key).encode(), 0o600)
    except FileExistsError:
        raise KeyFileError(
            f"key file {path} already exists; Safehold never overwrites a key file",
            hint="move it away first if you really mean to create a new key",
        ) from None
    return MasterKey(key)


def check_key_file_mode(path: Path) -> None:
    st = path.stat()
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        mode = stat.S_IMODE(st.st_mode)
        raise KeyFileError(
            f"key file {path} is readable or writable by other users (mode {mode:04o}); refusing to use it",
            hint=f"chmod 600 {path}",
        )


def load_key_file(path: Path) -> MasterKey:
    """Read and validate the key file; refuses unsafe permissions and malformed content (the message names
    the file and what is wrong with it, never its content)."""
    if not path.exists():
        raise KeyFileError(
            f"key file {path} not found",
            hint="set key_file in safehold.toml (or SAFEHOLD_SECURITY__KEY_FILE) to the file made by 'safehold init'",
        )
    if not path.is_file():
        raise KeyFileError(f"key file {path} is not a regular file")
    check_key_file_mode(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"key file {path} cannot be read: {exc.strerror or 'the system refused it'}") from None
    key, problem = decode_key(data)
    if key is None:
        raise KeyFileError(f"key file {path} {problem}", hint=_MALFORMED_HINT)
    return MasterKey(key)


_MALFORMED_HINT = ("use the key file made by 'safehold init' for this cluster (or its backup copy); "
                   "Safehold cannot repair a damaged one")


def decode_key(data: bytes) -> tuple[bytes | None, str]:
    """The key in a key file's bytes, or None and what is wrong with them, in words that go after "key file
    PATH" (pure; the words never quote the content, which may be most of a key)."""
    try:
        text = data.decode("ascii").strip()
    except UnicodeDecodeError:
        text = "\0"
    if any((ord(c) < 32 and c not in "\t\r\n") or ord(c) == 127 for c in text):
        return None, (f"is not a Safehold key file: it holds binary data, not the one text line starting with "
                      f"'{_HEADER}' that a key file holds")
    if not text:
        return None, "is not a Safehold key file: it is empty"
    if not text.startswith(_HEADER):
        return None, f"is not a Safehold key file: its line does not start with '{_HEADER}'"
    body = text[len(_HEADER) :]
    if not body:
        return None, "is damaged (wrong key length): it holds no key after its header"
    if "\n" in body or "\r" in body:
        return None, "is damaged: it holds more than one line"
    if not set(body) <= _B64URL:
        return None, "is damaged (not valid base64): its key holds characters that base64url does not use"
    if len(body) % 4 == 1:
        return None, (f"is damaged (not valid base64): its key is {len(body)} characters long, which no key "
                      "encodes to; was the file cut short or added to?")
    key = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    if len(key) != KEY_LEN:
        return None, (f"is damaged (wrong key length): its key is {len(key)} bytes long, a Safehold key "
                      f"{KEY_LEN}; was the file cut short or added to?")
    return key, ""
