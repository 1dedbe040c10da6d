"""Files sealed with a passphrase: setup packs and setup files travel between hosts in these.

A sealed file is a stream of AES-256-GCM chunks (the STREAM construction), so
packs of any size are encrypted and checked without holding them in memory::

    header  = b"SAFEHOLD-SEALED\\x01" | salt (16) | log2(scrypt n) (1) | nonce prefix (7)
    chunk i = AES-GCM(key, nonce = prefix | i (4, big endian) | last (1), data, aad = header)
              as length (4, big endian) | ciphertext+tag

The key comes from the passphrase with scrypt.  A wrong passphrase, a
damaged byte, a reordered, dropped or truncated chunk: each is refused with
:class:`SealedFileError` before any of the content is trusted.
"""

from __future__ import annotations

import io
import os
import struct
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from safehold.errors import SafeholdError

MAGIC = b"SAFEHOLD-SEALED\x01"
CHUNK = 1 << 20
_LEN = struct.Struct(">I")
_HEADER_LEN = len(MAGIC) + 16 + 1 + 7
DEFAULT_LOG2_N = 15
MAX_LOG2_N = 20


class SealedFileError(SafeholdError):
    pass


def _key(passphrase: str, salt: bytes, log2_n: int) -> bytes:
    if not 10 <= log2_n <= MAX_LOG2_N:
        raise SealedFileError("the file is damaged or not a Safehold sealed file (bad key parameters)")
    return Scrypt(salt=salt, length=32, n=1 << log2_n, r=8, p=1).derive(passphrase.encode("utf-8"))


def _nonce(prefix: bytes, index: int, last: bool) -> bytes:
    return prefix + index.to_bytes(4, "big") + (b"\x01" if last else b"\x00")


class SealedWriter(io.RawIOBase):
    """A write-only file object that seals what is written to it into ``out``."""

    def __init__(self, out: BinaryIO, passphrase: str, *, log2_n: int = DEFAULT_LOG2_N) -> None:
        super().__init__()
        salt, prefix = os.urandom(16), os.urandom(7)
        self._header = MAGIC + salt + bytes([log2_n]) + prefix
        self._aead = AESGCM(_key(passphrase, salt, log2_n))
        self._prefix, self._out, self._buf, self._index = prefix, out, bytearray(), 0
        out.write(self._header)

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self._buf += data
        while len(self._buf) > CHUNK:
            self._emit(bytes(self._buf[:CHUNK]), last=False)
            del self._buf[:CHUNK]
        return len(data)

    def _emit(self, data: bytes, *, last: bool) -> None:
        if self._index >= 2**32 - 1:
            raise SealedFileError("the content is too large to seal")
        sealed = self._aead.encrypt(_nonce(self._prefix, self._index, last), data, self._header)
        self._out.write(_LEN.pack(len(sealed)) + sealed)
        self._index += 1

    def close(self) -> None:
        if not self.closed:
            self._emit(bytes(self._buf), last=True)
            self._buf.clear()
            self._out.flush()
        super().close()


class SealedReader(io.RawIOBase):
    """A read-only file object over a sealed file; raises SealedFileError on any damage."""

    def __init__(self, src: BinaryIO, passphrase: str) -> None:
        super().__init__()
        header = src.read(_HEADER_LEN)
        if len(header) < _HEADER_LEN or not header.startswith(MAGIC):
            raise SealedFileError("not a Safehold sealed file (or an unsupported version)")
        salt = header[len(MAGIC) : len(MAGIC) + 16]
        log2_n = header[len(MAGIC) + 16]
        self._prefix = header[-7:]
        self._header, self._src = header, src
        self._aead = AESGCM(_key(passphrase, salt, log2_n))
        self._index, self._buf, self._done = 0, b"", False
        self._fill()  # the first chunk proves the passphrase before anything is returned

    def readable(self) -> bool:
        return True

    def _fill(self) -> None:
        raw_len = self._src.read(_LEN.size)
        if len(raw_len) < _LEN.size:
            raise SealedFileError("the file is truncated (its end is missing)")
        (n,) = _LEN.unpack(raw_len)
        if n > CHUNK + 16:
            raise SealedFileError("the file is damaged (a chunk is too long)")
        sealed = self._src.read(n)
        if len(sealed) < n:
            raise SealedFileError("the file is truncated (its end is missing)")
        for last in (False, True):
            try:
                data = self._aead.decrypt(_nonce(self._prefix, self._index, last), sealed, self._header)
            except InvalidTag:
                continue
            self._index += 1
            self._buf += data
            if last:
                self._done = True
                if self._src.read(1):
                    raise SealedFileError("the file is damaged (data after its end)")
            return
        if self._index == 0:
            raise SealedFileError("wrong passphrase, or the file is damaged")
        raise SealedFileError(f"the file is damaged (chunk {self._index} does not verify)")

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._buf and not self._done:
            self._fill()
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


def seal_bytes(data: bytes, passphrase: str, *, log2_n: int = DEFAULT_LOG2_N) -> bytes:
    out = io.BytesIO()
    with SealedWriter(out, passphrase, log2_n=log2_n) as w:
        w.write(data)
    return out.getvalue()


def open_bytes(blob: bytes, passphrase: str) -> bytes:
    with SealedReader(io.BytesIO(blob), passphrase) as r:
        return r.read()
