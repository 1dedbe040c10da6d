"""Envelope encryption: test vectors, self-describing format, row binding, rotation."""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from safehold.crypto.envelope import (
    DATA_KEY_LEN,
    FORMAT_V1,
    DecryptionError,
    Keyring,
    aad_for,
    new_data_key,
)
from safehold.errors import SafeholdError

KEY_V7 = bytes(range(32))
KEY_V8 = bytes(range(64, 96))
NONCE = bytes(range(0xA0, 0xAC))
PLAINTEXT = b"correct horse battery staple"
AAD = aad_for("accounts", "password", 42)

# Computed once with AESGCM directly (see test_vector_matches_an_independent_construction)
# and pinned, so a change to the on-disk format cannot go unnoticed.
PINNED_V7 = bytes.fromhex(
    "01" "00000007" "a0a1a2a3a4a5a6a7a8a9aaab"
    "85770e5f20a8769f0a0af5a0625aa2bf04d83c62eb973118fd7e4ae3"
    "855d36d7646564aa6b11cdfb9adc901f"
)


def counter_rand() -> tuple[list[int], Callable[[int], bytes]]:
    """Deterministic, distinct 'random' bytes, recording each request size."""
    calls: list[int] = []

    def rand(n: int) -> bytes:
        calls.append(n)
        return bytes([len(calls)]) * n

    return calls, rand


