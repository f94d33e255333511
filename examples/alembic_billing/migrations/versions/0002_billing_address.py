"""Billing addresses move to a table of their own, keeping their ids.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op
from billing_db import id_column

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    billing = op.create_table(
        "profile_billingaddress", id_column(), sa.Column("street", sa.Text, nullable=False)
    )
    rows = op.get_bind().execute(
        sa.text(
            "SELECT a.id, a.street FROM profile_address a "
            "WHERE a.id IN (SELECT billing_address_id FROM profile_profile) ORDER BY a.id"
        )
    )
    # the ids are kept, so that no profile needs updating
    op.bulk_insert(billing, [{"id": r.id, "street": r.street} for r in rows])
    op.drop_constraint("profile_profile_billing_address_id_fkey", "profile_profile")
    op.create_foreign_key(
        None, "profile_profile", "profile_billingaddress", ["billing_address_id"], ["id"]
    )


def downgrade() -> None:
    op.drop_constraint("profile_profile_billing_address_id_fkey", "profile_profile")
    op.create_foreign_key(
        None, "profile_profile", "profile_address", ["billing_address_id"], ["id"]
    )
    op.drop_table("profile_billingaddress")
