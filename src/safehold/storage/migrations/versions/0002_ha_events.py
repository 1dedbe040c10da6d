"""ha_events: the log of HA transitions

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ha_events",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("subject", sa.String(length=200), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("reported_by", sa.UUID(as_uuid=False), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ha_events")),
    )
    op.create_index("ix_ha_events_at", "ha_events", ["at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_ha_events_at", table_name="ha_events")
    op.drop_table("ha_events")
