"""cluster.ca_cert: the cluster CA's certificate (public), so that a server joining an engine-managed database
with the key file can issue itself a certificate that its peers trust

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("cluster", sa.Column("ca_cert", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("cluster", "ca_cert")
