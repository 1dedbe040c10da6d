"""The database schema (SQLAlchemy Core).  Migrations under ``migrations/`` create it.

Secrets are stored only as envelope ciphertext (``*_enc`` columns, see
:mod:`safehold.crypto.envelope`); tokens only as SHA-256 digests; user
passwords only as argon2id hashes.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


def _ts(name: str, *, nullable: bool = False, default: bool = True) -> Column:
    return Column(
        name, DateTime(timezone=True), nullable=nullable, server_default=func.now() if default else None
    )


# One row: the identity of this Safehold cluster and the check value of its master key.
cluster = Table(
    "cluster",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("cluster_id", UUID(as_uuid=False), nullable=False),
    Column("key_check", LargeBinary, nullable=False),
    Column("generation", BigInteger, nullable=False, server_default=text("1")),
    _ts("created_at"),
    # set by promotion: the server that became the acting primary at this generation
    Column("acting_primary", UUID(as_uuid=False), nullable=True),
    _ts("promoted_at", nullable=True, default=False),
    # the cluster CA's certificate (PEM; public): a server joining with the key file issues itself a certificate
    Column("ca_cert", Text, nullable=True),
    CheckConstraint("id = 1", name="single_row"),
)

# Wrapped data keys (purpose 'data' for secrets, 'audit' for the audit chain MAC).
keyring = Table(
    "keyring",
    metadata,
    Column("purpose", String(16), nullable=False),
    Column("version", Integer, nullable=False),
    Column("wrapped", LargeBinary, nullable=False),
    Column("active", Boolean, nullable=False, server_default=text("false")),
    _ts("created_at"),
    PrimaryKeyConstraint("purpose", "version"),
)

users = Table(
    "users",
    metadata,
    Column("id", UUID(as_uuid=False), primary_key=True),
    Column("username", String(64), nullable=False),
    Column("full_name", String(200), nullable=False, server_default=""),
    Column("email", String(254), nullable=False, server_default=""),
    Column("role", String(32), nullable=False),
    Column("password_hash", Text, nullable=False),
    Column("totp_secret_enc", LargeBinary, nullable=True),
    Column("totp_enabled", Boolean, nullable=False, server_default=text("false")),
    Column("totp_last_step", BigInteger, nullable=True),
    Column("disabled", Boolean, nullable=False, server_default=text("false")),
    Column("failed_logins", Integer, nullable=False, server_default=text("0")),
    Column("locked_until", DateTime(timezone=True), nullable=True),
    _ts("created_at"),
    _ts("updated_at"),
    _ts("password_changed_at"),
    Index("uq_users_username_lower", func.lower(text("username")), unique=True),
)

# Login sessions and personal API tokens; only the SHA-256 of the token is kept.
auth_tokens = Table(
    "auth_tokens",
    metadata,
    Column("id", UUID(as_uuid=False), primary_key=True),
    Column("token_hash", LargeBinary, nullable=False, unique=True),
    Column("kind", String(16), nullable=False),  # 'session' | 'api'
    Column("user_id", UUID(as_uuid=False), ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(100), nullable=False, server_default=""),
    Column("csrf_token", String(64), nullable=True),
    Column("server_id", UUID(as_uuid=False), nullable=False),
    Column("source_ip", String(64), nullable=False, server_default=""),
    _ts("created_at"),
    _ts("last_used_at"),
    Column("expires_at", DateTime(timezone=True), nullable=True),
    Column("reauth_at", DateTime(timezone=True), nullable=True),
    Index("ix_auth_tokens_user", "user_id"),
)

resources = Table(
    "resources",
    metadata,
    Column("id", UUID(as_uuid=False), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("type", String(64), nullable=False, server_default="server"),
    Column("address", String(500), nullable=False, server_default=""),
    Column("description", Text, nullable=False, server_default=""),
    Column("tags", ARRAY(String(64)), nullable=False, server_default=text("'{}'")),
    Column("owner_id", UUID(as_uuid=False), ForeignKey("users.id", ondelete="SET NULL"), nullable=True),
    _ts("created_at"),
    _ts("updated_at"),
    Index("uq_resources_name_lower", func.lower(text("name")), unique=True),
)

accounts = Table(
    "accounts",
    metadata,
    Column("id", UUID(as_uuid=False), primary_key=True),
    Column(
        "resource_id", UUID(as_uuid=False), ForeignKey("resources.id", ondelete="CASCADE"), nullable=False
    ),
    Column("username", String(200), nullable=False),
    Column("password_enc", LargeBinary, nullable=False),
    Column("notes_enc", LargeBinary, nullable=True),
    _ts("created_at"),
    _ts("updated_at"),
    _ts("password_changed_at"),
    UniqueConstraint("resource_id", "username", name="uq_accounts_resource_username"),
)

password_history = Table(
    "password_history",
    metadata,
    Column("id", UUID(as_uuid=False), primary_key=True),
    Column(
        "account_id", UUID(as_uuid=False), ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False
    ),
    Column("password_enc", LargeBinary, nullable=False),
    Column("changed_by", String(64), nullable=False),
    _ts("retired_at"),
    Index("ix_password_history_account", "account_id"),
)

shares = Table(
    "shares",
    metadata,
    Column(
        "resource_id", UUID(as_uuid=False), ForeignKey("resources.id", ondelete="CASCADE"), nullable=False
    ),
    Column("user_id", UUID(as_uuid=False), ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("permission", String(16), nullable=False),
    _ts("created_at"),
    PrimaryKeyConstraint("resource_id", "user_id"),
)

# Append-only; each server's records form a MAC chain (seq, prev_mac -> mac).
audit_log = Table(
    "audit_log",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("server_id", UUID(as_uuid=False), nullable=False),
    Column("server_role", String(16), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("actor", String(64), nullable=False),
    Column("source_ip", String(64), nullable=False),
    Column("action", String(48), nullable=False),
    Column("target_type", String(32), nullable=False),
    Column("target_id", String(64), nullable=False),
    Column("target_name", String(500), nullable=False),
    Column("result", String(16), nullable=False),
    Column("detail", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("prev_mac", LargeBinary, nullable=False),
    Column("mac", LargeBinary, nullable=False),
    UniqueConstraint("server_id", "seq", name="uq_audit_log_server_seq"),
    Index("ix_audit_log_at", "at"),
    Index("ix_audit_log_action", "action"),
)

audit_heads = Table(
    "audit_heads",
    metadata,
    Column("server_id", UUID(as_uuid=False), primary_key=True),
    Column("seq", BigInteger, nullable=False),
    Column("mac", LargeBinary, nullable=False),
)

# The server registry (HA issues fill in heartbeats and status).
servers = Table(
    "servers",
    metadata,
    Column("id", UUID(as_uuid=False), primary_key=True),
    Column("name", String(100), nullable=False),
    Column("role", String(16), nullable=False),
    Column("hostname", String(255), nullable=False, server_default=""),
    Column("dns_name", String(255), nullable=False, server_default=""),
    Column("url", String(500), nullable=False, server_default=""),
    Column("port", Integer, nullable=False, server_default=text("0")),
    Column("version", String(32), nullable=False, server_default=""),
    Column("cert_fingerprint", String(128), nullable=False, server_default=""),
    _ts("registered_at"),
    Column("last_heartbeat", DateTime(timezone=True), nullable=True),
)

settings = Table(
    "settings",
    metadata,
    Column("key", String(100), primary_key=True),
    Column("value", JSONB, nullable=False),
    _ts("updated_at"),
)

# The cluster-wide settings every server follows (replicated like all data): "alerts" (the alert
# channels; their secrets sealed in secrets_enc, the key as associated data) and "failover" (the
# automatic failover policy).  ``version`` counts the changes (compare-and-set).
cluster_settings = Table(
    "cluster_settings",
    metadata,
    Column("key", String(32), primary_key=True),
    Column("value", JSONB, nullable=False),
    Column("secrets_enc", LargeBinary, nullable=True),
    Column("version", Integer, nullable=False, server_default=text("1")),
    _ts("updated_at"),
    Column("updated_by", String(200), nullable=False, server_default=""),
)

# Every HA transition (HA/replication Alive/Failed, server active/inactive, StandbyOffline, ...), once.
ha_events = Table(
    "ha_events",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    _ts("at"),
    Column("kind", String(32), nullable=False),
    Column("subject", String(200), nullable=False),
    Column("message", Text, nullable=False),
    Column("reported_by", UUID(as_uuid=False), nullable=False),
    Column("args", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    Index("ix_ha_events_at", "at"),
)

# Audit streaming (safehold.audit.delivery): one row per configured audit sink — its delivery state, which
# every server's fail-closed check reads — and its cursor per server chain: the last seq delivered (records
# of one chain commit in seq order, so "the last seq delivered" never skips one, unlike a global id).
audit_sinks = Table(
    "audit_sinks",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("kind", String(16), nullable=False),
    _ts("created_at"),
    Column("attempted_at", DateTime(timezone=True), nullable=True),  # the last delivery tried
    Column("delivered_at", DateTime(timezone=True), nullable=True),  # the last one that succeeded
    Column("delivered", BigInteger, nullable=False, server_default=text("0")),  # records, in all
    Column("failures", Integer, nullable=False, server_default=text("0")),  # failed deliveries in a row
    Column("failing_since", DateTime(timezone=True), nullable=True),
    Column("last_error", Text, nullable=True),  # why the last delivery failed (None: it succeeded)
)

audit_sink_cursors = Table(
    "audit_sink_cursors",
    metadata,
    Column("sink", String(64), ForeignKey("audit_sinks.name", ondelete="CASCADE"), nullable=False),
    Column("server_id", UUID(as_uuid=False), nullable=False),
    Column("seq", BigInteger, nullable=False),
    _ts("updated_at"),
    PrimaryKeyConstraint("sink", "server_id"),
)
