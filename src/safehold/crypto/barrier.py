"""The barrier every secret at rest passes through: callers say what they seal and for which row.

A caller names the kind of secret (:class:`Secret`: an account's password, a retired password, a TOTP
secret ...) and the id of the row that holds it; the barrier builds the associated data from them::

    safehold:<table>:<column>:<row id>

so no caller can bind a ciphertext to the wrong field, and a ciphertext copied into another row, column
or table does not open.  The sealing itself (format, key version, nonce) is the keyring's, below it
(:mod:`safehold.crypto.envelope`).  The table and column of each kind are part of every ciphertext made
for it: they never change.
"""

from __future__ import annotations

from enum import Enum

from safehold.crypto.envelope import Keyring, aad_for


class Secret(Enum):
    """What is sealed: the table and the column it is stored in."""

    ACCOUNT_PASSWORD = ("accounts", "password_enc")
    ACCOUNT_NOTES = ("accounts", "notes_enc")
    HISTORY_PASSWORD = ("password_history", "password_enc")  # a retired password of an account
    TOTP_SECRET = ("users", "totp_secret_enc")
    CLUSTER_SETTING = ("cluster_settings", "secrets_enc")  # a setting's secrets; the row id is its key

    @property
    def table(self) -> str:
        return self.value[0]

    @property
    def column(self) -> str:
        return self.value[1]

    def aad(self, row_id: str) -> bytes:
        """The associated data that binds a ciphertext of this kind to the row ``row_id``."""
        return aad_for(self.table, self.column, row_id)

    @classmethod
    def stored_in(cls, table: str, column: str) -> Secret:
        """The kind of secret kept in ``table.column`` (ValueError for a column that holds none)."""
        return cls((table, column))


class Barrier:
    """Seals and opens secrets with a keyring, building their associated data itself."""

    __slots__ = ("keyring",)

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring

    def __repr__(self) -> str:
        return f"Barrier({self.keyring!r})"

    def seal(self, what: Secret, row_id: str, plaintext: bytes) -> bytes:
        return self.keyring.seal(plaintext, what.aad(row_id))

    def open(self, what: Secret, row_id: str, blob: bytes) -> bytes:
        """The plaintext; :class:`~safehold.crypto.envelope.DecryptionError` if it does not open here."""
        return self.keyring.open(blob, what.aad(row_id))

    def seal_str(self, what: Secret, row_id: str, text: str) -> bytes:
        return self.seal(what, row_id, text.encode("utf-8"))

    def open_str(self, what: Secret, row_id: str, blob: bytes) -> str:
        return self.open(what, row_id, blob).decode("utf-8")
