"""Plain domain types shared by every layer.  Values of these enums never change:
they are stored in the database and appear in the API."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

#: What a username may be: 1-64 letters, digits and . _ @ - (starting with a letter or digit).
USERNAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")


class ServerRole(StrEnum):
    STANDALONE = "standalone"
    PRIMARY = "primary"
    SECONDARY = "secondary"
    READONLY = "readonly"


class ServerMode(StrEnum):
    """What a server does with changes now (``/api/v1/ha/local``'s ``mode``; the values never change)."""

    READ_WRITE = "read-write"
    READ_ONLY_EMERGENCY = "read-only-emergency"  # a read-only server serving users itself
    FENCED = "fenced"  # superseded by a newer primary


class UserRole(StrEnum):
    ADMINISTRATOR = "administrator"
    PASSWORD_ADMINISTRATOR = "password_administrator"
    AUDITOR = "auditor"
    USER = "user"


class Permission(StrEnum):
    VIEW = "view"
    MODIFY = "modify"


class AuditResult(StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"
    DENIED = "denied"


class AuditAction(StrEnum):
    LOGIN = "login"
    LOGIN_FAILED = "login_failed"
    LOGOUT = "logout"
    PASSWORD_RETRIEVED = "password_retrieved"
    PASSWORD_CHANGED = "password_changed"
    RESOURCE_CREATED = "resource_created"
    RESOURCE_UPDATED = "resource_updated"
    RESOURCE_DELETED = "resource_deleted"
    ACCOUNT_CREATED = "account_created"
    ACCOUNT_UPDATED = "account_updated"
    ACCOUNT_DELETED = "account_deleted"
    SHARED = "shared"
    UNSHARED = "unshared"
    EXPORTED = "exported"
    IMPORTED = "imported"
    USER_CREATED = "user_created"
    USER_UPDATED = "user_updated"
    USER_DELETED = "user_deleted"
    USER_LOCKED = "user_locked"
    USER_UNLOCKED = "user_unlocked"
    TOTP_ENABLED = "totp_enabled"
    TOTP_DISABLED = "totp_disabled"
    TOKEN_CREATED = "token_created"
    TOKEN_REVOKED = "token_revoked"
    OWN_PASSWORD_CHANGED = "own_password_changed"
    KEY_ROTATED = "key_rotated"
    BACKUP_CREATED = "backup_created"
    BACKUP_RESTORED = "backup_restored"
    SERVER_STARTED = "server_started"
    SERVER_STOPPED = "server_stopped"
    SERVER_RENAMED = "server_renamed"
    ALERT_TESTED = "alert_tested"
    SETTINGS_CHANGED = "settings_changed"


@dataclass(frozen=True)
class Principal:
    """The authenticated caller of a request."""

    user_id: str
    username: str
    role: UserRole
    token_id: str
    kind: str  # 'session' | 'api' | 'cli'
    source_ip: str = ""
    csrf_token: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == UserRole.ADMINISTRATOR
