"""The error types every part of Safehold raises.

Each carries a message meant for the operator or the API client.  A message
never contains a secret: callers pass names, paths and ids, never values.
"""

from __future__ import annotations


class SafeholdError(Exception):
    """Base class: a failure with a clear, secret-free message and an optional hint."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\nHint: {self.hint}"


class ConfigError(SafeholdError):
    """The configuration file or an environment override is invalid."""


class KeyFileError(SafeholdError):
    """The master key file is missing, unsafe, malformed or does not match."""


class DatabaseError(SafeholdError):
    """The database cannot be reached or is not in the expected state."""


class ServiceError(SafeholdError):
    """A request that cannot be carried out; ``code`` is stable and shown to API clients."""

    code = "error"


class NotFound(ServiceError):
    code = "not_found"


class PermissionDenied(ServiceError):
    code = "forbidden"


class Conflict(ServiceError):
    code = "conflict"


class PreconditionFailed(ServiceError):
    """An ``If-Match`` precondition failed: the row changed since the client read it."""

    code = "precondition_failed"


class InvalidInput(ServiceError):
    code = "invalid_input"

    def __init__(self, message: str, *, field: str | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.field = field


class AuthenticationFailed(ServiceError):
    code = "authentication_failed"


class TotpRequired(ServiceError):
    code = "totp_required"


class AccountLocked(ServiceError):
    code = "account_locked"


class ReauthenticationRequired(ServiceError):
    code = "reauthentication_required"


class AuditUnavailable(ServiceError):
    """The audit record could not be written, so the action did not happen (fail closed)."""

    code = "audit_unavailable"


class Unavailable(ServiceError):
    code = "unavailable"