def independent_seal(key: bytes, version: int, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
    header = bytes([0x01]) + version.to_bytes(4, "big")
    return header + nonce + AESGCM(key).encrypt(nonce, plaintext, header + aad)


# --- vectors ------------------------------------------------------------------


def test_aad_names_table_column_and_row() -> None:
    assert AAD == b"safehold:accounts:password:42"
    assert aad_for("resources", "notes", "7f") == b"safehold:resources:notes:7f"


def test_vector_matches_an_independent_construction() -> None:
    ring = Keyring({7: KEY_V7}, 7)
    blob = ring.seal_with_nonce(PLAINTEXT, AAD, NONCE)
    assert blob == independent_seal(KEY_V7, 7, NONCE, PLAINTEXT, AAD)
    assert blob == PINNED_V7


def test_pinned_vector_opens() -> None:
    assert Keyring({7: KEY_V7}, 7).open(PINNED_V7, AAD) == PLAINTEXT


@pytest.mark.parametrize(
    ("plaintext", "aad"),
    [(b"", b""), (b"x", AAD), (b"\x00" * 1000, aad_for("t", "c", 1)), ("pässwörd".encode(), b"a")],
)
def test_vectors_for_several_inputs(plaintext: bytes, aad: bytes) -> None:
    ring = Keyring({3: KEY_V8}, 3)
    blob = ring.seal_with_nonce(plaintext, aad, NONCE)
    assert blob == independent_seal(KEY_V8, 3, NONCE, plaintext, aad)
    assert len(blob) == 1 + 4 + 12 + len(plaintext) + 16
    assert ring.open(blob, aad) == plaintext


def test_seal_takes_its_nonce_from_injected_randomness() -> None:
    calls, rand = counter_rand()
    ring = Keyring({7: KEY_V7}, 7, rand=rand)

    first = ring.seal(PLAINTEXT, AAD)
    second = ring.seal(PLAINTEXT, AAD)

    assert calls == [12, 12]
    assert first == independent_seal(KEY_V7, 7, b"\x01" * 12, PLAINTEXT, AAD)
    assert second == independent_seal(KEY_V7, 7, b"\x02" * 12, PLAINTEXT, AAD)
    assert first != second


def test_seal_with_real_randomness_never_repeats_a_nonce() -> None:
    ring = Keyring({7: KEY_V7}, 7)
    nonces = {ring.seal(PLAINTEXT, AAD)[5:17] for _ in range(200)}
    assert len(nonces) == 200


def test_header_is_format_byte_then_big_endian_version() -> None:
    for version in (0, 1, 256, 2**32 - 1):
        blob = Keyring({version: KEY_V7}, version).seal_with_nonce(b"x", b"", NONCE)
        assert blob[0] == FORMAT_V1 == 0x01
        assert struct.unpack(">I", blob[1:5])[0] == version
        assert blob[5:17] == NONCE
        assert Keyring.version_of(blob) == version


def test_str_helpers_round_trip_utf8() -> None:
    ring = Keyring({1: KEY_V7}, 1)
    assert ring.open_str(ring.seal_str("grüße ☃", AAD), AAD) == "grüße ☃"


def test_new_data_key_uses_injected_randomness() -> None:
    assert new_data_key(lambda n: b"k" * n) == b"k" * DATA_KEY_LEN
    assert len(new_data_key()) == 32
    assert new_data_key() != new_data_key()


# --- refusals -------------------------------------------------------------------


def refuses(ring: Keyring, blob: bytes, aad: bytes) -> DecryptionError:
    with pytest.raises(DecryptionError) as exc:
        ring.open(blob, aad)
    return exc.value


@pytest.mark.parametrize(
    "other_aad",
    [
        aad_for("accounts", "password", 43),  # another row
        aad_for("accounts", "notes", 42),  # another column
        aad_for("resources", "password", 42),  # another table
        b"",
        AAD + b"\x00",
    ],
    ids=["other-row", "other-column", "other-table", "empty", "extended"],
)
def test_ciphertext_moved_to_another_field_does_not_open(other_aad: bytes) -> None:
    ring = Keyring({7: KEY_V7}, 7)
    refuses(ring, ring.seal(PLAINTEXT, AAD), other_aad)


def test_every_tampered_byte_is_detected() -> None:
    ring = Keyring({7: KEY_V7}, 7)
    blob = ring.seal_with_nonce(PLAINTEXT, AAD, NONCE)
    for i in range(len(blob)):
        for flip in (0x01, 0x80):
            tampered = bytearray(blob)
            tampered[i] ^= flip
            refuses(ring, bytes(tampered), AAD)


def test_header_version_rewritten_to_another_known_key_fails() -> None:
    """The version is in the AAD: relabelling a v7 ciphertext as v8 does not open it."""
    ring = Keyring({7: KEY_V7, 8: KEY_V7}, 8)  # even with the same key bytes under both
    blob = Keyring({7: KEY_V7}, 7).seal_with_nonce(PLAINTEXT, AAD, NONCE)
    relabelled = blob[:1] + (8).to_bytes(4, "big") + blob[5:]
    refuses(ring, relabelled, AAD)


@pytest.mark.parametrize("cut", [0, 1, 5, 17, 32, len(PINNED_V7) - 1])
def test_truncated_ciphertext_fails(cut: int) -> None:
    refuses(Keyring({7: KEY_V7}, 7), PINNED_V7[:cut], AAD)


def test_unknown_key_version_fails() -> None:
    refuses(Keyring({8: KEY_V8}, 8), PINNED_V7, AAD)


def test_wrong_key_under_the_right_version_fails() -> None:
    refuses(Keyring({7: KEY_V8}, 7), PINNED_V7, AAD)


@pytest.mark.parametrize("fmt", [0x00, 0x02, 0xFF])
def test_unknown_format_byte_fails(fmt: int) -> None:
    refuses(Keyring({7: KEY_V7}, 7), bytes([fmt]) + PINNED_V7[1:], AAD)


def test_decryption_error_reveals_nothing() -> None:
    ring = Keyring({7: KEY_V7}, 7)
    errors = [
        refuses(ring, PINNED_V7, b"other"),  # wrong aad
        refuses(Keyring({8: KEY_V8}, 8), PINNED_V7, AAD),  # unknown version
        refuses(ring, PINNED_V7[:10], AAD),  # truncated
        refuses(ring, b"\x02" + PINNED_V7[1:], AAD),  # unknown format
    ]
    messages = {str(e) for e in errors}
    assert len(messages) == 1, "the reason for a failure must not be distinguishable"
    message = messages.pop()
    assert message == "a stored secret could not be decrypted (wrong key or damaged data)"
    for e in errors:
        assert isinstance(e, SafeholdError)
        assert e.hint is None
        assert e.__cause__ is None
        assert e.__suppress_context__ or e.__context__ is None  # no InvalidTag in tracebacks
        assert e.args == (message,)
    for leak in (KEY_V7.hex(), PLAINTEXT.decode(), AAD.decode(), "42", "7", "InvalidTag"):
        assert leak not in message


def test_keyring_repr_shows_versions_not_keys() -> None:
    text = repr(Keyring({7: KEY_V7, 8: KEY_V8}, 8))
    assert text == "Keyring(versions=[7, 8], active=8)"
    assert KEY_V7.hex() not in text and repr(KEY_V7) not in text


def test_active_version_must_be_in_the_keyring() -> None:
    with pytest.raises(ValueError, match="active data key version"):
        Keyring({7: KEY_V7}, 8)


# --- rotation -------------------------------------------------------------------


def test_old_versions_still_open_after_with_key_adds_a_new_active_version() -> None:
    calls, rand = counter_rand()
    old = Keyring({7: KEY_V7}, 7, rand=rand)
    old_blob = old.seal(PLAINTEXT, AAD)

    new = old.with_key(8, KEY_V8)

    assert new.active_version == 8
    assert new.versions == [7, 8]
    assert new.open(old_blob, AAD) == PLAINTEXT
    new_blob = new.seal(b"rotated", AAD)
    assert Keyring.version_of(new_blob) == 8
    assert new_blob == independent_seal(KEY_V8, 8, b"\x02" * 12, b"rotated", AAD)  # same rand
    assert new.open(new_blob, AAD) == b"rotated"
    # The original keyring is unchanged and cannot open the new version.
    assert old.versions == [7] and old.active_version == 7
    refuses(old, new_blob, AAD)


def test_rotation_re_encrypts_old_values_under_the_active_version() -> None:
    ring = Keyring({1: KEY_V7}, 1).with_key(2, KEY_V8).with_key(3, bytes(32))
    assert ring.versions == [1, 2, 3]
    blobs = {v: Keyring({v: k}, v).seal(b"secret %d" % v, AAD) for v, k in
             {1: KEY_V7, 2: KEY_V8, 3: bytes(32)}.items()}
    for v, blob in blobs.items():
        assert Keyring.version_of(blob) == v
        rewrapped = ring.seal(ring.open(blob, AAD), AAD)
        assert Keyring.version_of(rewrapped) == 3
        assert ring.open(rewrapped, AAD) == b"secret %d" % v


def test_version_of_reads_the_header_without_a_key() -> None:
    assert Keyring.version_of(PINNED_V7) == 7
    assert Keyring.version_of(PINNED_V7[:5]) == 7


@pytest.mark.parametrize("blob", [b"", b"\x01", b"\x01\x00\x00\x00"])
def test_version_of_refuses_a_blob_shorter_than_the_header(blob: bytes) -> None:
    with pytest.raises(DecryptionError):
        Keyring.version_of(blob)


@pytest.mark.parametrize("nonce_len", [8, 16])
def test_seal_with_nonce_never_returns_an_unopenable_ciphertext(nonce_len: int) -> None:
    ring = Keyring({7: KEY_V7}, 7)
    with pytest.raises(ValueError, match="12 bytes"):
        ring.seal_with_nonce(PLAINTEXT, AAD, bytes(nonce_len))
