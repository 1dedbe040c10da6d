"""The master key file: created safely, loaded only when safe and well-formed."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from safehold.crypto.keyfile import (
    KEY_LEN,
    MasterKey,
    create_key_file,
    encode_key,
    load_key_file,
)
from safehold.errors import KeyFileError

KEY = bytes(range(32))
OTHER_KEY = bytes(range(100, 132))


def fixed_rand(n: int) -> bytes:
    assert n == KEY_LEN
    return KEY


def key_secrets(key: bytes) -> list[str]:
    """Every textual form of the key that must never appear in a message."""
    b64 = base64.urlsafe_b64encode(key).decode()
    return [b64, b64.rstrip("="), base64.b64encode(key).decode(), key.hex(), repr(key)]


def assert_no_key_in(message: str, key: bytes = KEY) -> None:
    for form in key_secrets(key):
        assert form not in message


def write_key_file(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    os.chmod(path, mode)
    return path


# --- create_key_file -------------------------------------------------------


def test_create_key_file_writes_mode_0600_and_loads_back(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "safehold.key"
    created = create_key_file(path, rand=fixed_rand)

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == encode_key(KEY)
    assert path.read_text().startswith("safehold-key-v1:")
    loaded = load_key_file(path)
    assert loaded.check_value == created.check_value == MasterKey(KEY).check_value


def test_create_key_file_ignores_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        path = tmp_path / "safehold.key"
        create_key_file(path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_create_key_file_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "safehold.key"
    create_key_file(path, rand=fixed_rand)
    before = path.read_bytes()

    with pytest.raises(KeyFileError) as exc:
        create_key_file(path, rand=lambda n: OTHER_KEY)

    assert "already exists" in str(exc.value)
    assert "never overwrites" in str(exc.value)
    assert path.read_bytes() == before
    assert_no_key_in(str(exc.value))
    assert_no_key_in(str(exc.value), OTHER_KEY)


def test_created_keys_differ(tmp_path: Path) -> None:
    a = create_key_file(tmp_path / "a.key")
    b = create_key_file(tmp_path / "b.key")
    assert a.check_value != b.check_value


# --- load_key_file: refusals ----------------------------------------------


@pytest.mark.parametrize("mode", [0o640, 0o644, 0o604, 0o660, 0o606, 0o620, 0o602, 0o610, 0o601])
def test_load_refuses_group_or_world_access(tmp_path: Path, mode: int) -> None:
    path = write_key_file(tmp_path / "safehold.key", encode_key(KEY), mode)

    with pytest.raises(KeyFileError) as exc:
        load_key_file(path)

    message = str(exc.value)
    assert "other users" in message
    assert f"{mode:04o}" in message
    assert "refusing" in message
    assert exc.value.hint == f"chmod 600 {path}"
    assert f"chmod 600 {path}" in message
    assert_no_key_in(message)


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_load_accepts_owner_only_modes(tmp_path: Path, mode: int) -> None:
    path = write_key_file(tmp_path / "safehold.key", encode_key(KEY), mode)
    assert load_key_file(path).check_value == MasterKey(KEY).check_value


def test_load_refuses_a_missing_file_and_says_how_to_fix_it(tmp_path: Path) -> None:
    path = tmp_path / "nope.key"
    with pytest.raises(KeyFileError) as exc:
        load_key_file(path)
    assert f"key file {path} not found" in str(exc.value)
    assert exc.value.hint is not None
    assert "key_file" in exc.value.hint
    assert "SAFEHOLD_SECURITY__KEY_FILE" in exc.value.hint


def test_load_refuses_a_directory(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="not a regular file"):
        load_key_file(tmp_path)


GOOD_BODY = base64.urlsafe_b64encode(KEY).decode().rstrip("=")


@pytest.mark.parametrize(
    ("text", "why"),
    [
        pytest.param("safehold-key-v2:" + GOOD_BODY, "is not a Safehold key file", id="wrong-version"),
        pytest.param(GOOD_BODY, "is not a Safehold key file", id="no-header"),
        pytest.param("-----BEGIN PRIVATE KEY-----\n" + GOOD_BODY, "is not a Safehold key file", id="pem"),
        pytest.param("", "is not a Safehold key file", id="empty"),
        pytest.param("safehold-key-v1:" + GOOD_BODY + "AA", "damaged (not valid base64)", id="bad-b64-length"),
        pytest.param("safehold-key-v1:" + GOOD_BODY[:10] + "*" + GOOD_BODY[10:], "damaged (not valid base64)", id="bad-b64-char"),
        pytest.param("safehold-key-v1:" + GOOD_BODY[:-4], "damaged (wrong key length)", id="short"),
        pytest.param("safehold-key-v1:" + GOOD_BODY + "AAAA", "damaged (wrong key length)", id="long"),
        pytest.param("safehold-key-v1:", "damaged (wrong key length)", id="no-key"),
    ],
)
def test_load_refuses_malformed_content_without_echoing_it(tmp_path: Path, text: str, why: str) -> None:
    path = write_key_file(tmp_path / "safehold.key", text + "\n")

    with pytest.raises(KeyFileError) as exc:
        load_key_file(path)

    message = str(exc.value)
    assert why in message
    assert str(path) in message
    assert GOOD_BODY not in message
    assert GOOD_BODY[:10] not in message
    assert_no_key_in(message)


def test_load_refuses_non_ascii_content(tmp_path: Path) -> None:
    path = tmp_path / "safehold.key"
    path.write_bytes("safehold-key-v1:é".encode() + b"\xff")
    os.chmod(path, 0o600)
    with pytest.raises(KeyFileError, match="is not a Safehold key file: it holds binary data"):
        load_key_file(path)


def test_load_tolerates_surrounding_whitespace(tmp_path: Path) -> None:
    path = write_key_file(tmp_path / "safehold.key", "\n  " + encode_key(KEY) + "\n\n")
    assert load_key_file(path).check_value == MasterKey(KEY).check_value


# --- MasterKey --------------------------------------------------------------


def test_master_key_repr_and_str_hide_the_key() -> None:
    key = MasterKey(KEY)
    for text in (repr(key), str(key), f"{key!r}", repr([key])):
        assert "MasterKey(id=" in text
        assert_no_key_in(text)
    assert key.key_id in repr(key)


def test_master_key_has_no_instance_dict_to_leak_through() -> None:
    assert not hasattr(MasterKey(KEY), "__dict__")


@pytest.mark.parametrize("length", [0, 16, 31, 33, 64])
def test_master_key_must_be_32_bytes(length: int) -> None:
    with pytest.raises(KeyFileError, match="32 bytes"):
        MasterKey(b"\x01" * length)


def test_check_value_is_stable_and_differs_between_keys() -> None:
    a1, a2, b = MasterKey(KEY), MasterKey(bytes(KEY)), MasterKey(OTHER_KEY)
    assert a1.check_value == a2.check_value
    assert len(a1.check_value) == 16
    assert a1.check_value != b.check_value
    assert a1.key_id == a2.key_id != b.key_id


def test_check_value_test_vector() -> None:
    """Pinned: a stored check value must keep matching the same key across releases."""
    import hashlib
    import hmac

    expected = hmac.new(KEY, b"safehold key check v1", hashlib.sha256).digest()[:16]
    assert MasterKey(KEY).check_value == expected


def test_derive_is_deterministic_and_separates_labels() -> None:
    key = MasterKey(KEY)
    assert key.derive("audit") == key.derive("audit")
    assert len(key.derive("audit")) == 32
    assert key.derive("audit") != key.derive("session")
    assert key.derive("audit") != MasterKey(OTHER_KEY).derive("audit")


def test_wrap_unwrap_round_trip() -> None:
    key = MasterKey(KEY)
    secret = os.urandom(32)
    blob = key.wrap(secret, "data")
    assert secret not in blob
    assert key.unwrap(blob, "data") == secret
    assert MasterKey(KEY).unwrap(blob, "data") == secret  # same key bytes, new object


def test_wrap_uses_a_fresh_nonce_each_time() -> None:
    key = MasterKey(KEY)
    assert key.wrap(b"s" * 32, "data") != key.wrap(b"s" * 32, "data")


def test_wrap_with_fixed_nonce_is_a_test_vector() -> None:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = bytes(12)
    expected = nonce + AESGCM(KEY).encrypt(nonce, b"secret", b"data")
    assert MasterKey(KEY).wrap(b"secret", "data", nonce=nonce) == expected


@pytest.mark.parametrize(
    ("unwrap_key", "label"),
    [
        pytest.param(OTHER_KEY, "data", id="other-key"),
        pytest.param(KEY, "audit", id="other-label"),
        pytest.param(OTHER_KEY, "audit", id="both"),
    ],
)
def test_unwrap_with_another_key_or_label_fails(unwrap_key: bytes, label: str) -> None:
    secret = b"\x42" * 32
    blob = MasterKey(KEY).wrap(secret, "data")

    with pytest.raises(KeyFileError) as exc:
        MasterKey(unwrap_key).unwrap(blob, label)

    assert "does not match" in str(exc.value)
    assert_no_key_in(str(exc.value))
    assert_no_key_in(str(exc.value), unwrap_key)
    assert secret.hex() not in str(exc.value)
    assert exc.value.__cause__ is None
    assert exc.value.__suppress_context__


@pytest.mark.parametrize(
    "blob",
    [b"", b"short", bytes(12), bytes(27)],
    ids=["empty", "shorter-than-nonce", "nonce-only", "no-room-for-tag"],
)
def test_unwrap_truncated_blob_fails_cleanly(blob: bytes) -> None:
    with pytest.raises(KeyFileError):
        MasterKey(KEY).unwrap(blob, "data")


def test_unwrap_tampered_blob_fails() -> None:
    key = MasterKey(KEY)
    blob = bytearray(key.wrap(b"\x42" * 32, "data"))
    for i in (0, 12, len(blob) - 1):
        tampered = bytearray(blob)
        tampered[i] ^= 0x01
        with pytest.raises(KeyFileError):
            key.unwrap(bytes(tampered), "data")
