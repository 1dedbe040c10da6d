"""Passphrase-sealed files (setup packs): round trips and every kind of damage refused."""

from __future__ import annotations

import io
import os

import pytest

from safehold.crypto import sealedfile
from safehold.crypto.sealedfile import (
    SealedFileError,
    SealedReader,
    SealedWriter,
    open_bytes,
    seal_bytes,
)

FAST = 10  # scrypt work factor for tests


@pytest.mark.parametrize("size", [0, 1, sealedfile.CHUNK - 1, sealedfile.CHUNK, sealedfile.CHUNK + 1,
                                  3 * sealedfile.CHUNK + 7])
def test_round_trip(size: int) -> None:
    data = os.urandom(size)
    assert open_bytes(seal_bytes(data, "correct horse", log2_n=FAST), "correct horse") == data


def test_streaming_writes_and_reads() -> None:
    out = io.BytesIO()
    with SealedWriter(out, "pw", log2_n=FAST) as w:
        for _ in range(5):
            w.write(b"x" * 700_000)
    with SealedReader(io.BytesIO(out.getvalue()), "pw") as r:
        total = 0
        while chunk := r.read(123_457):
            total += len(chunk)
    assert total == 3_500_000


def test_the_passphrase_and_content_do_not_appear_in_the_file() -> None:
    blob = seal_bytes(b"replication-password-123", "my passphrase", log2_n=FAST)
    assert b"replication-password-123" not in blob and b"my passphrase" not in blob


def test_wrong_passphrase_is_refused_before_any_content() -> None:
    blob = seal_bytes(b"secret", "right", log2_n=FAST)
    with pytest.raises(SealedFileError, match="wrong passphrase"):
        SealedReader(io.BytesIO(blob), "wrong")


def _chunks(blob: bytes) -> tuple[bytes, list[bytes]]:
    header_len = len(sealedfile.MAGIC) + 24
    header, rest, chunks = blob[:header_len], blob[header_len:], []
    while rest:
        n = int.from_bytes(rest[:4], "big") + 4
        chunks.append(rest[:n])
        rest = rest[n:]
    return header, chunks


def test_every_kind_of_damage_is_refused() -> None:
    blob = seal_bytes(os.urandom(2 * sealedfile.CHUNK + 10), "pw", log2_n=FAST)
    header, chunks = _chunks(blob)
    assert len(chunks) == 3
    damaged = {
        "flipped byte": blob[:100] + bytes([blob[100] ^ 1]) + blob[101:],
        "truncated": blob[:-1],
        "last chunk dropped": header + chunks[0] + chunks[1],
        "chunks swapped": header + chunks[1] + chunks[0] + chunks[2],
        "trailing data": blob + b"\x00",
        "header changed": header[:-1] + bytes([header[-1] ^ 1]) + b"".join(chunks),
        "not sealed": b"PK\x03\x04 a zip file",
        "empty": b"",
    }
    for what, bad in damaged.items():
        with pytest.raises(SealedFileError):
            open_bytes(bad, "pw")
        assert what  # each case named for the reader of a failure


def test_absurd_key_parameters_are_refused_not_computed() -> None:
    blob = bytearray(seal_bytes(b"x", "pw", log2_n=FAST))
    blob[len(sealedfile.MAGIC) + 16] = 40  # would need terabytes of memory
    with pytest.raises(SealedFileError, match="damaged"):
        open_bytes(bytes(blob), "pw")
