"""Envelope encryption of secrets at rest.

Every secret is sealed with AES-256-GCM under a *data key*; data keys are
stored wrapped by the master key (see :mod:`safehold.crypto.keyfile`).  The
ciphertext describes itself::

    format(1) = 0x01 | key version (4, big endian) | nonce (12) | ciphertext+tag

and the identity of the row it belongs to is the associated data, so a
ciphertext copied into another row (or another column) does not open.
Services seal and open through :mod:`safehold.crypto.barrier`, above this
module, which builds that associated data from what is sealed and for which row.
Old data-key versions stay in the keyring for decryption; rotation seals new
values with the active version and can re-encrypt old ones.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from safehold.errors import SafeholdError

FORMAT_V1 = 1
_HEADER = struct.Struct(">BI")
_NONCE_LEN = 12
DATA_KEY_LEN = 32


class DecryptionError(SafeholdError):
    """A ciphertext did not open.  Deliberately says nothing about why."""

    def __init__(self) -> None:
        super().__init__("a stored secret could not be decrypted (wrong key or damaged data)")


def new_data_key(rand: Callable[[int], bytes] = os.urandom) -> bytes:
    return rand(DATA_KEY_LEN)


def aad_for(table: str, column: str, row_id: object) -> bytes:
    """The associated data that binds a ciphertext to one field of one row."""
    return f"safehold:{table}:{column}:{row_id}".encode()


class Keyring:
    """Unwrapped data keys by version; seals with the active one."""

    __slots__ = ("_aeads", "active_version", "_rand")

    def __init__(
        self,
        keys: Mapping[int, bytes],
        active_version: int,
        *,
        rand: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if active_version not in keys:
            raise ValueError("the active data key version is not in the keyring")
        self._aeads = {v: AESGCM(k) for v, k in keys.items()}
        self.active_version = active_version
        self._rand = rand

    def __repr__(self) -> str:
        return f"Keyring(versions={sorted(self._aeads)}, active={self.active_version})"

    def with_key(self, version: int, key: bytes) -> Keyring:
        """A keyring that also holds ``key`` as ``version`` and seals with it."""
        if version in self._aeads:
            raise ValueError(f"data key version {version} already exists")
        ring = Keyring({version: key}, version, rand=self._rand)
        ring._aeads = {**self._aeads, version: AESGCM(key)}
        return ring

    @property
    def versions(self) -> list[int]:
        return sorted(self._aeads)

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        return self.seal_with_nonce(plaintext, aad, self._rand(_NONCE_LEN))

    def seal_with_nonce(self, plaintext: bytes, aad: bytes, nonce: bytes) -> bytes:
        """Deterministic sealing for test vectors; production code calls :meth:`seal`."""
        if len(nonce) != _NONCE_LEN:
            raise ValueError(f"the nonce must be {_NONCE_LEN} bytes")
        header = _HEADER.pack(FORMAT_V1, self.active_version)
        aead = self._aeads[self.active_version]
        return header + nonce + aead.encrypt(nonce, plaintext, header + aad)

    def open(self, blob: bytes, aad: bytes) -> bytes:
        if len(blob) < _HEADER.size + _NONCE_LEN + 16:
            raise DecryptionError()
        fmt, version = _HEADER.unpack_from(blob)
        aead = self._aeads.get(version)
        if fmt != FORMAT_V1 or aead is None:
            raise DecryptionError()
        nonce = blob[_HEADER.size : _HEADER.size + _NONCE_LEN]
        try:
            return aead.decrypt(nonce, blob[_HEADER.size + _NONCE_LEN :], blob[: _HEADER.size] + aad)
        except InvalidTag:
            raise DecryptionError() from None

    def seal_str(self, text: str, aad: bytes) -> bytes:
        return self.seal(text.encode("utf-8"), aad)

    def open_str(self, blob: bytes, aad: bytes) -> str:
        return self.open(blob, aad).decode("utf-8")

    @staticmethod
    def version_of(blob: bytes) -> int:
        if len(blob) < _HEADER.size:
            raise DecryptionError()
        return int(_HEADER.unpack_from(blob)[1])
