"""The barrier: the associated data of every kind of secret, pinned, so databases sealed before it
(and by earlier versions) still open; a ciphertext opens only as the kind and row it was sealed for."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from safehold.crypto.barrier import Barrier, Secret
from safehold.crypto.envelope import DecryptionError, Keyring
from safehold.storage import cluster_settings as settings_store
from safehold.storage import vault as vault_store

KEY = bytes(range(32))
VERSION = 3
NONCE = bytes(range(100, 112))
ACCOUNT = "0b6e2f1c-0a3e-4f55-9d1e-6c1f1c2a7b10"
HISTORY = "5d0c7e0e-8d83-4a86-9c0e-1f0a1a9e2d33"
USER = "9f3b1a52-33c1-4b8e-8a55-2b9b2f8f6d01"

# (kind, row id, plaintext, the associated data, the ciphertext under KEY/VERSION/NONCE): the strings
# every stored ciphertext of that kind was made with, and its bytes, computed once and pinned.
VECTORS = [
    (Secret.ACCOUNT_PASSWORD, ACCOUNT, b"correct horse",
     b"safehold:accounts:password_enc:" + ACCOUNT.encode(),
     "01000000036465666768696a6b6c6d6e6f2b74ac141c8a22be560d2d9bbf5eb85808276dd756b24c3b5ab89b846c"),
    (Secret.ACCOUNT_NOTES, ACCOUNT, b"rack 4, slot 2",
     b"safehold:accounts:notes_enc:" + ACCOUNT.encode(),
     "01000000036465666768696a6b6c6d6e6f3a7abd0d59dd7abe4d0e309cfa579b680a032061f0abbc63d1aa85bed9d4"),
    (Secret.HISTORY_PASSWORD, HISTORY, b"old horse",
     b"safehold:password_history:password_enc:" + HISTORY.encode(),
     "01000000036465666768696a6b6c6d6e6f2777ba46118624ed5b413ac1f4b8cb30da234a0d29574172f2"),
    (Secret.TOTP_SECRET, USER, b"JBSWY3DPEHPK3PXP",
     b"safehold:users:totp_secret_enc:" + USER.encode(),
     "01000000036465666768696a6b6c6d6e6f02598d3120da12ce7b2a0fa3e93532adb8d4b028cf6e58a920e7c58f2fed4bfa"),
    (Secret.CLUSTER_SETTING, "alerts", b'{"email": "smtp pass"}',
     b"safehold:cluster_settings:secrets_enc:alerts",
     "01000000036465666768696a6b6c6d6e6f3339bb0b18803abc04427d9bb7111add32a37579a911220f2843548de016711a40"
     "772796e3b4"),
]
IDS = [v[0].name for v in VECTORS]


def fixed_barrier() -> Barrier:
    return Barrier(Keyring({VERSION: KEY}, VERSION, rand=lambda n: NONCE[:n]))


@pytest.mark.parametrize(("what", "row_id", "plaintext", "aad", "pinned"), VECTORS, ids=IDS)
def test_associated_data_of_each_kind_is_pinned(what: Secret, row_id: str, plaintext: bytes, aad: bytes,
                                                pinned: str) -> None:
    assert what.aad(row_id) == aad


@pytest.mark.parametrize(("what", "row_id", "plaintext", "aad", "pinned"), VECTORS, ids=IDS)
def test_barrier_seals_the_pinned_bytes_and_opens_them(what: Secret, row_id: str, plaintext: bytes, aad: bytes,
                                                       pinned: str) -> None:
    barrier = fixed_barrier()
    blob = barrier.seal(what, row_id, plaintext)
    assert blob.hex() == pinned
    # the same bytes built without the barrier or the keyring: header | nonce | AES-GCM(header + aad)
    header = bytes([1]) + VERSION.to_bytes(4, "big")
    assert blob == header + NONCE + AESGCM(KEY).encrypt(NONCE, plaintext, header + aad)
    assert barrier.open(what, row_id, bytes.fromhex(pinned)) == plaintext


@pytest.mark.parametrize(("what", "row_id", "plaintext", "aad", "pinned"), VECTORS, ids=IDS)
def test_a_ciphertext_opens_only_as_its_kind_and_row(what: Secret, row_id: str, plaintext: bytes, aad: bytes,
                                                     pinned: str) -> None:
    barrier = fixed_barrier()
    blob = bytes.fromhex(pinned)
    for other in Secret:
        if other is not what:
            with pytest.raises(DecryptionError):
                barrier.open(other, row_id, blob)
    with pytest.raises(DecryptionError):
        barrier.open(what, row_id + "0", blob)


def test_strings_round_trip_as_utf8() -> None:
    barrier = Barrier(Keyring({1: KEY}, 1))
    blob = barrier.seal_str(Secret.ACCOUNT_PASSWORD, ACCOUNT, "pässwörd ✓")
    assert barrier.open_str(Secret.ACCOUNT_PASSWORD, ACCOUNT, blob) == "pässwörd ✓"
    assert barrier.open(Secret.ACCOUNT_PASSWORD, ACCOUNT, blob) == "pässwörd ✓".encode()


def test_every_sealed_column_of_the_schema_has_its_kind() -> None:
    """The kinds name the real tables and columns: the secrets re-encrypted by a key rotation and the
    cluster settings' secrets."""
    stored = {(t.name, c.name) for t, c in vault_store.SECRET_COLUMNS}
    stored.add((settings_store.TABLE, settings_store.SECRETS_COLUMN))
    assert {(k.table, k.column) for k in Secret} == stored
    for table, column in stored:
        assert Secret.stored_in(table, column).value == (table, column)
    with pytest.raises(ValueError):
        Secret.stored_in("accounts", "username")


def test_repr_shows_no_key() -> None:
    text = repr(fixed_barrier())
    assert KEY.hex() not in text and "versions=[3]" in text
