"""HA part 2: event arguments, the acting primary, alert delivery cursor

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("ha_events", sa.Column("args", postgresql.JSONB(), server_default=sa.text("'[]'::jsonb"),
                                         nullable=False))
    op.add_column("cluster", sa.Column("acting_primary", sa.UUID(as_uuid=False), nullable=True))
    op.add_column("cluster", sa.Column("promoted_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("cluster", "promoted_at")
    op.drop_column("cluster", "acting_primary")
    op.drop_column("ha_events", "args")
