"""cluster_settings: the alert channels and the failover policy, the same for every server

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cluster_settings",
        sa.Column("key", sa.String(length=32), nullable=False),
        sa.Column("value", postgresql.JSONB(), nullable=False),
        sa.Column("secrets_enc", sa.LargeBinary(), nullable=True),
        sa.Column("version", sa.Integer(), server_default=sa.text("1"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_by", sa.String(length=200), server_default="", nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_cluster_settings")),
    )


def downgrade() -> None:
    op.drop_table("cluster_settings")
