"""audit_sinks, audit_sink_cursors: audit streaming's delivery state and its cursor per sink and server chain

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_sinks",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("attempted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("delivered", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("failures", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("failing_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_audit_sinks")),
    )
    op.create_table(
        "audit_sink_cursors",
        sa.Column("sink", sa.String(length=64), nullable=False),
        sa.Column("server_id", sa.UUID(as_uuid=False), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(["sink"], ["audit_sinks.name"], name=op.f("fk_audit_sink_cursors_sink_audit_sinks"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("sink", "server_id", name=op.f("pk_audit_sink_cursors")),
    )


def downgrade() -> None:
    op.drop_table("audit_sink_cursors")
    op.drop_table("audit_sinks")
