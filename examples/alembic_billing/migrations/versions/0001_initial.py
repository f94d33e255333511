"""Addresses and profiles; sixteen addresses, five profiles billed to 7, 9, 12, 14, 16.

Revision ID: 0001
"""

import sqlalchemy as sa
from alembic import op
from billing_db import id_column

revision = "0001"
down_revision = None


def upgrade() -> None:
    address = op.create_table(
        "profile_address", id_column(), sa.Column("street", sa.Text, nullable=False)
    )
    op.create_table(
        "profile_profile",
        id_column(),
        sa.Column("shipping_address_id", sa.Integer, sa.ForeignKey("profile_address.id")),
        sa.Column("billing_address_id", sa.Integer, sa.ForeignKey("profile_address.id")),
    )
    op.bulk_insert(address, [{"street": f"street {i}"} for i in range(1, 17)])
    op.execute(
        "INSERT INTO profile_profile (shipping_address_id, billing_address_id) "
        "VALUES (1, 7), (2, 9), (3, 12), (4, 14), (5, 16)"
    )


def downgrade() -> None:
    op.drop_table("profile_profile")
    op.drop_table("profile_address")
