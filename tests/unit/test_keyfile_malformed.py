"""A malformed master key file is refused with a message that names the file and says what is wrong with it,
in words: never an exception's class name, never the file's content."""

from __future__ import annotations

import base64
import os
import re
from pathlib import Path

import pytest

from safehold.crypto.keyfile import KEY_LEN, decode_key, encode_key, load_key_file
from safehold.errors import KeyFileError

KEY = bytes(range(32))
BODY = base64.urlsafe_b64encode(KEY).decode().rstrip("=")
GOOD = encode_key(KEY).encode()

#: a class name such as UnicodeDecodeError, binascii.Error, ValueError
CLASS_NAME = re.compile(r"\b[A-Za-z_.]*(Error|Exception)\b")


def _key_file(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "safehold.key"
    path.write_bytes(data)
    os.chmod(path, 0o600)
    return path


@pytest.mark.parametrize(("data", "words"), [
    pytest.param(os.urandom(KEY_LEN) + b"\xff\xfe\x00", "holds binary data", id="binary-garbage"),
    pytest.param(KEY, "holds binary data", id="raw-key-bytes"),
    pytest.param(b"\xef\xbb\xbf" + GOOD, "holds binary data", id="utf8-bom"),
    pytest.param(b"", "is empty", id="empty"),
    pytest.param(b"  \n\n", "is empty", id="whitespace-only"),
    pytest.param(GOOD[:20], "wrong key length", id="truncated"),
    pytest.param(GOOD[: len(b"safehold-key-v1:")], "holds no key", id="header-only"),
    pytest.param(b"safehold-key-v1:" + BODY[:-4].encode(), "was the file cut short", id="cut-short"),
    pytest.param(b"safehold-key-v1:" + BODY[:-6].encode(), "was the file cut short", id="cut-mid-quantum"),
    pytest.param(b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n", "does not start with",
                 id="a-certificate"),
    pytest.param(b'[server]\nname = "a"\n', "does not start with", id="a-settings-file"),
    pytest.param(b"safehold-key-v1:" + BODY.encode() + b"\nsafehold-key-v1:" + BODY.encode(),
                 "more than one line", id="two-keys"),
    pytest.param(b"safehold-key-v1:" + BODY[:10].encode() + b"!" + BODY[10:].encode(), "not valid base64",
                 id="bad-character"),
    pytest.param(b"safehold-key-v1:" + BODY.encode() + b"AA", "not valid base64", id="bad-length"),
])
def test_a_malformed_key_file_is_named_and_explained(tmp_path: Path, data: bytes, words: str) -> None:
    path = _key_file(tmp_path, data)

    with pytest.raises(KeyFileError) as exc:
        load_key_file(path)

    message = exc.value.message
    assert message.startswith(f"key file {path} ")
    assert words in message
    assert not CLASS_NAME.search(str(exc.value)), str(exc.value)
    assert BODY[:8] not in str(exc.value)
    assert exc.value.hint is not None and "safehold init" in exc.value.hint
    assert exc.value.__cause__ is None
    assert exc.value.__context__ is None or exc.value.__suppress_context__


def test_decode_key_reads_a_good_file_and_tolerates_surrounding_whitespace() -> None:
    assert decode_key(GOOD) == (KEY, "")
    assert decode_key(b"\r\n  " + GOOD + b"\r\n") == (KEY, "")


def test_an_unreadable_key_file_says_why_in_words(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads a file whatever its mode")
    path = _key_file(tmp_path, GOOD)
    os.chmod(path, 0o000)
    try:
        with pytest.raises(KeyFileError) as exc:
            load_key_file(path)
    finally:
        os.chmod(path, 0o600)
    assert exc.value.message == f"key file {path} cannot be read: Permission denied"
